"""The protocol registry (keras_ssl_eval.protocols.base): a protocol added in one place
appears in evaluate, the binary's flags, the report, the plots and the sweep's table."""

import dataclasses

import numpy as np
import pytest
from absl import flags

from keras_ssl_eval.cli.eval import define_setting_flags, settings_from_flags
from keras_ssl_eval.protocols import base
from keras_ssl_eval.protocols.evaluate import evaluate
from keras_ssl_eval.reporting import report as reporting
from keras_ssl_eval.reporting.tables import table
from keras_ssl_eval.settings import (DataSettings, EvaluationSettings, UnknownSettingError,
                                     setting)
from keras_ssl_eval.statistics import accuracy_interval
from keras_ssl_eval.testing import save_toy_savedmodel, write_image_folder


@dataclasses.dataclass(frozen=True)
class MajoritySettings:
    """The toy protocol's one setting."""

    weight: float = setting(1.0, "majority: scales the reported accuracy.",
                            flat="majority_weight", lower=0)


class MajorityProtocol(base.Protocol):
    """Predicts the most common training label: accuracy = its share of the test labels."""

    name = "majority"
    settings = MajoritySettings
    order = 35  # Between knn and lowshot.

    def run_layer(self, data, settings, evaluation):
        majority = np.bincount(np.asarray(data.y)).argmax()
        accuracy = settings.weight * float(np.mean(np.asarray(data.yt) == majority))
        return {"test_accuracy": accuracy, **accuracy_interval(accuracy, len(data.yt))}

    def markdown(self, report, models):
        rows = [[layer, *[f"{100 * self.results(m)[layer]['test_accuracy']:.1f}"
                          for m in models]] for layer in self.results(models[0])]
        return table("Majority baseline (%)", ["layer", *[m["name"] for m in models]], rows)


@pytest.fixture
def majority():
    protocol = base.register(MajorityProtocol())
    yield protocol
    base.unregister(protocol.name)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    model = save_toy_savedmodel(str(root / "a"), seed=0, name="toy_a", block1_channels=8)
    # 10 "a" and 6 "b" to train on: the majority is "a", half of the test set.
    write_image_folder(str(root / "data" / "train"), {"a": 10, "b": 6}, size=16, seed=0)
    write_image_folder(str(root / "data" / "test"), {"a": 5, "b": 5}, size=16, seed=1)
    return {"model": model, "dataset": f"folder:{root / 'data'}"}


def test_builtin_protocols_in_order():
    assert list(base.registered()) == ["linear", "grid", "knn", "lowshot", "utility"]
    assert base.get_protocol("knn").settings.__name__ == "KnnSettings"
    with pytest.raises(ValueError, match="Unknown protocol 'svm'; use one of linear, grid"):
        base.get_protocol("svm")


def test_a_registered_protocol_runs_reports_and_has_flags(majority, workspace, tmp_path):
    assert base.protocol_names() == ("linear", "grid", "knn", "majority", "lowshot", "utility")
    # Its settings: a section of EvaluationSettings, flat names, a flag.
    assert EvaluationSettings.flat_names()["majority_weight"] == ("majority", "weight")
    assert EvaluationSettings.from_flat({"majority_weight": 0.5}).majority == MajoritySettings(0.5)
    values = flags.FlagValues()
    define_setting_flags(values)
    values(["keras-ssl-eval", "--majority_weight=2", "--knn_k=7", "--shots=1,4"])
    assert values["majority_weight"].help == "majority: scales the reported accuracy."
    parsed = settings_from_flags(values)
    assert parsed.majority == MajoritySettings(2.0) and parsed.knn.k == 7
    assert parsed.lowshot.shots == (1, 4)
    with pytest.raises(flags.IllegalFlagValueError):
        values["majority_weight"].parse("-1")  # The metadata's bound.

    data = DataSettings(layers=["pre_logits"], batch_size=8, cache_dir="")
    result = evaluate([workspace["model"]], workspace["dataset"],
                      protocols=["knn", "majority"], data=data,
                      majority=MajoritySettings(weight=1.0))
    assert result["protocol"] == "knn+majority"
    model = result["models"][0]
    assert set(model) >= {"knn", "majority"} and "linear" not in model
    assert model["majority"]["pre_logits"]["test_accuracy"] == 0.5
    assert model["majority"]["pre_logits"]["test_count"] == 10
    assert result["settings"]["majority"] == {"weight": 1.0}
    # "all" includes it (utility needs a scratch model, so not that one).
    assert evaluate([workspace["model"]], workspace["dataset"], protocols="all", data=data,
                    linear=base.get_protocol("linear").settings(l2_grid=(1e-2,)),
                    grid=base.get_protocol("grid").settings(epochs=1, mlp_hidden=4),
                    lowshot=base.get_protocol("lowshot").settings(shots=(1,), draws=1),
                    )["protocol"] == "linear+grid+knn+majority+lowshot"
    # The report: its table in registry order, after kNN's.
    text = reporting.markdown_report(result)
    assert text.index("kNN test accuracy") < text.index("Majority baseline (%)")
    assert "| pre_logits | 50.0 |" in text
    # Older reports without it still render, and missing intervals are its entries too.
    old = {"dataset": {"name": "d", "test": {"num_examples": 10}}, "settings": {},
           "models": [{"name": "m", "majority": {"pre_logits": {"test_accuracy": 0.3}}}]}
    reporting.add_missing_intervals(old)
    assert old["models"][0]["majority"]["pre_logits"]["test_count"] == 10
    with pytest.raises(TypeError, match="Unknown settings section"):
        evaluate([workspace["model"]], workspace["dataset"], protocols=["knn"], majorty=None)


def test_a_registered_protocol_has_rows_in_the_sweep_table(majority):
    # Skipped where only keras-ssl-eval is installed (KERAS_SSL_EVAL_ONLY=1).
    table_module = pytest.importorskip("keras_ssl.sweep.table", exc_type=ImportError)
    entry = {"test_accuracy": 0.5, **accuracy_interval(0.5, 10)}
    rows = table_module.model_rows("final", 100, {"knn": {"block3": entry},
                                                  "majority": {"block3": entry}})
    assert [(r["protocol"], r["layer"], r["value"], r["test_count"]) for r in rows] == [
        ("knn", "block3", 0.5, 10), ("majority", "block3", 0.5, 10)]
    assert rows[1]["ci95_low"] == pytest.approx(entry["ci95"][0]) and rows[1]["model"] == "final"
    # A results.json of schema version 1: the linear probe under "layers".
    old = table_module.model_rows("step_0", 0, {"layers": {"pre_logits": entry}})
    assert [(r["protocol"], r["layer"]) for r in old] == [("linear", "pre_logits")]


def test_register_refuses_clashing_names(majority):
    @dataclasses.dataclass(frozen=True)
    class Clashing:
        k: int = 3  # kNN's flat name is knn_k: "k" is free, "majority_weight" is not.
        weight: float = setting(1.0, "", flat="majority_weight")

    class Other(base.Protocol):
        name = "other"
        settings = Clashing

    with pytest.raises(ValueError, match="'majority_weight' \\(also in majority\\)"):
        base.register(Other())
    with pytest.raises(ValueError, match="'majority' is taken"):
        base.register(MajorityProtocol())
    assert "other" not in base.registered()
    with pytest.raises(UnknownSettingError, match="did you mean 'majority_weight'"):
        EvaluationSettings.from_flat({"majority_weigth": 1})
