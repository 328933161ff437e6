"""The grid file of `keras-ssl-sweep`: reading it, checking its form, listing its cells.

A grid file is YAML (docs/sweep.md has the full format)::

    base_gin: gin_configs/quickstart.gin      # one path or a list
    bindings:                                 # applied to every cell
      keras_ssl.train.train_steps: 300
    axes:                                     # every combination is a cell
      resnet_v2.widening_factor: [1, 2]       # shorthand: the binding is the axis
      train_examples:                         # a named axis
        binding: keras_ssl.train.split
        format: 'train[:{}]'                  # nested subsets: prefixes of one order
        values: [500, 1000]
      method:                                 # values that are bundles of bindings
        values:
          rotation: {keras_ssl.build_method.method: rotation}
          jigsaw: {gin_file: gin_configs/jigsaw/synthetic_shapes.gin}
      permutations:                           # only in cells where method is jigsaw
        binding: jigsaw.num_permutations
        values: [10, 100]
        when: {method: jigsaw}
    seeds: [0, 1, 2]                          # every cell once per training seed (an axis `seed`)
    evaluation:                               # settings of keras_ssl_eval.evaluate (flag names)
      protocols: [linear, knn]
    plots:
      - {name: width, x: resnet_v2.widening_factor, series: [method]}
    tables:                                   # pivot tables in results.md
      - {name: per_layer, rows: [method], columns: layer, where: {protocol: linear}}

This module checks the file's form (keys, types, references between axes,
line numbers for every error); whether the gin bindings exist is checked by
`keras_ssl.sweep.checks`, which needs the plugins.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import Any

import yaml

from keras_ssl.sweep.table import ROW_COLUMNS  # The columns a plot or table names besides axes.

TOP_LEVEL_KEYS = ("description", "base_gin", "bindings", "axes", "seeds", "evaluation", "plots",
                  "tables")
# The binding `seeds:` varies, as the last axis, named `seed`.
SEED_BINDING = "keras_ssl.train.seed"
SEED_AXIS = "seed"
AXIS_KEYS = ("binding", "values", "format", "when")
PLOT_KEYS = ("name", "x", "series", "where", "metric", "title", "log_x", "ylabel")
TABLE_KEYS = ("name", "rows", "columns", "where", "metric", "title")
# Keys of a bundle value that are not gin bindings.
BUNDLE_GIN_FILE = "gin_file"
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_BINDING_NAME = re.compile(r"^[A-Za-z_][\w./]*\.[A-Za-z_]\w*$")


class GridError(ValueError):
    """A grid file that cannot be run; the message names the file, the line and the fix."""


@dataclasses.dataclass(frozen=True)
class AxisValue:
    """One value of an axis: its label in tables and the gin it adds to a cell.

    Attributes:
      label: How the value appears in cell names, tables and plots.
      bindings: `(binding, gin literal)` pairs.
      gin_files: Extra gin files (absolute paths), parsed after the base files.
    """

    label: Any
    bindings: tuple[tuple[str, str], ...]
    gin_files: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Axis:
    """A dimension of the grid.

    Attributes:
      name: Column name in tables, plots and cell names.
      values: The `AxisValue`s in file order.
      line: Line of the axis in the grid file (for error messages).
      when: `(axis name, labels)` pairs; the axis only varies in cells whose
        axes have one of those labels, elsewhere it is left out (its column
        is empty).
    """

    name: str
    values: tuple[AxisValue, ...]
    line: int
    when: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: training, two exports, evaluation.

    Attributes:
      name: Directory name, from the axis labels (`method-rotation__width-2`).
      labels: `{axis name: label}` of the axes that apply to this cell.
      gin_files: Base gin files, then the files of bundle values.
      bindings: Fixed bindings, then the axes' bindings (later ones win).
    """

    name: str
    labels: dict
    gin_files: tuple[str, ...]
    bindings: tuple[str, ...]


