"""How keras-ssl's binaries report a user's mistake: one line and a non-zero exit.

A missing run directory, step or file, an unknown plugin or a bad gin binding
is the user's to fix, and a traceback only hides the sentence that says how.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import app, flags
from keras_ssl_eval import quiet

from keras_ssl.config import ConfigError
from keras_ssl.registry import PluginError

# Raised by keras-ssl for inputs the user chose (a path, a step, a plugin name, a
# binding); each message says what to change.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ConfigError, PluginError)


# gin appends where an error was raised to its message; the binary's line
# says what to change, and the configurable's name adds nothing to that.
_GIN_SUFFIX = "\n  In call to configurable"


def one_line(error: BaseException) -> str:
    """The error's message on one line (a KeyError's message without its quotes)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    text = str(text).split(_GIN_SUFFIX)[0]
    return " ".join(text.split()) or type(error).__name__


def run_binary(
    program: str,
    main: Callable[[Sequence[str]], None],
    extra_errors: tuple[type[BaseException], ...] = (),
) -> None:
    """`absl.app.run(main)`, turning user errors into `program: message` and exit 1.

    The binary starts quietly (`keras_ssl_eval.quiet`): library logs below
    WARNING are hidden unless `--verbosity` is given.

    Args:
      program: The binary's name, printed before the message.
      main: The absl main function.
      extra_errors: Exception types that are user errors for this binary too
        (e.g. `ValueError` where `main` raises it for bad flag values).
    """
    errors = USER_ERRORS + tuple(extra_errors)

    def reporting_main(argv):
        # Library INFO logs (SavedModel writer, TFDS, Orbit) drown the binary's own
        # lines; --verbosity=0 brings them back.
        quiet.quiet_library_logs(flags.FLAGS["verbosity"].present)
        try:
            return main(argv)
        except errors as e:
            sys.exit(f"{program}: {one_line(e)}")

    app.run(reporting_main)
