"""What `keras-ssl-sweep` refuses before any cell runs: bad bindings, bad evaluation
settings, and a grid that would not fit on disk.

Every binding of the grid is parsed with keras-ssl's strict gin parsing
(`keras_ssl.config.parse_gin`, which also checks plugin parameters), first
one by one so an error names its line, then cell by cell. The parsed config
of each cell says what its evaluation reads (the dataset it trained on) and
how big its run directory gets.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
import shutil

from keras_ssl.sweep.grid import Cell, Grid, GridError

# Evaluation settings the sweep sets itself (the utility's scratch model is
# the cell's step-0 export).
_EVALUATION_OWNED = ("scratch_model",)
# Bytes per parameter of a checkpoint: float32 weights plus up to two optimizer
# slots (momentum; Adam/LARS-style second moments).
_CHECKPOINT_BYTES_PER_PARAMETER = 4 * 3
_EXPORT_BYTES_PER_PARAMETER = 4
# The graph of a SavedModel, summaries, logs and result files, per cell.
_FIXED_BYTES_PER_CELL = 16 * 2**20
# Heads (projection MLPs, Jigsaw's fc layers) are not counted; this margin covers
# the small ones. Patch methods with the papers' 4096-wide heads can exceed it.
_HEAD_MARGIN = 1.25


@dataclasses.dataclass
class CellPlan:
    """A checked cell and what running it involves.

    Attributes:
      cell: The `Cell`.
      evaluation: The grid's flat evaluation mapping for this cell (`dataset`
        and `data_dir` filled in from its training config; see
        `keras_ssl.sweep.cell.evaluation_arguments`).
      train_steps: Steps of its training run.
      dataset, data_dir: What it trains on (`keras_ssl.train.dataset`, `data_dir`).
      backbone: The backbone name.
      parameters: Estimated backbone parameters.
      disk_bytes: Estimated size of its directory when finished.
    """

    cell: Cell
    evaluation: dict
    train_steps: int
    dataset: str
    data_dir: str | None
    backbone: str
    parameters: int
    disk_bytes: int

    def spec(self) -> dict:
        """What the cell worker needs (written to the cell's `cell.json`)."""
        return {"name": self.cell.name, "labels": self.cell.labels,
                "gin_files": list(self.cell.gin_files), "bindings": list(self.cell.bindings),
                "evaluation": self.evaluation, "train_steps": self.train_steps}


def check_evaluation(grid: Grid) -> None:
    """Refuses unknown keys, protocols and values in the grid's `evaluation`.

    Raises:
      GridError: Naming the line and the closest valid key.
    """
    from keras_ssl_eval.protocols.base import protocol_names
    from keras_ssl_eval.settings import EvaluationSettings, UnknownSettingError

    from keras_ssl.sweep.cell import evaluation_arguments

    accepted = ["dataset", "protocols"] + [name for name in EvaluationSettings.flat_names()
                                           if name not in _EVALUATION_OWNED]
    for key in grid.evaluation:
        if key not in accepted:
            raise GridError(f"{grid.path} line {grid.evaluation_lines.get(key, 0)}: "
                            f"{UnknownSettingError(key, accepted)}")
    known = protocol_names()
    protocols = grid.evaluation.get("protocols", ["linear"])
    protocols = [protocols] if isinstance(protocols, str) else list(protocols)
    for protocol in protocols:
        if protocol not in known + ("all",):
            raise GridError(f"{grid.path} line {grid.evaluation_lines.get('protocols', 0)}: "
                            f"unknown protocol {protocol!r}; use any of {', '.join(known)} "
                            f"or all.")
    for key, value in grid.evaluation.items():
        try:
            evaluation_arguments({key: value})
        except (TypeError, ValueError) as e:
            raise GridError(f"{grid.path} line {grid.evaluation_lines.get(key, 0)}: evaluation "
                            f"setting {key!r}: {e}") from None
    try:
        evaluation_arguments(grid.evaluation)
    except (TypeError, ValueError) as e:
        raise GridError(f"{grid.path}: evaluation: {e}") from None


def _config_error_line(error: Exception) -> str:
    """The first line of a gin error (keras-ssl's message lists every configurable after it)."""
    from keras_ssl.cli_errors import one_line

    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    # gin's position inside the bindings string it was given; the grid's line replaces it.
    first = re.sub(r" \(bindings string line \d+\)", "", first)
    return one_line(type(error)(first))


def _parse(files, bindings, where: str) -> None:
    import keras_ssl.training  # noqa: F401  (registers keras_ssl.train and the optimizer)
    from keras_ssl.config import ConfigError, parse_gin
    from keras_ssl.registry import PluginError

    try:
        parse_gin(list(files), list(bindings))
    except (ConfigError, PluginError) as e:
        message = _config_error_line(e)
        if "No configurable matching" in message:
            message += (" (keras-ssl-list shows the methods, backbones and datasets; "
                        "docs/training.md the keras_ssl.train settings)")
        raise GridError(f"{where}: {message}") from None


def check_bindings(grid: Grid) -> list[Cell]:
    """Parses every binding of the grid with strict gin parsing; returns the cells.

    Bindings are tried one at a time on top of the base files, so an error
    names the line of the binding or axis, then every cell as a whole.

    Raises:
      GridError: An unknown configurable or parameter, or a value gin does
        not accept, with the line and the axis.
    """
    _parse(grid.base_gin, [], f"{grid.path} base_gin")
    fixed = []
    for binding, literal, line in grid.bindings:
        text = f"{binding} = {literal}"
        _parse(grid.base_gin, fixed + [text], f"{grid.path} line {line}, binding {binding!r}")
        fixed.append(text)
    for axis in grid.axes:
        for value in axis.values:
            _parse(list(grid.base_gin) + list(value.gin_files),
                   fixed + [f"{b} = {literal}" for b, literal in value.bindings],
                   f"{grid.path} line {axis.line}, axis {axis.name!r} value {value.label!r}")
    return grid.cells()


def _bound(selector: str, default):
    """The value gin binds to `selector` (macros and references resolved), else `default`."""
    import gin

    try:
        return gin.query_parameter(selector)
    except ValueError:
        return default


def _train_default(name: str):
    from keras_ssl import training

    return inspect.signature(training.train).parameters[name].default


def plan_cells(grid: Grid) -> list[CellPlan]:
    """Checks the whole grid and returns one `CellPlan` per cell.

    Raises:
      GridError: Any binding, evaluation setting or cell that cannot run.
    """
    import gin

    check_evaluation(grid)
    cells = check_bindings(grid)
    plans, parameter_cache = [], {}
    for cell in cells:
        where = f"{grid.path}: cell {cell.name}"
        _parse(cell.gin_files, cell.bindings, where)
        method = _bound("keras_ssl.build_method.method", None)
        if not isinstance(method, str):
            raise GridError(f"{where}: no method is bound; bind keras_ssl.build_method.method in "
                            f"base_gin, bindings or an axis.")
        backbone = _bound("keras_ssl.build_method.backbone", "resnet_v2")
        settings = {name: _bound(f"keras_ssl.train.{name}", _train_default(name))
                    for name in ("dataset", "data_dir", "train_steps", "max_checkpoints")}
        evaluation = dict(grid.evaluation)
        evaluation.setdefault("dataset", settings["dataset"])
        evaluation.setdefault("data_dir", settings["data_dir"])
        evaluation.setdefault("cache_dir", "")  # Features are used once per cell.
        parameters = _backbone_parameters(backbone, parameter_cache, gin.config_str())
        plans.append(CellPlan(
            cell=cell, evaluation=evaluation, train_steps=int(settings["train_steps"]),
            dataset=settings["dataset"], data_dir=settings["data_dir"], backbone=backbone, parameters=parameters,
            disk_bytes=_disk_bytes(parameters, int(settings["max_checkpoints"]),
                                   evaluation)))
    return plans


def _backbone_parameters(backbone: str, cache: dict, config: str) -> int:
    """Parameters of the gin-configured backbone, built at widening factor 1 and scaled.

    Convolution weights grow with k^2, so building at k=1 and multiplying by
    k^2 bounds the count from above without allocating a wide network.
    """
    from keras_ssl import registry
    from keras_ssl.backbones import build_backbone

    factor = _bound(f"{backbone}.widening_factor", None)
    accepted = registry.accepted_parameters(registry.BACKBONES.get(backbone)) or ()
    if factor is None and "widening_factor" in accepted:
        factor = inspect.signature(registry.BACKBONES.get(backbone)).parameters[
            "widening_factor"].default
    own = tuple(line for line in config.splitlines()
                if line.startswith(f"{backbone}.") and "widening_factor" not in line)
    key = (backbone, own)
    if key not in cache:
        overrides = {"widening_factor": 1} if "widening_factor" in accepted else {}
        cache[key] = int(build_backbone(backbone, **overrides).count_params())
    scale = float(factor) ** 2 if "widening_factor" in accepted and factor else 1.0
    return int(cache[key] * scale)


def _disk_bytes(parameters: int, max_checkpoints: int, evaluation: dict) -> int:
    # Kept checkpoints plus the initial one, plus one more while a save rotates.
    checkpoints = (max_checkpoints + 2) * _CHECKPOINT_BYTES_PER_PARAMETER * parameters
    exports = 2 * _EXPORT_BYTES_PER_PARAMETER * parameters
    total = (checkpoints + exports) * _HEAD_MARGIN + _FIXED_BYTES_PER_CELL
    return int(math.ceil(total))


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_disk(plans: list[CellPlan], output_dir: str, max_disk_gb: float | None = None,
               grid_path: str = "grid") -> int:
    """Refuses a grid whose cells to run would not fit; returns the bytes they need.

    Args:
      plans: The cells still to run.
      output_dir: The sweep's output directory (its filesystem is checked).
      max_disk_gb: Optional budget in GB (1e9 bytes).
      grid_path: The grid file, for the message.

    Raises:
      GridError: The estimate exceeds the free space or the budget.
    """
    needed = sum(plan.disk_bytes for plan in plans)
    evaluation = plans[0].evaluation if plans else {}
    if evaluation.get("cache_dir"):
        needed += int(evaluation.get("cache_max_bytes") or 0)
    free = shutil.disk_usage(_existing_parent(output_dir)).free
    largest = max(plans, key=lambda p: p.disk_bytes, default=None)
    detail = ""
    if largest is not None:
        detail = (f" (largest cell {largest.cell.name}: {largest.parameters / 1e6:.1f}M backbone "
                  f"parameters, about {largest.disk_bytes / 1e9:.2f} GB of checkpoints and "
                  f"exports)")
    if needed > free:
        raise GridError(f"{grid_path}: the {len(plans)} cells to run need about "
                        f"{needed / 1e9:.2f} GB{detail}, but {output_dir} has {free / 1e9:.2f} GB "
                        f"free; free space, choose another --output, or lower "
                        f"keras_ssl.train.max_checkpoints.")
    if max_disk_gb is not None and needed > max_disk_gb * 1e9:
        raise GridError(f"{grid_path}: the {len(plans)} cells to run need about "
                        f"{needed / 1e9:.2f} GB{detail}, over --max_disk_gb={max_disk_gb:g}; "
                        f"raise the budget, shrink the grid, or lower "
                        f"keras_ssl.train.max_checkpoints.")
    return needed