@dataclasses.dataclass
class Grid:
    """A parsed grid file.

    Attributes:
      path: The grid file.
      base_gin: Absolute paths of the base gin files.
      bindings: Fixed `(binding, gin literal, line)` triples.
      axes: The `Axis` list in file order.
      evaluation: The flat evaluation settings: `dataset`, `protocols` and the
        flag names of `keras_ssl_eval.settings.EvaluationSettings`.
      evaluation_lines: `{key: line}` of `evaluation`.
      plots: Plot specifications (dicts, see `keras_ssl.sweep.plots`), each
        with its `line`.
      tables: Pivot table specifications (dicts, see `keras_ssl.sweep.pivot`),
        each with its `line`.
      description: Free text.
    """

    path: str
    base_gin: list[str]
    bindings: list[tuple[str, str, int]]
    axes: list[Axis]
    evaluation: dict
    evaluation_lines: dict
    plots: list[dict]
    tables: list[dict] = dataclasses.field(default_factory=list)
    description: str = ""

    def cells(self) -> list[Cell]:
        """Every cell of the grid, in axis order (the last axis varies fastest)."""
        assignments = [{}]
        for axis in self.axes:
            expanded = []
            for chosen in assignments:
                applies = all(chosen.get(name) is not None and chosen[name].label in labels
                              for name, labels in axis.when)
                if applies:
                    expanded.extend({**chosen, axis.name: value} for value in axis.values)
                else:
                    expanded.append({**chosen, axis.name: None})
            assignments = expanded
        cells = []
        fixed = [f"{binding} = {literal}" for binding, literal, _ in self.bindings]
        for chosen in assignments:
            values = [(name, value) for name, value in chosen.items() if value is not None]
            gin_files = list(self.base_gin)
            bindings = list(fixed)
            for _, value in values:
                gin_files.extend(value.gin_files)
                bindings.extend(f"{binding} = {literal}" for binding, literal in value.bindings)
            cells.append(Cell(
                name=cell_name({name: value.label for name, value in values}),
                labels={name: value.label for name, value in values},
                gin_files=tuple(gin_files), bindings=tuple(bindings)))
        names = [cell.name for cell in cells]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise GridError(f"{self.path}: two cells would share the directory {duplicates[0]!r}; "
                            f"give the axis values distinct labels.")
        return cells

    def axis_names(self) -> list[str]:
        """The axes' names in file order (the table's axis columns)."""
        return [axis.name for axis in self.axes]


def cell_name(labels: dict) -> str:
    """The directory name of a cell: `axis-label` pairs joined by `__`, filesystem-safe.

    Example:
      >>> cell_name({"method": "rotation", "keras_ssl.train.dataset": "synthetic_shapes/TCV-"})
      'method-rotation__dataset-synthetic_shapes_TCV-'
    """
    if not labels:
        return "single"
    parts = []
    for name, label in labels.items():
        short = name.rsplit(".", 1)[-1]
        parts.append(f"{short}-{label}")
    return re.sub(r"[^\w.+=-]+", "_", "__".join(parts))


