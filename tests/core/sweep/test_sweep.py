"""keras-ssl-sweep: the grid file, its checks, the runner (resume, failures, parallel), outputs."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO

from tests.helpers.tiny_run import tiny_shapes_name


def write_grid(tmp_path, text, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load(tmp_path, text):
    from keras_ssl.sweep.grid import load_grid

    return load_grid(write_grid(tmp_path, text))


GOYAL_LIKE = """\
    bindings:
      keras_ssl.train.train_steps: 4
    axes:
      method:
        values:
          rotation: {keras_ssl.build_method.method: rotation}
          jigsaw: {keras_ssl.build_method.method: jigsaw}
      train_examples:
        binding: keras_ssl.train.split
        format: 'train[:{}]'
        values: [24, 48, 96]
      permutations:
        binding: jigsaw.num_permutations
        values: [10, 100]
        when: {method: jigsaw}
    """


def test_cells_nested_subsets_and_conditional_axes(tmp_path):
    grid = load(tmp_path, GOYAL_LIKE)
    cells = grid.cells()
    # rotation x 3 sizes, jigsaw x 3 sizes x 2 permutation counts.
    assert len(cells) == 3 + 6
    first = cells[0]
    assert first.name == "method-rotation__train_examples-24"
    assert first.labels == {"method": "rotation", "train_examples": 24}
    assert first.bindings == ("keras_ssl.train.train_steps = 4",
                              "keras_ssl.build_method.method = 'rotation'",
                              "keras_ssl.train.split = 'train[:24]'")
    jigsaw = [c for c in cells if c.labels["method"] == "jigsaw"]
    assert {c.labels["permutations"] for c in jigsaw} == {10, 100}
    assert "jigsaw.num_permutations = 100" in jigsaw[-1].bindings
    assert all("permutations" not in c.labels for c in cells if c.labels["method"] == "rotation")
    # Nested subsets: each size is a prefix split of the same stored order.
    splits = [b for c in cells[:3] for b in c.bindings if "split" in b]
    assert splits == [f"keras_ssl.train.split = 'train[:{n}]'" for n in (24, 48, 96)]


def test_gin_literals():
    from keras_ssl.sweep.grid import gin_literal

    assert gin_literal("rotation") == "'rotation'"
    assert gin_literal("1e30") == "1e+30"  # YAML 1.1 reads 1e30 as a string.
    assert gin_literal(True) == "True"
    assert gin_literal([1, 2]) == "[1, 2]"
    assert gin_literal("@keras_ssl.some_function") == "@keras_ssl.some_function"


def test_plot_x_order_keeps_each_series_order():
    from keras_ssl.sweep.plots import merged_order

    resnet = ["after_root", "block1", "block2", "block3", "block4", "pre_logits"]
    vgg = ["block1", "block2", "block3", "block4", "block5", "fc6", "pre_logits"]
    assert merged_order([resnet, vgg]) == resnet[:5] + ["block5", "fc6", "pre_logits"]


@pytest.mark.parametrize("text, expected", [
    ("axes:\n  widht: [1, 2]\n", ["line 2", "'widht'", "gin binding"]),
    ("axis:\n  a.b: [1]\n", ["line 1", "'axis'", "did you mean 'axes'"]),
    ("axes:\n  m:\n    binding: a.b\n    valeus: [1]\n", ["line 4", "'m'", "'values'"]),
    ("axes:\n  m:\n    binding: a.b\n    values: [1]\n    when: {method: jigsaw}\n",
     ["line 5", "unknown axis 'method'"]),
    ("axes:\n  resnet_v2.widening_factor: [1, 2]\nplots:\n  - x: width\n",
     ["line 4", "unknown axis 'width'"]),
    ("axes:\n  k:\n    binding: a.b\n    format: 'train[:N]'\n    values: [1]\n",
     ["line 2", "`format`"]),
    ("axes:\n  a.b: [1]\n  a.b: [2]\n", ["line 3", "repeats the one on line 2"]),
    ("axes:\n  a.b: [1]\ntables:\n  - {rows: [a.b], columns: layr}\n",
     ["line 4", "table 1", "unknown axis 'layr'", "did you mean 'layer'"]),
    ("axes:\n  a.b: [1]\ntables:\n  - {rows: [a.b]}\n", ["line 4", "`columns:`"]),
    ("axes:\n  a.b: [1]\ntables:\n  - {rows: [a.b], columns: [layer, model]}\n",
     ["line 4", "one column"]),
])
def test_form_errors_name_the_line_and_axis(tmp_path, text, expected):
    from keras_ssl.sweep.grid import GridError, load_grid

    with pytest.raises(GridError) as error:
        load_grid(write_grid(tmp_path, text))
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_unknown_binding_refused_before_any_cell_runs(tmp_path):
    from keras_ssl.sweep.checks import plan_cells
    from keras_ssl.sweep.grid import GridError

    base = "bindings:\n  keras_ssl.build_method.method: rotation\n"
    with pytest.raises(GridError) as error:
        plan_cells(load(tmp_path, base + "axes:\n  resnet_v2.widening_factr: [1, 2]\n"))
    message = str(error.value)
    assert "line 4" in message and "'resnet_v2.widening_factr'" in message
    assert "widening_factor" in message  # the closest valid name
    with pytest.raises(GridError, match=r"line 3, binding 'resnet_v3.depth'"):
        plan_cells(load(tmp_path, base + "  resnet_v3.depth: 10\n"))
    with pytest.raises(GridError, match=r"line 5: unknown evaluation setting 'max_train'"):
        plan_cells(load(tmp_path, base + "evaluation:\n  protocols: [linear]\n"
                                         "  max_train: 10\n"))


def test_disk_budget_refused_up_front(tmp_path):
    from keras_ssl.sweep.checks import check_disk, plan_cells
    from keras_ssl.sweep.grid import GridError

    grid = load(tmp_path, """\
        bindings:
          keras_ssl.build_method.method: rotation
          resnet_v2.depth: 10
          resnet_v2.small_image_stem: true
          keras_ssl.train.max_checkpoints: 1
        axes:
          resnet_v2.widening_factor: [1, 4]
        """)
    plans = plan_cells(grid)
    # Parameters grow with k^2; the estimate follows.
    assert plans[1].parameters == 16 * plans[0].parameters
    assert plans[1].disk_bytes > plans[0].disk_bytes
    needed = check_disk(plans, str(tmp_path / "out"))
    with pytest.raises(GridError, match=r"over --max_disk_gb=0\.001"):
        check_disk(plans, str(tmp_path / "out"), max_disk_gb=min(1e-3, needed / 2e9))


# A stand-in for `python -m keras_ssl.sweep.cell`: fails cells whose `lr` label is
# `bad` the way a NaN run does, writes fake results otherwise, and notes each start.
STUB_WORKER = """\
import json, os, signal, sys, time
# As training does: SIGTERM -> checkpoint and exit 143.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
cell_dir = sys.argv[1]
spec = json.load(open(os.path.join(cell_dir, "cell.json")))
with open(os.path.join(os.path.dirname(os.path.dirname(cell_dir)), "starts.txt"), "a") as f:
    f.write(f"{spec['name']} {time.time()}\\n")
