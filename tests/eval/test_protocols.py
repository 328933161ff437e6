"""End-to-end tests of the protocols, utility, plots and compare (keras_ssl_eval)."""

import json

import numpy as np
import pytest

from keras_ssl_eval.protocols import utility
from keras_ssl_eval.reporting import compare, report
from keras_ssl_eval.protocols.evaluate import evaluate
from keras_ssl_eval.probes.finetune import FineTuner, subset_indices
from keras_ssl_eval.settings import (DataSettings, GridSettings, KnnSettings, LinearSettings,
                                     LowShotSettings, UtilitySettings)
from keras_ssl_eval.testing import run_eval_main, save_toy_savedmodel, write_image_folder
from tests.eval.test_statistics import wilson_reference


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocols")
    models = [save_toy_savedmodel(str(root / "a"), seed=0, name="toy_a", block1_channels=8),
              save_toy_savedmodel(str(root / "b"), seed=1, name="toy_b", block1_channels=8)]
    write_image_folder(str(root / "data" / "train"), {"a": 10, "b": 10}, size=16, seed=0)
    write_image_folder(str(root / "data" / "test"), {"a": 5, "b": 5}, size=16, seed=1)
    return {"models": models, "dataset": f"folder:{root / 'data'}", "root": root}


def _cli(argv):
    run_eval_main(argv)


# ----------------------------------------------------------------- utility --


def test_utility_of_scratch_itself_is_zero():
    budgets, acc = [10, 30, 100, 300], [0.2, 0.35, 0.5, 0.6]
    curve = utility.utility_curve(budgets, acc, budgets, acc)
    assert [row["utility"] for row in curve] == [0.0] * 4
    assert all(row["flag"] is None for row in curve)
    flat = [0.5, 0.5, 0.5, 0.7]  # Small test sets give ties: still 0.
    assert [r["utility"] for r in utility.utility_curve(budgets, flat, budgets, flat)] == [0.0] * 4
    # Measured curves dip (the quickstart's scratch curve did, 0.092 -> 0.078): an identical
    # model is still worth 0 labels everywhere, not "below scratch".
    dipping = [0.092, 0.09, 0.078, 0.08, 0.091, 0.112, 0.101]
    seven = [12, 24, 60, 120, 300, 600, 1200]
    rows = utility.utility_curve(seven, dipping, seven, dipping)
    assert [r["utility"] for r in rows] == [0.0] * 7 and all(r["flag"] is None for r in rows)
    assert rows[2]["finetuned_accuracy"] == 0.078 and rows[2]["envelope_accuracy"] == 0.092
    # Budgets in any order give the same rows.
    shuffled = utility.utility_curve(seven[::-1], dipping[::-1], seven, dipping)
    assert shuffled[::-1] == rows


def test_utility_interpolates_log_linearly_and_flags():
    n_hat, flag = utility.labels_needed(0.6, [10, 100], [0.5, 0.7])
    assert n_hat == pytest.approx(10 ** 1.5) and flag is None
    curve = utility.utility_curve([10, 100], [0.7, 0.9], [10, 100], [0.5, 0.7])
    assert curve[0]["utility"] == pytest.approx(9.0)           # Needs 100 scratch labels.
    assert curve[1]["flag"] == "above_scratch" and curve[1]["n_hat"] == 100
    low = utility.utility_curve([100], [0.1], [10, 100], [0.5, 0.7])[0]
    assert low["flag"] == "below_scratch" and low["utility"] == pytest.approx(-0.9)
    # A dip in the scratch curve is ignored (running maximum).
    assert utility.labels_needed(0.55, [10, 20, 40], [0.5, 0.4, 0.6])[0] == pytest.approx(
        20 * 2 ** 0.5)


def test_subset_indices_cover_classes():
    labels = np.array([0] * 8 + [1] * 2 + [2] * 2)
    idx = subset_indices(labels, 4, seed=0)
    assert len(idx) == 4 and set(labels[idx]) == {0, 1, 2}


