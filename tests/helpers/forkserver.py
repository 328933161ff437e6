"""Runs the binaries' entry points in fresh processes without paying TensorFlow's start-up each time.

A binary started as `python -c "from keras_ssl.cli.train import run; run()"`
spends most of its seconds importing TensorFlow, Keras, TFDS and keras_ssl
(about 9 s of CPU each here). The tests that only check how a binary answers
(refusals, exit codes, the lines it prints) start their binaries through a
`multiprocessing` fork server instead: one process imports those libraries
once, before any TensorFlow op runs, and every binary is a fork of it. Each
fork is still a process of its own, with its own `sys.argv`, environment,
stdout/stderr (files, read back like `subprocess.run`'s), exit code and
absl flags; it imports its binary's module itself, as the real command does
(the modules define their flags at import, so they cannot be preloaded
together). An uncaught exception prints a traceback and exits 1, as Python
does.

Runs that train for real, get signals or join a cluster start the real
command (`runs.py`).
"""

import multiprocessing
import os
import subprocess
import sys
import tempfile

# What every binary imports first; not the binaries' own modules (see above), and not
# keras_ssl.training: importing it registers keras_ssl.train with gin, which a binary
# that parses a method's config must do itself (preloading it hid one that did not).
PRELOAD = [
    "tensorflow", "keras", "tensorflow_datasets", "orbit", "keras_ssl_eval", "keras_ssl",
    "keras_ssl.export", "keras_ssl_methods",
]

# Each binary's console-script target (setup.cfg files' entry points).
ENTRY_POINTS = {
    "keras-ssl-train": "keras_ssl.cli.train:run",
    "keras-ssl-export": "keras_ssl.cli.export:run",
    "keras-ssl-eval": "keras_ssl_eval.cli.eval:run",
    "keras-ssl-prepare-data": "keras_ssl.cli.prepare_data:run",
    "keras-ssl-colorize": "keras_ssl_methods.cli.colorize:run",
    "keras-ssl-reconstruct": "keras_ssl_methods.cli.reconstruct:run",
    "keras-ssl-show-views": "keras_ssl.cli.show_views:run",
}

_CONTEXT = None


def _context():
    global _CONTEXT  # pylint: disable=global-statement
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        # The server starts with this process's environment: quiet, CPU-only TensorFlow.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def _main(target, argv, env, cwd, stdout_path, stderr_path):
    """The forked process: the binary's `python -c` command, with output to two files."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        file = os.open(path, os.O_WRONLY)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = list(argv)
    module, function = target.split(":")
    # SystemExit and uncaught exceptions end the process as they end
    # `python -c`: the code, or 1 with the traceback (multiprocessing's bootstrap).
    getattr(__import__(module, fromlist=[function]), function)()


def run_binary(binary, *args, env=None, cwd=None, timeout=600):
    """Runs `binary ARGS` (a forked process); returns a `subprocess.CompletedProcess` (text)."""
    context = _context()
    with tempfile.TemporaryDirectory(prefix="binary-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for path in (out, err):
            open(path, "w").close()
        process = context.Process(target=_main, args=(
            ENTRY_POINTS[binary], [binary, *args], dict(os.environ if env is None else env),
            cwd or os.getcwd(), out, err,
        ))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(binary, timeout)
        with open(out) as stdout, open(err) as stderr:
            return subprocess.CompletedProcess(
                [binary, *args], process.exitcode, stdout.read(), stderr.read())