time.sleep(float(os.environ.get("STUB_SECONDS", "1")))
if spec["labels"]["lr"] == "bad":
    print("step 2/4 | loss nan", flush=True)
    sys.exit("keras-ssl-sweep cell: The training loss became nan between steps 0 and 2.")
k = spec["labels"]["width"]
def results(step, accuracy):
    return {"layers": {"block3": {"test_accuracy": accuracy / 2},
                       "pre_logits": {"test_accuracy": accuracy}},
            "knn": {"pre_logits": {"test_accuracy": accuracy - 0.1}}}
record = {"cell": spec["name"], "status": "ok", "models": [
    {"role": "step_0", "step": 0, "results": results(0, 0.2)},
    {"role": "final", "step": 4, "results": results(4, 0.3 + 0.1 * k)}]}
json.dump(record, open(os.path.join(cell_dir, "results.json"), "w"))
"""


def stub_plans(tmp_path):
    from keras_ssl.sweep.checks import CellPlan

    grid = load(tmp_path, """\
        axes:
          width: {binding: resnet_v2.widening_factor, values: [1, 2]}
          lr:
            values:
              good: {keras_ssl.learning_rate_schedule.base_learning_rate: 0.1}
              bad: {keras_ssl.learning_rate_schedule.base_learning_rate: 1e30}
        plots:
          - {name: width, x: width, where: {layer: pre_logits}}
        tables:
          - {name: per_layer, rows: [width], columns: layer, where: {protocol: linear},
             title: Linear probe per layer}
        """)
    plans = [CellPlan(cell=c, evaluation={"protocols": ["linear"]}, train_steps=4,
                      dataset="synthetic_shapes", data_dir=None, backbone="resnet_v2",
                      parameters=1, disk_bytes=1) for c in grid.cells()]
    return grid, plans


def test_runner_resume_failure_parallel_and_outputs(tmp_path):
    from keras_ssl.sweep import report
    from keras_ssl.sweep.runner import SweepRunner, read_record

    grid, plans = stub_plans(tmp_path)
    worker = tmp_path / "stub_worker.py"
    worker.write_text(STUB_WORKER)
    output = tmp_path / "out"
    lines = []
    runner = SweepRunner(plans, str(output), parallel=2, worker_command=[sys.executable,
                                                                          str(worker)],
                         print_fn=lines.append)
    assert len(runner.prepare(grid.path)) == 4
    counts = runner.run()
    assert counts == {"ok": 2, "failed": 2, "interrupted": 0, "skipped": 0}
    failed = read_record(str(output), "width-1__lr-bad")
    assert failed["status"] == "failed" and failed["exit_code"] == 1
    assert failed["reason"] == ("The training loss became nan between "
                                "steps 0 and 2.")
    assert any("ETA" in line and "4/4 done, 2 failed" in line for line in lines), lines
    # --parallel=2: two cells ran at the same time.
    starts = sorted(float(line.split()[1])
                    for line in (output / "starts.txt").read_text().splitlines())
    assert starts[1] - starts[0] < 0.9

    # A second run reruns nothing: finished and failed cells are kept.
    again = SweepRunner(plans, str(output), worker_command=[sys.executable, str(worker)],
                        print_fn=lines.append)
    assert again.prepare(grid.path) == []
    assert again.run()["skipped"] == 4
    assert len((output / "starts.txt").read_text().splitlines()) == 4
    # A cell without results.json (killed) runs again; --retry_failed reruns failures.
    os.remove(output / "cells" / "width-2__lr-good" / "results.json")
    retry = SweepRunner(plans, str(output), retry_failed=True,
                        worker_command=[sys.executable, str(worker)], print_fn=lines.append)
    assert [p.cell.name for p in retry.pending()] == ["width-1__lr-bad", "width-2__lr-good",
                                                       "width-2__lr-bad"]

    written = report.write_outputs(grid, plans, str(output))
    assert [os.path.basename(p) for p in written] == ["results.csv", "results.md", "width.png"]
    csv_lines = (output / "results.csv").read_text().splitlines()
    assert csv_lines[0] == ("cell,status,width,lr,model,step,layer,protocol,labels,metric,"
                            "value,test_count,ci95_low,ci95_high,bound,reason")
    # 2 models x (2 linear layers + 1 kNN) for the finished cell, one row per failed cell.
    assert sum(line.startswith("width-1__lr-good,ok,1,good") for line in csv_lines) == 6
    assert any(line.startswith("width-1__lr-bad,failed") and "training loss became nan" in line
               for line in csv_lines)
    markdown = (output / "results.md").read_text()
    assert "| ok | 1 | good | final | 4 | pre_logits | linear |  | test_accuracy | 40.0 |" in (
        markdown)
    # The pivot comes before the long table: one row per finished width, layers side
    # by side (`lr` is not in the key: only lr=good cells finished, so it does not vary).
    pivot = markdown[markdown.index("### Linear probe per layer"):markdown.index("### All rows")]
    assert "| width | block3 | pre_logits |" in pivot
    assert "| 1 | 20.0 | 40.0 |" in pivot
    assert "| 2 |" not in pivot  # its results.json was removed above


def test_pivot_table_keys_and_missing_values():
    from keras_ssl.sweep.pivot import markdown, pivot

    def row(method, layer, value, model="final"):
        return {"status": "ok", "method": method, "model": model, "layer": layer,
                "protocol": "linear", "metric": "test_accuracy", "value": value}

    rows = [row("rotation", "block4", 0.5), row("rotation", "pre_logits", 0.4),
            row("vgg", "block4", 0.3), row("vgg", "fc6", 0.35), row("vgg", "pre_logits", 0.2),
            row("rotation", "pre_logits", 0.1, model="step_0")]
    spec = {"name": "t", "rows": ["method"], "columns": "layer", "where": {}}
    keys, order, body = pivot(rows, spec, ["method"])
    # The step-0 row is left out; VGG's fc6 lands between the layers it sits between.
    assert keys == ["method"] and order == ["block4", "fc6", "pre_logits"]
    values = [[e[0], *(None if c is None else c["value"] for c in e[1:])] for e in body]
    assert values == [["rotation", 0.5, None, 0.4], ["vgg", 0.3, 0.35, 0.2]]
    text = markdown(rows, spec, ["method"])
    assert "| rotation | 50.0 |  | 40.0 |" in text
    # A utility clipped at the end of the scratch curve reads as the bound it is.
    clipped = [{**row("rotation", "pre_logits", 0.0), "protocol": "utility", "labels": 1000,
                "metric": "utility", "bound": "lower"}]
    assert "| rotation | >= 0.000 |" in markdown(
        clipped, {"name": "u", "rows": ["method"], "columns": "labels", "metric": "utility"},
        ["method"])
    assert "No finished cell" in markdown(rows, {**spec, "where": {"method": "none"}},
                                          ["method"])


def test_stopped_cells_are_not_failures_and_run_again(tmp_path, monkeypatch):
    import threading
    import time

    from keras_ssl.sweep.runner import SweepRunner

    grid, plans = stub_plans(tmp_path)
    worker = tmp_path / "stub_worker.py"
    worker.write_text(STUB_WORKER)
    output = tmp_path / "out"
    monkeypatch.setenv("STUB_SECONDS", "60")
    runner = SweepRunner(plans, str(output), parallel=2, print_fn=lambda line: None,
                         worker_command=[sys.executable, str(worker)])
    runner.prepare()
    counts = {}
    thread = threading.Thread(target=lambda: counts.update(runner.run()))
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline and not (output / "starts.txt").exists():
        time.sleep(0.1)
    time.sleep(0.5)  # Let both workers install their SIGTERM handler.
    runner.stop()
    thread.join(timeout=120)
    assert counts == {"ok": 0, "failed": 0, "interrupted": 4, "skipped": 0}
    assert not list(output.glob("cells/*/failed.json"))
    assert len(runner.pending()) == 4


def test_an_orphaned_cell_stops_itself(tmp_path):
    """A cell whose runner died gets SIGTERM (checkpoint and exit), not a life of its own."""
    import time

    ready, terminated = tmp_path / "ready", tmp_path / "terminated"
    # keras_ssl.sweep.cell by path: its top level is stdlib only, no TensorFlow import.
    cell_path = os.path.join(REPO, "keras_ssl", "sweep", "cell.py")
    grandchild = textwrap.dedent(f"""\
        import importlib.util, signal, sys, time
        spec = importlib.util.spec_from_file_location("cell", {cell_path!r})
        cell = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cell)
        signal.signal(signal.SIGTERM, lambda *_: (open({str(terminated)!r}, "w").close(),
                                                  sys.exit(143)))
        cell.stop_when_orphaned(interval=0.1)
        open({str(ready)!r}, "w").close()
        time.sleep(60)
        """)
    parent = textwrap.dedent(f"""\
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)
        deadline = time.time() + 60
        while not os.path.exists({str(ready)!r}) and time.time() < deadline:
            time.sleep(0.05)
        """)
    subprocess.run([sys.executable, "-c", parent, grandchild], timeout=120, check=True)
    deadline = time.time() + 30
    while not terminated.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert terminated.exists()


def test_changed_grid_refuses_a_cell_run_with_other_bindings(tmp_path):
    from keras_ssl.sweep.grid import GridError
    from keras_ssl.sweep.runner import SweepRunner

    grid, plans = stub_plans(tmp_path)
    SweepRunner(plans, str(tmp_path / "out")).prepare()
    changed = [plan.__class__(**{**plan.__dict__, "evaluation": {"protocols": ["knn"]}})
               for plan in plans]
    with pytest.raises(GridError, match="was run with other evaluation"):
        SweepRunner(changed, str(tmp_path / "out")).prepare()


def test_one_sweep_per_output_directory(tmp_path):
    from keras_ssl.sweep.grid import GridError
    from keras_ssl.sweep.runner import SweepRunner

    _, plans = stub_plans(tmp_path)
    first = SweepRunner(plans, str(tmp_path / "out"))
    first.prepare()
    with pytest.raises(GridError, match=f"another keras-ssl-sweep \\(pid {os.getpid()}\\)"):
        SweepRunner(plans, str(tmp_path / "out")).prepare()
    first.unlock()
    SweepRunner(plans, str(tmp_path / "out")).prepare()


@pytest.mark.slow
def test_sweep_binary_end_to_end(tmp_path, data_dir):
    """Two tiny cells in parallel: one resumes a killed run, one diverges (lr 1e30)."""
    from keras_ssl import config, training
    from keras_ssl.sweep.grid import load_grid

    dataset = tiny_shapes_name()
    grid_path = write_grid(tmp_path, f"""\
        base_gin: {REPO}/gin_configs/quickstart.gin
        bindings:
          resnet_v2.depth: 10
          keras_ssl.train.dataset: '{dataset}'
          keras_ssl.train.data_dir: '{data_dir}'
          keras_ssl.train.image_size: 16
          keras_ssl.train.batch_size: 8
          keras_ssl.train.train_steps: 4
          keras_ssl.train.steps_per_loop: 2
          keras_ssl.train.shuffle_buffer: 32
          keras_ssl.learning_rate_schedule.warmup_steps: 0
        axes:
          learning_rate:
            binding: keras_ssl.learning_rate_schedule.base_learning_rate
            values: [0.1, 1e30]
        evaluation:
          protocols: [linear, knn]
          layers: [block3, pre_logits]
          max_train_examples: 64
          max_test_examples: 32
          l2_grid: [0.001]
        plots:
          - {{name: per_layer, x: layer, series: [model], where: {{protocol: linear}}}}
        """)
    output = tmp_path / "sweep"
    cells = load_grid(grid_path).cells()
    # A killed cell: its run directory holds the checkpoint of step 2 of 4.
    killed = cells[0]
    config.parse_gin(list(killed.gin_files), list(killed.bindings) + [
        "keras_ssl.train.train_steps = 2", "keras_ssl.train.export = False"])
    training.train(str(output / "cells" / killed.name / "model"))

    result = subprocess.run(
        [sys.executable, "-m", "keras_ssl.cli.sweep", f"--grid={grid_path}",
         f"--output={output}", "--parallel=2"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1"))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 cells failed (learning_rate-1e+30)" in out
    assert "ETA" in out and "2/2 done, 1 failed" in out

    good = output / "cells" / killed.name
    log = (good / "log.txt").read_text()
    assert "resuming from the checkpoint of step 2" in log, log
    results = json.loads((good / "results.json").read_text())
    assert [m["role"] for m in results["models"]] == ["step_0", "final"]
    assert results["models"][1]["step"] == 4
    assert set(results["models"][1]["results"]["knn"]) == {"block3", "pre_logits"}
    failed = json.loads((output / "cells" / cells[1].name / "failed.json").read_text())
    assert "loss became" in failed["reason"], failed
    rows = (output / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2 + 1  # header, 2 models x 2 layers x 2 protocols, failure
    # Every accuracy carries its test count (max_test_examples) and Wilson interval.
    from keras_ssl.sweep.table import read_csv
    finished = [r for r in read_csv(str(output / "results.csv")) if r["status"] == "ok"]
    assert {r["test_count"] for r in finished} == {32}
    assert all(r["ci95_low"] <= r["value"] <= r["ci95_high"] for r in finished)
    assert (output / "results.md").exists()
    assert (output / "plots" / "per_layer.png").stat().st_size > 0


def test_utility_plot_marks_clipped_points(tmp_path, monkeypatch):
    from keras_ssl.sweep import plots

    drawn = []
    real_plot, real_errorbar = plots.plt.Axes.plot, plots.plt.Axes.errorbar

    def recording_plot(self, *args, **kwargs):
        drawn.append(kwargs.get("marker"))
        return real_plot(self, *args, **kwargs)

    def recording_errorbar(self, *args, **kwargs):
        drawn.append(kwargs.get("marker"))
        return real_errorbar(self, *args, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "plot", recording_plot)
    monkeypatch.setattr(plots.plt.Axes, "errorbar", recording_errorbar)
    rows = [{"status": "ok", "model": "final", "factors": "TCV-", "labels": n, "layer": "pre_logits",
             "protocol": "utility", "metric": "utility", "value": u, "bound": bound}
            for n, u, bound in [(30, 5.2, ""), (100, 2.8, ""), (1000, 0.0, "lower")]]
    path = plots.draw(rows, {"x": "labels", "series": ["factors"], "metric": "utility",
                             "log_x": True}, ["factors"], str(tmp_path / "u.png"))
    assert os.path.getsize(path) > 0
    assert drawn == ["o", "^"]  # the line, then the clipped point as a lower bound


@pytest.mark.parametrize("grid_file", sorted(
    name for name in os.listdir(os.path.join(REPO, "gin_configs", "experiments"))
    if name.endswith(".yaml")))
def test_checked_in_grids_pass_the_sweeps_checks(grid_file):
    """Every study's grid loads, and every cell's gin files and bindings parse."""
    from keras_ssl.sweep.checks import check_bindings, check_evaluation
    from keras_ssl.sweep.grid import load_grid

    grid = load_grid(os.path.join(REPO, "gin_configs", "experiments", grid_file))
    check_evaluation(grid)
    assert len(check_bindings(grid)) == len(grid.cells()) > 0


# ------------------------------------------------------------- seeds and intervals --


def test_seeds_axis_repeats_every_cell_per_training_seed(tmp_path):
    grid = load(tmp_path, """\
        axes:
          width: {binding: resnet_v2.widening_factor, values: [1, 2]}
        seeds: [0, 1]
        """)
    assert grid.axis_names() == ["width", "seed"]
    cells = grid.cells()
    assert [c.name for c in cells] == ["width-1__seed-0", "width-1__seed-1", "width-2__seed-0",
                                       "width-2__seed-1"]
    assert cells[1].bindings[-1] == "keras_ssl.train.seed = 1"
    from keras_ssl.sweep.grid import GridError
    for text, message in [("seeds: [0, 0]\n", "repeat"), ("seeds: 3\n", "non-empty list"),
                          ("axes:\n  seed: {binding: keras_ssl.train.seed, values: [0]}\n"
                           "seeds: [1]\n", "already has")]:
        with pytest.raises(GridError, match=message):
            load(tmp_path, text)


def _seed_rows():
    """Two widths x two seeds of a final export, and their step-0 baselines, on 1000 images."""
    from keras_ssl_eval.statistics import accuracy_interval

    def row(width, seed, value, model="final"):
        fields = accuracy_interval(value, 1000)
        return {"cell": f"width-{width}__seed-{seed}", "status": "ok", "width": width,
                "seed": seed, "model": model, "step": 4 if model == "final" else 0,
                "layer": "pre_logits", "protocol": "linear", "labels": None,
                "metric": "test_accuracy", "value": value, "test_count": 1000,
                "ci95_low": fields["ci95"][0], "ci95_high": fields["ci95"][1]}
    return [row(1, 0, 0.30), row(1, 1, 0.31), row(2, 0, 0.70), row(2, 1, 0.72),
            row(3, 0, 0.69), row(3, 1, 0.70), *(row(w, s, 0.30, "step_0") for w in (1, 2, 3)
                                                for s in (0, 1))]


def test_seeds_aggregate_into_mean_std_n_and_overlap_marks(tmp_path):
    import csv

    from keras_ssl.sweep import aggregate, pivot
    from keras_ssl.sweep.report import write_summary
    from keras_ssl_eval.statistics import seed_summary

    rows = _seed_rows()
    axes = ["width", "seed"]
    summary = aggregate.summary_rows(rows, axes)
    final = [r for r in summary if r["model"] == "final"]
    assert [(r["width"], r["n"], r["seeds"]) for r in final] == [(1, 2, [0, 1]), (2, 2, [0, 1]),
                                                                  (3, 2, [0, 1])]
    assert final[0]["value"] == pytest.approx(0.305)
    assert final[0]["std"] == pytest.approx(0.0070711, abs=1e-6)  # sample std, ddof 1
    expected = seed_summary([0.30, 0.31], test_count=1000)["ci95"]
    assert [final[0]["ci95_low"], final[0]["ci95_high"]] == pytest.approx(expected)
    assert "seed" not in final[0] and "cell" not in final[0]

    path = write_summary(rows, axes, str(tmp_path / "summary.csv"))
    with open(path) as f:
        written = list(csv.DictReader(f))
    assert list(written[0])[:4] == ["width", "model", "step", "layer"]
    assert written[0]["seeds"] == "0 1" and written[0]["n"] == "2"

    spec = {"name": "by_width", "rows": ["width"], "columns": "layer", "where": {}}
    keys, order, body = pivot.pivot(rows, spec, axes)
    assert keys == ["width"] and len(body) == 3  # one row per width: the seeds averaged
    text = pivot.markdown(rows, spec, axes)
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    # Width 2 is the best (bold); width 3 (69.5, 2 seeds) overlaps it; width 1 does not,
    # and overlaps its own random initialisation (30%): marked with a dagger.
    assert lines["| 2"].startswith("| 2 | **71.0 ± 1.4 [") and "†" not in lines["| 2"]
    assert lines["| 3"].endswith("] ≈ |")
    assert lines["| 1"].endswith("] † |") and "≈" not in lines["| 1"]
    assert "mean ± std over 2 seeds" in text and "1000 test images" in text
    assert "†: interval overlaps the same network's at random initialisation" in text
    # An entry wholly below its random initialisation reads ↓.
    worse = [{**r, "value": 0.1, "ci95_low": 0.08, "ci95_high": 0.12}
             if r["width"] == 1 and r["model"] == "final" else r for r in rows]
    assert "| 1 | 10.0 ± 0.0 [" in pivot.markdown(worse, spec, axes)
    assert pivot.markdown(worse, spec, axes).count("↓ |") == 1

    # Naming the seed keeps the runs apart: one table row per width and seed.
    apart = pivot.pivot(rows, {**spec, "rows": ["width", "seed"]}, axes)[2]
    assert len(apart) == 6


def test_sweep_plot_draws_interval_bars(tmp_path, monkeypatch):
    from keras_ssl.sweep import plots

    bars = []
    real = plots.plt.Axes.errorbar

    def recording(self, x, y, yerr=None, **kwargs):
        bars.append((list(x), list(y), yerr))
        return real(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "errorbar", recording)
    path = plots.draw(_seed_rows(), {"x": "width", "where": {"layer": "pre_logits"}},
                      ["width", "seed"], str(tmp_path / "w.png"))
    assert os.path.getsize(path) > 0
    (x, y, yerr), = bars  # one line: the seeds of each width are one point
    assert x == [1, 2, 3] and y == pytest.approx([30.5, 71.0, 69.5])
    assert all(below > 0 for below in yerr[0]) and all(above > 0 for above in yerr[1])


def test_report_regenerates_from_a_stored_csv_with_intervals(tmp_path):
    """The docs/results studies keep results.csv only: intervals come from the test count."""
    from keras_ssl.sweep import report

    grid_path = write_grid(tmp_path, """\
        axes:
          width: {binding: resnet_v2.widening_factor, values: [1, 2]}
        tables:
          - {name: per_layer, rows: [width], columns: layer, where: {protocol: linear}}
        plots:
          - {name: width, x: width, where: {layer: pre_logits}}
        """)
    stored = tmp_path / "results.csv"
    stored.write_text(
        "cell,status,width,model,step,layer,protocol,labels,metric,value,bound,reason\n"
        "width-1,ok,1,final,4,pre_logits,linear,,test_accuracy,0.5,,\n"
        "width-2,ok,2,final,4,pre_logits,linear,,test_accuracy,0.62,,\n"
        "width-2,ok,2,final,4,pre_logits,utility,30,utility,1.5,lower,\n")
    out = tmp_path / "out"
    report.main([f"--grid={grid_path}", f"--csv={stored}", f"--output={out}",
                 "--test_count=100"])
    markdown = (out / "results.md").read_text()
    assert "| 1 | 50.0 [40.4, 59.6] ≈ |" in markdown
    assert "| 2 | **62.0 [52.2, 70.9]** |" in markdown
    assert "100 test images" in markdown
    assert "| ok | 2 | final | 4 | pre_logits | utility | 30 | utility | 1.500 | 100 |" not in (
        markdown)  # U(n) has no test count
    assert (out / "plots" / "width.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no whole number of 7 test examples"):
        report.table.fill_intervals(report.table.read_csv(str(stored)), 7)


def test_only_seeds_are_averaged():
    """A `where` list lets a named column vary: its values stay apart, seeds are averaged."""
    from keras_ssl.sweep.plots import select

    rows = [{**r, "protocol": protocol} for r in _seed_rows() for protocol in ("linear", "knn")]
    chosen, series = select(rows, {"x": "width", "where": {"protocol": ["linear", "knn"]}},
                            ["width", "seed"])
    assert series == [] and len(chosen) == 6  # 3 widths x 2 protocols, each over 2 seeds
    assert {r["n"] for r in chosen} == {2}