def test_finetuning_changes_the_backbone(workspace):
    tuner = FineTuner(workspace["models"][0], 2, steps=3, batch_size=4, learning_rate=0.1)
    before = [v.numpy().copy() for v in tuner.backbone_vars]
    rng = np.random.default_rng(0)
    images = rng.uniform(size=[8, 16, 16, 3]).astype(np.float32)
    labels = np.array([0, 1] * 4)
    accuracy = tuner.accuracy(images, labels, images, labels)
    assert 0.0 <= accuracy <= 1.0
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, tuner.backbone_vars))
    tuner.accuracy(images, labels, images, labels)  # Reset to the export first.


def test_layer_decay_factors_follow_the_end_point_order():
    from keras_ssl_eval.probes.finetune import layer_decay_scales

    metadata = {"endpoints": ["after_root", "block1", "block2", "pre_logits"],
                "trainable_variable_endpoints": ["after_root", "block2", "pre_logits", None]}
    assert layer_decay_scales(metadata, "m", 0.5) == [0.125, 0.5, 1.0, 1.0]
    # Under a segmentation head on block1, what lies above it keeps the full rate.
    assert layer_decay_scales(metadata, "m", 0.5, "block1") == [0.5, 1.0, 1.0, 1.0]


def test_layer_decay_on_a_model_that_does_not_place_its_variables_is_refused_before_the_data(
        workspace):
    settings = UtilitySettings(scratch_model=workspace["models"][1], finetune_layer_decay=0.65)
    with pytest.raises(ValueError, match="trainable_variable_endpoints"):
        evaluate(workspace["models"][:1], "folder:/nonexistent/images", protocols=["utility"],
                 utility=settings)
    with pytest.raises(ValueError, match="outside \\(0, 1\\]"):
        UtilitySettings(finetune_layer_decay=0.0)


# --------------------------------------------------------------- protocols --


def test_grid_knn_lowshot_report_and_cache(workspace, tmp_path):
    kwargs = dict(data=DataSettings(layers=["after_root", "pre_logits"],
                                    cache_dir=str(tmp_path / "cache"), batch_size=8),
                  linear=LinearSettings(l2_grid=[1e-3]),
                  grid=GridSettings(epochs=2, sgd_batch_size=8, mlp_hidden=16),
                  knn=KnnSettings(k=5), lowshot=LowShotSettings(shots=(1, 2, 50), draws=2))
    result = evaluate(workspace["models"], workspace["dataset"],
                      protocols=["grid", "knn", "lowshot"], **kwargs)
    assert result["protocol"] == "grid+knn+lowshot"
    model = result["models"][0]
    assert "linear" not in model and set(model["grid"]) == {"after_root", "pre_logits"}
    assert set(model["grid"]["pre_logits"]) == {"linear", "mlp"}
    assert model["grid"]["pre_logits"]["linear"]["solver"] == "fast"
    assert model["knn"]["pre_logits"]["k"] == 5
    assert model["lowshot"]["pre_logits"]["skipped"] == [50]
    assert result["settings"]["knn"] == {"k": 5, "temperature": 0.1}
    table = report.markdown_report(result)
    assert "Kolesnikov grid" in table and "kNN test accuracy" in table and "± " in table
    # A second protocol on the same models reads the cached features.
    linear = evaluate(workspace["models"], workspace["dataset"], protocols="linear", **kwargs)
    assert set(linear["models"][1]["linear"]) == {"after_root", "pre_logits"}
    assert linear["models"][1]["linear"]["after_root"]["endpoint_shape"] == [8, 8, 4]

    # Every test accuracy carries the test count (10 images) and its Wilson interval.
    def check(entry, key="test_accuracy"):
        assert entry["test_count"] == 10
        assert entry["ci95"] == pytest.approx(list(wilson_reference(entry[key] * 10, 10)))
        assert entry["ci95"][0] <= entry[key] <= entry["ci95"][1]
    for model in result["models"]:
        for layer in ("after_root", "pre_logits"):
            check(model["grid"][layer]["linear"])
            check(model["grid"][layer]["mlp"])
            check(model["knn"][layer])
            for head in ("svm", "linear"):
                for k in ("1", "2"):
                    check(model["lowshot"][layer][head][k], "mean")
    for model in linear["models"]:
        for entry in model["linear"].values():
            check(entry)
    # The tables print them: "50.0 [23.7, 76.3]", the count in the caption.
    entry = linear["models"][0]["linear"]["pre_logits"]
    low, high = entry["ci95"]
    assert (f"| pre_logits | {100 * entry['test_accuracy']:.1f} [{100 * low:.1f}, "
            f"{100 * high:.1f}] |") in report.markdown_table(linear)
    assert "10 test images, 95% Wilson interval" in table