def gin_literal(value: Any) -> str:
    """A YAML value as gin text: strings quoted, except `@references` and `%macros`.

    YAML reads `1e30` (no dot) as a string; a string that Python reads as a
    number is bound as that number.

    Example:
      >>> gin_literal("rotation"), gin_literal("1e30"), gin_literal([1, 2]), gin_literal("@relu")
      ("'rotation'", '1e+30', '[1, 2]', '@relu')
    """
    value = number_or_text(value)
    if isinstance(value, str):
        return value if value.startswith(("@", "%")) else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(gin_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{gin_literal(k)}: {gin_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def number_or_text(value: Any) -> Any:
    """A YAML string that Python reads as a number (`1e30`), as that float; else `value`."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


class _LinedDict(dict):
    """A YAML mapping that remembers the line of each key (1-based)."""

    lines: dict


class _LineLoader(yaml.SafeLoader):
    """A safe YAML loader whose mappings are `_LinedDict`s."""


def _construct_lined_mapping(loader, node):
    mapping = _LinedDict()
    mapping.lines = {}
    yield mapping
    mapping.update(loader.construct_mapping(node, deep=True))
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping.lines:
            # YAML would keep the second silently: a repeated axis or binding is a mistake.
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} repeats the one on line {mapping.lines[key]}",
                key_node.start_mark)
        mapping.lines[key] = key_node.start_mark.line + 1


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                            _construct_lined_mapping)


def _line(mapping, key, default=0):
    return getattr(mapping, "lines", {}).get(key, default)


def _unknown_key_message(where: str, key: str, allowed) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(allowed)}."
    return f"{where}: unknown key {key!r}; {hint}"


def _resolve_path(path: str, grid_dir: str, where: str) -> str:
    """A gin file path: as given (relative to the cwd), else relative to the grid file."""
    if not isinstance(path, str):
        raise GridError(f"{where}: a gin file must be a path string, got {path!r}.")
    for candidate in (path, os.path.join(grid_dir, path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise GridError(f"{where}: gin file {path!r} does not exist (looked in {os.getcwd()} and "
                    f"{grid_dir}); fix the path.")


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_grid(path: str) -> Grid:
    """Reads and checks the form of the grid file at `path`.

    Args:
      path: A YAML grid file (see the module docstring and docs/sweep.md).

    Returns:
      The `Grid`.

    Raises:
      GridError: The file is missing, is not YAML, or has an unknown key, a
        malformed axis, binding or plot; the message names the line.
    """
    if not os.path.isfile(path):
        raise GridError(f"Grid file {path!r} does not exist; pass --grid=FILE.")
    with open(path) as f:
        text = f.read()
    try:
        document = yaml.load(text, Loader=_LineLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise GridError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)}).") from None
    if not isinstance(document, dict):
        raise GridError(f"{path}: a grid file is a YAML mapping with the keys "
                        f"{', '.join(TOP_LEVEL_KEYS)}.")
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            raise GridError(_unknown_key_message(f"{path} line {_line(document, key)}", key,
                                                 TOP_LEVEL_KEYS))
    grid_dir = os.path.dirname(os.path.abspath(path))
    where = f"{path} line {_line(document, 'base_gin')}"
    base_gin = [_resolve_path(p, grid_dir, where)
                for p in _as_list(document.get("base_gin") or [])]

    bindings = []
    fixed = document.get("bindings") or {}
    if not isinstance(fixed, dict):
        raise GridError(f"{path} line {_line(document, 'bindings')}: `bindings` maps gin "
                        f"bindings to values (`resnet_v2.depth: 10`).")
    for binding, value in fixed.items():
        line = _line(fixed, binding)
        _check_binding_name(binding, f"{path} line {line}")
        bindings.append((binding, gin_literal(value), line))

    axes_section = document.get("axes") or {}
    if not isinstance(axes_section, dict):
        raise GridError(f"{path} line {_line(document, 'axes')}: `axes` maps axis names to "
                        f"value lists or to {{binding, values}}.")
    axes = []
    for name, spec in axes_section.items():
        axes.append(_parse_axis(path, grid_dir, name, spec, _line(axes_section, name), axes))
    if document.get("seeds") is not None:
        axes.append(_seed_axis(path, document["seeds"], _line(document, "seeds"), axes))

    evaluation = document.get("evaluation") or {}
    if not isinstance(evaluation, dict):
        raise GridError(f"{path} line {_line(document, 'evaluation')}: `evaluation` maps "
                        f"evaluation settings (keras-ssl-eval's flag names) to values.")
    evaluation_lines = {key: _line(evaluation, key) for key in evaluation}
    evaluation = {key: _plain(value) for key, value in evaluation.items()}

    axis_names = [a.name for a in axes]
    plots = [_parse_plot(path, spec, index, axis_names, _line(document, "plots"))
             for index, spec in enumerate(document.get("plots") or [])]
    tables = [_parse_table(path, spec, index, axis_names, _line(document, "tables"))
              for index, spec in enumerate(document.get("tables") or [])]
    return Grid(path=path, base_gin=base_gin, bindings=bindings, axes=axes,
                evaluation=evaluation, evaluation_lines=evaluation_lines, plots=plots,
                tables=tables, description=str(document.get("description") or ""))


def _seed_axis(path, seeds, line, axes) -> Axis:
    """The axis of `seeds: [0, 1, 2]`: `seed`, binding keras_ssl.train.seed, varying last."""
    where = f"{path} line {line}"
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise GridError(f"{where}: `seeds` is a non-empty list of whole numbers, e.g. "
                        f"`seeds: [0, 1, 2]`.")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{where}: `seeds` repeat ({seeds}).")
    if any(axis.name == SEED_AXIS for axis in axes):
        raise GridError(f"{where}: `seeds` adds the axis {SEED_AXIS!r}, which `axes` already "
                        f"has; keep one of the two.")
    return Axis(name=SEED_AXIS, line=line, values=tuple(
        AxisValue(label=seed, bindings=((SEED_BINDING, str(seed)),)) for seed in seeds))


def _plain(value):
    """A YAML value without the line bookkeeping (plain dicts and lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _check_binding_name(binding, where: str) -> None:
    if not isinstance(binding, str) or not _BINDING_NAME.match(binding):
        raise GridError(f"{where}: {binding!r} is not a gin binding; write "
                        f"`<configurable>.<parameter>` (e.g. resnet_v2.widening_factor).")


def _parse_axis(path, grid_dir, name, spec, line, earlier) -> Axis:
    where = f"{path} line {line}, axis {name!r}"
    if not isinstance(spec, dict):
        # Shorthand `<binding>: [values]`.
        if not isinstance(name, str) or "." not in name:
            raise GridError(f"{where}: name a gin binding (`resnet_v2.widening_factor: [1, 2]`) "
                            f"or give `binding:` and `values:`.")
        spec = {"binding": name, "values": spec}
        lines = {}
    else:
        lines = getattr(spec, "lines", {})
    for key in spec:
        if key not in AXIS_KEYS:
            raise GridError(_unknown_key_message(f"{path} line {lines.get(key, line)}, axis "
                                                 f"{name!r}", key, AXIS_KEYS))
    raw_values = spec.get("values")
    if not raw_values or not isinstance(raw_values, (list, dict)):
        raise GridError(f"{where}: `values` must be a non-empty list (or a mapping of labels to "
                        f"bundles of bindings).")
    targets = _as_list(spec.get("binding") or [])
    for binding in targets:
        _check_binding_name(binding, where)
    form = spec.get("format")
    if form is not None and (not isinstance(form, str) or "{}" not in form):
        raise GridError(f"{where}: `format` must be a string with `{{}}` where the value goes, "
                        f"e.g. 'train[:{{}}]'.")
    values = []
    if isinstance(raw_values, dict):
        for label, bundle in raw_values.items():
            bundle_line = _line(raw_values, label, line)
            values.append(_bundle_value(path, grid_dir, name, label, bundle, bundle_line,
                                        targets, form))
    else:
        if not targets:
            raise GridError(f"{where}: a list of values needs `binding:` (the gin binding they "
                            f"set).")
        for value in raw_values:
            if isinstance(value, (dict, list)):
                raise GridError(f"{where}: value {value!r} is not a scalar; bundles of bindings "
                                f"go in a mapping `values: {{label: {{binding: value}}}}`.")
            value = number_or_text(value)
            bound = form.format(value) if form else value
            values.append(AxisValue(label=value, bindings=tuple(
                (binding, gin_literal(bound)) for binding in targets)))
    labels = [v.label for v in values]
    if len(set(map(str, labels))) != len(labels):
        raise GridError(f"{where}: values repeat ({labels}).")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise GridError(f"{where}: `when` maps earlier axis names to one of their values.")
    known = {axis.name: axis for axis in earlier}
    for other, label in when.items():
        if other not in known:
            raise GridError(f"{path} line {_line(when, other, line)}, axis {name!r}: `when` names "
                            f"unknown axis {other!r}; it must be an axis defined above "
                            f"({', '.join(known) or 'none'}).")
        for one in _as_list(label):
            if one not in [v.label for v in known[other].values]:
                raise GridError(f"{path} line {_line(when, other, line)}, axis {name!r}: axis "
                                f"{other!r} has no value {one!r}.")
    return Axis(name=str(name), values=tuple(values), line=line,
                when=tuple((other, tuple(_as_list(label))) for other, label in when.items()))


def _bundle_value(path, grid_dir, axis, label, bundle, line, targets, form) -> AxisValue:
    where = f"{path} line {line}, axis {axis!r} value {label!r}"
    if bundle is None:
        bundle = {}
    if not isinstance(bundle, dict):
        raise GridError(f"{where}: a bundle maps gin bindings (and `gin_file`) to values.")
    gin_files = [_resolve_path(p, grid_dir, where) for p in _as_list(bundle.get(BUNDLE_GIN_FILE)
                                                                     or [])]
    bindings = []
    if targets:
        bound = form.format(label) if form else label
        bindings.extend((binding, gin_literal(bound)) for binding in targets)
    for binding, value in bundle.items():
        if binding == BUNDLE_GIN_FILE:
            continue
        _check_binding_name(binding, f"{path} line {_line(bundle, binding, line)}, axis {axis!r} "
                                     f"value {label!r}")
        bindings.append((binding, gin_literal(value)))
    return AxisValue(label=label, bindings=tuple(bindings), gin_files=tuple(gin_files))


def _spec_start(path, spec, index, kind, keys, section_line) -> tuple[str, int]:
    """`(where, line)` of the index-th plot or table, after checking its keys."""
    line = section_line
    if isinstance(spec, dict):
        line = min(getattr(spec, "lines", {}).values(), default=section_line)
    where = f"{path} line {line}, {kind} {index + 1}"
    if not isinstance(spec, dict):
        required = "`x:`" if kind == "plot" else "`rows:` and `columns:`"
        raise GridError(f"{where}: a {kind} is a mapping with at least {required}.")
    for key in spec:
        if key not in keys:
            raise GridError(_unknown_key_message(where, key, keys))
    return where, line


def _check_columns(where, named, axis_names) -> None:
    """Refuses a `(role, column)` of `named` that is neither an axis nor a table column."""
    columns = list(axis_names) + [c for c in ROW_COLUMNS if c not in ("value",)]
    for role, column in named:
        if column not in columns:
            close = difflib.get_close_matches(str(column), columns, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(columns)}."
            raise GridError(f"{where}: `{role}` names unknown axis {column!r}; {hint}")


def _finish_spec(spec, index, kind, where, line) -> dict:
    """The plain spec with `where`, `name` (checked as a file name) and `line`."""
    plain = _plain(spec)
    plain["where"] = dict(plain.get("where") or {})
    plain["name"] = str(plain.get("name") or f"{kind}{index + 1}")
    if not re.fullmatch(r"[\w.-]+", plain["name"]):
        raise GridError(f"{where}: {kind} name {plain['name']!r} must be a file name "
                        f"(letters, digits, _ . -).")
    plain["line"] = line
    return plain


def _parse_plot(path, spec, index, axis_names, section_line) -> dict:
    where, line = _spec_start(path, spec, index, "plot", PLOT_KEYS, section_line)
    if spec.get("x") is None:
        raise GridError(f"{where}: `x` is required (an axis name or one of {', '.join(ROW_COLUMNS)}).")
    named = [("x", spec.get("x"))] + [("series", s) for s in _as_list(spec.get("series") or [])]
    named += [("where", key) for key in (spec.get("where") or {})]
    _check_columns(where, named, axis_names)
    plot = _finish_spec(spec, index, "plot", where, line)
    plot["series"] = _as_list(plot.get("series") or [])
    return plot


def _parse_table(path, spec, index, axis_names, section_line) -> dict:
    where, line = _spec_start(path, spec, index, "table", TABLE_KEYS, section_line)
    if spec.get("rows") is None or spec.get("columns") is None:
        raise GridError(f"{where}: a table needs `rows:` (a list of columns) and `columns:` "
                        f"(one column, e.g. layer).")
    if isinstance(spec.get("columns"), list):
        raise GridError(f"{where}: `columns` is one column (e.g. `columns: layer`), not a list.")
    named = [("rows", r) for r in _as_list(spec["rows"])] + [("columns", spec["columns"])]
    named += [("where", key) for key in (spec.get("where") or {})]
    _check_columns(where, named, axis_names)
    table = _finish_spec(spec, index, "table", where, line)
    table["rows"] = _as_list(table["rows"])
    return table


__all__ = ["Axis", "AxisValue", "Cell", "Grid", "GridError", "cell_name", "gin_literal",
           "load_grid", "number_or_text"]