def test_cli_utility_plots_and_compare(workspace, tmp_path, capsys):
    scratch = save_toy_savedmodel(str(tmp_path / "scratch"), seed=7, name="scratch@0",
                                  block1_channels=8)
    first, second = tmp_path / "first", tmp_path / "second"
    common = [f"--dataset={workspace['dataset']}", f"--cache_dir={tmp_path / 'cache'}",
              "--batch_size=8", "--l2_grid=1e-3", "--layers=pre_logits", "--noprogress"]
    _cli([f"--saved_model={workspace['models'][0]}", "--protocol=linear,knn,lowshot,utility",
          f"--scratch_model={scratch}", "--budgets=4,8,100", "--finetune_steps=2",
          "--finetune_batch_size=4", "--shots=1,2", "--draws=2", f"--output={first}", *common])
    printed = capsys.readouterr().out
    assert "Linear probe test accuracy" in printed and "Utility U(n)" in printed
    results = json.loads((first / "results.json").read_text())
    entry = results["models"][0]["utility"]
    assert entry["budgets"] == [4, 8] and entry["skipped_budgets"] == [100]
    assert len(entry["curve"]) == 2 and len(entry["scratch_accuracy"]) == 2
    assert entry["test_count"] == 10
    for which in ("finetuned", "scratch"):
        assert entry[f"{which}_ci95"] == [
            pytest.approx(list(wilson_reference(a * 10, 10))) for a in entry[f"{which}_accuracy"]]
    assert "Test accuracy (%) behind U(n)" in printed
    assert {p.name for p in first.glob("*.png")} == {"layers.png", "lowshot.png",
                                                      "utility.png"}
    _cli([f"--saved_model={workspace['models'][1]}", f"--output={second}", *common])
    out = tmp_path / "both"
    _cli(["compare", f"--results={first / 'results.json'},{second / 'results.json'}",
          f"--output={out}"])
    merged = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in merged["models"]] == ["toy_a", "toy_b"]
    assert "| layer | toy_a | toy_b |" in capsys.readouterr().out
    assert (out / "layers.png").exists()
    assert len(merged["settings"]["compared"]) == 2


def test_compare_renames_duplicates():
    fake = {"protocol": "linear_probe", "dataset": {"name": "d"}, "settings": {},
            "models": [{"name": "m", "path": "/x/m", "metadata": {}, "layers": {}}]}
    merged = compare.compare_reports([fake, fake])
    assert [m["name"] for m in merged["models"]] == ["m", "m #2"]


def test_compare_gives_older_reports_their_intervals():
    """A results.json from before the intervals and the one layout: compare fills the
    intervals from its test size and moves the linear probe's results to "linear"."""
    old = {"protocol": "linear_probe", "settings": {},
           "dataset": {"name": "d", "test": {"split": "test", "num_examples": 100}},
           "models": [{"name": "m", "path": "/x/m", "metadata": {},
                       "layers": {"pre_logits": {"test_accuracy": 0.5}},
                       "knn": {"pre_logits": {"test_accuracy": 0.0, "k": 5}}}]}
    merged = compare.compare_reports([old])
    model = merged["models"][0]
    assert "layers" not in model and merged["schema_version"] == 2
    assert model["linear"]["pre_logits"]["test_count"] == 100
    assert model["linear"]["pre_logits"]["ci95"] == pytest.approx([0.4038, 0.5962], abs=1e-4)
    assert model["knn"]["pre_logits"]["ci95"][0] == 0.0
    assert "| pre_logits | 50.0 [40.4, 59.6] |" in report.markdown_report(merged)


def test_protocol_errors(workspace):
    with pytest.raises(ValueError, match="scratch_model"):
        evaluate(workspace["models"], workspace["dataset"], protocols=["utility"])
    with pytest.raises(ValueError, match="Unknown protocol"):
        evaluate(workspace["models"], workspace["dataset"], protocols=["svm"])
