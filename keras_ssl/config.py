"""Parsing gin configs with errors that say what to fix."""

from __future__ import annotations

import ast
import contextlib
import difflib
import logging
import os
import re
from typing import Sequence

import gin

from keras_ssl import registry


class ConfigError(ValueError):
    """A gin file or binding could not be applied."""


def _configurables() -> list[str]:
    """Shortest unambiguous names of keras-ssl's configurables."""
    from gin import config as gin_config

    known = gin_config._REGISTRY  # pylint: disable=protected-access
    return sorted(
        known.minimal_selector(selector)
        for selector, _ in known.items()
        if selector.startswith("keras_ssl")
    )


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = (), *, reset: bool = True,
              skip_unknown: Sequence[str] = ()) -> None:
    """Registers every installed plugin with gin, then parses `files` and `bindings`.

    The framework's own configurables are registered by importing the module
    that declares each (`FRAMEWORK_CONFIGURABLES`): `keras_ssl.train` by
    `keras_ssl.training`, for example, which the training binary imports. This
    module imports none of them, so nothing above it imports back into it.

    Args:
      files: Paths of `.gin` files, applied in order.
      bindings: Extra bindings such as `"resnet_v2.depth = 18"`, applied last.
      reset: Clear previously parsed bindings first.
      skip_unknown: Configurables whose bindings are skipped while nothing
        has registered them (`keras_ssl.building.restore_method` skips the
        training loop's); any other unknown configurable is refused.

    A file may `include 'gin_configs/backbones/resnet_v2.gin'` (the shared
    backbone and optimizer files, docs/training.md): such a path is looked up
    under the folder holding the `gin_configs` folder above each of `files`,
    then under the current directory, then in the keras-ssl checkout this
    package runs from -- so includes work whatever the current directory, also
    from a config outside the repository.

    Raises:
      ConfigError: A file or an included file is missing, or a binding names an unknown
        configurable or parameter, or does not parse. The message names the
        binding; for an unknown parameter it is one line with the closest
        valid names. Parameters of methods, backbones and augmentation stacks
        are checked against what the plugin really accepts, also when its
        constructor takes `**kwargs` (see `registry.accepted_parameters`), so
        a misspelling never reaches training.
    """
    registry.register_all_with_gin()
    if reset:
        gin.clear_config()
    for path in files:
        if not os.path.exists(path):
            raise ConfigError(f"gin file {path!r} does not exist (cwd: {os.getcwd()}).")
    try:
        # Not finalized: plugins loaded later (e.g. Model Garden's RandAugment,
        # which registers configurables on import) must still register.
        with _include_search_paths(files):
            gin.parse_config_files_and_bindings(
                [os.path.abspath(path) for path in files], list(bindings), finalize_config=False,
                skip_unknown=list(skip_unknown) or False)
    except OSError as e:  # gin's IOError: an `include` it could not find.
        raise ConfigError(_missing_include_message(e)) from e
    except (ValueError, KeyError, SyntaxError, TypeError) as e:
        unknown = _GIN_UNKNOWN_PARAMETER.search(str(e))
        if unknown:
            raise ConfigError(_unknown_parameter_message(*unknown.groups(), _gin_location(e))) from e
        renamed = _renamed_hint(str(e), end="\n") + _unimported_hint(str(e))
        raise ConfigError(
            f"Bad gin configuration: {e}\n{renamed}Configurables that exist: "
            f"{', '.join(_configurables())}.\nBind parameters as "
            f"`<configurable>.<parameter> = <value>`; `keras-ssl-list` shows the "
            f"installed methods, backbones and augmentation stacks."
        ) from e
    _check_plugin_bindings()


_CONFIGS_FOLDER = "gin_configs"

# `{configurable: the module whose import registers it}` for keras-ssl's own
# configurables (the plugins' register through `registry.register_all_with_gin`,
# and with them `keras_ssl.views`, which the multi-view methods import).
FRAMEWORK_CONFIGURABLES = {
    "keras_ssl.build_method": "keras_ssl.building",
    "keras_ssl.train": "keras_ssl.training",
    "keras_ssl.build_optimizer": "keras_ssl.optimizers",
    "keras_ssl.learning_rate_schedule": "keras_ssl.optimizers",
    "keras_ssl.knn_monitor": "keras_ssl.monitor",
}


def _unimported_hint(gin_error: str) -> str:
    """How to register keras-ssl's own configurables, if gin names one it does not know."""
    for name in FRAMEWORK_CONFIGURABLES:
        short = name.rsplit(".", 1)[-1]
        if re.search(rf"No configurable matching '(keras_ssl\.)?{re.escape(short)}'", gin_error):
            return (f"{name} is registered by importing {FRAMEWORK_CONFIGURABLES[name]}; "
                    f"`import keras_ssl.training` before parsing registers all of "
                    f"{', '.join(FRAMEWORK_CONFIGURABLES)}.\n")
    return ""


@contextlib.contextmanager
def _include_search_paths(files: Sequence[str]):
    """Lets gin find `include 'gin_configs/...'` whatever the current directory.

    gin looks an include up under each of its search paths in turn (the
    current directory only, by default), not next to the including file. For
    the parse, the search paths become: the folder holding `gin_configs` above
    each of `files` (so a config of one checkout includes that checkout's
    shared files, even when run from another), the current directory, then
    the checkout of this package. gin's list is restored afterwards.
    """
    from gin import config as gin_config

    paths = []
    for path in files:
        folder = os.path.dirname(os.path.abspath(path))
        while not os.path.isdir(os.path.join(folder, _CONFIGS_FOLDER)):
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        else:
            paths.append(folder)
    paths.append("")  # gin's default: the current directory
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(checkout, _CONFIGS_FOLDER)):
        paths.append(checkout)
    prefixes = gin_config._LOCATION_PREFIXES  # pylint: disable=protected-access
    readers = gin_config._FILE_READERS  # pylint: disable=protected-access
    saved_prefixes, saved_readers = list(prefixes), list(readers)
    prefixes[:] = list(dict.fromkeys(paths + saved_prefixes))
    # gin's reader of files inside Python packages fails with a TypeError,
    # instead of answering "not here", on a path under a folder Python sees as
    # a namespace package -- `gin_configs/...` when the checkout is on sys.path;
    # and where it answers "not here" it logs an error-level "Path not found".
    readers[:] = [(reader, _quiet_probe(exists)) for reader, exists in saved_readers]
    try:
        yield
    finally:
        prefixes[:] = saved_prefixes
        readers[:] = saved_readers


def _quiet_probe(exists):
    """`exists`, answering False where it raises, without gin's "Path not found" log.

    gin asks every reader about an include under every search path in turn
    and takes the first that has it. Its reader of files inside Python
    packages logs `Path not found` at error level each time it answers no,
    also when the next search path then has the file. Those lines are
    dropped; an include found nowhere is still refused
    (`_missing_include_message`).
    """

    def checked(path):
        root = logging.getLogger()
        root.addFilter(_drop_gin_not_found)
        try:
            return exists(path)
        except Exception:  # pylint: disable=broad-except
            return False
        finally:
            root.removeFilter(_drop_gin_not_found)

    return checked


def _drop_gin_not_found(record: logging.LogRecord) -> bool:
    """False (drop) for gin's resource reader's "Path not found" record."""
    return not (os.path.basename(record.pathname) == "resource_reader.py"
                and str(record.msg).startswith("Path not found"))


# gin's refusal of an `include` it cannot open.
_GIN_MISSING_INCLUDE = re.compile(r"Unable to open file: (.*)\. Searched config paths: (.*)\.$", re.MULTILINE)


def _missing_include_message(error: OSError) -> str:
    """One line: the include that is missing, the file that includes it, where it was looked for."""
    missing = _GIN_MISSING_INCLUDE.search(str(error))
    if not missing:
        return f"Could not read a gin file: {error}"
    include, searched = missing.groups()
    where = _gin_location(error) or "a gin file"
    try:
        folders = [folder or "the current directory" for folder in ast.literal_eval(searched)]
    except (ValueError, SyntaxError):
        folders = [searched]
    return (f"gin include {include!r} ({where}) does not exist: looked under "
            f"{', '.join(folders)}. Include paths start at the folder holding "
            f"`{_CONFIGS_FOLDER}`, e.g. include '{_CONFIGS_FOLDER}/backbones/resnet_v2.gin'.")


# gin's own refusal of a parameter missing from a signature without **kwargs.
_GIN_UNKNOWN_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")


def _check_plugin_bindings() -> None:
    """Refuses bindings to parameters a plugin does not accept, before anything runs.

    gin accepts any parameter of a callable taking `**kwargs` -- every method
    constructor -- so a misspelled `moco.queue_sizee` would only fail when the
    method is built, after the dataset was prepared.
    """
    from gin import config as gin_config

    for (scope, selector), parameters in gin_config._CONFIG.items():  # pylint: disable=protected-access
        for plugins in registry.ALL:
            entry = plugins.plugin_for_gin_selector(selector)
            if entry is None:
                continue
            accepted = registry.accepted_parameters(entry.obj)
            for parameter in sorted(parameters):
                if accepted is not None and parameter not in accepted:
                    configurable = f"{scope}/{entry.name}" if scope else entry.name
                    raise ConfigError(_unknown_parameter_message(
                        configurable, parameter, what=f"the {plugins.kind} {entry.name!r}",
                        accepted=accepted) + _former_name_hint(entry.name, parameter, plugins))


def _former_name_hint(name: str, parameter: str, reached) -> str:
    """Names the plugin `name` used to be, when `name.parameter` was meant for it.

    A binding such as `simclr.blur_probability` reaches the method `simclr` now
    that the stack of that name is `simclr_imagenet`; if the renamed plugin takes
    the parameter, say so.
    """
    for plugins in registry.ALL:
        if plugins is reached or name not in plugins.renamed:
            continue
        new = plugins.renamed[name]
        try:
            accepted = registry.accepted_parameters(plugins.get(new))
        except registry.PluginError:
            continue
        if accepted is None or parameter in accepted:
            return (f" The {plugins.kind} {name!r} is now called {new!r}: bind "
                    f"`{new}.{parameter}`.")
    return ""


def _renamed_hint(gin_error: str, end="") -> str:
    """A line naming the present name of a renamed plugin gin found no configurable for.

    Args:
      gin_error: gin's message (`No configurable matching 'augmentations.simclr'`).
      end: Put after the hint, when there is one.
    """
    missing = re.search(r"No configurable matching '([\w.]+)'", gin_error)
    if not missing:
        return ""
    *module, name = missing.group(1).split(".")
    for plugins in registry.ALL:
        if name not in plugins.renamed:
            continue
        if module and not (plugins.gin_module or "").endswith(".".join(module)):
            continue
        new = plugins.renamed[name]
        return (f"The {plugins.kind} {name!r} is now called {new!r}: bind "
                f"`{new}.<parameter>`.{end}")
    return ""


def _unknown_parameter_message(configurable, parameter, location="", *, what=None, accepted=None) -> str:
    """One line: the binding, what it binds and the closest valid parameter names.

    Args:
      configurable: The configurable as bound (`moco`, `scope/moco`).
      parameter: The parameter that does not exist.
      location: Where gin found the binding, if known.
      what: How to name the configurable (default: quoted `configurable`).
      accepted: Its valid parameters (default: looked up in gin's registry).
    """
    if accepted is None:
        accepted = _gin_parameters(configurable)
    close = difflib.get_close_matches(parameter, sorted(accepted), n=3)
    if close:
        hint = "did you mean " + " or ".join(repr(name) for name in close) + "?"
    else:
        hint = "its parameters: " + (", ".join(sorted(accepted)) or "none") + "."
    where = f" ({location})" if location else ""
    return (f"Bad gin binding '{configurable}.{parameter}'{where}: "
            f"{what or repr(configurable)} has no parameter {parameter!r}; {hint}")


def _gin_parameters(configurable: str) -> frozenset[str]:
    """Parameters gin lets one bind on `configurable` (its allow/deny lists applied)."""
    from gin import config as gin_config

    try:
        match = gin_config._REGISTRY.get_match(configurable.split("/")[-1])  # pylint: disable=protected-access
    except Exception:  # Unknown or ambiguous: no names to offer.
        return frozenset()
    accepted = registry.accepted_parameters(match.wrapped) or frozenset()
    if match.allowlist:
        accepted &= set(match.allowlist)
    return accepted - set(match.denylist or ())


def _gin_location(error: Exception) -> str:
    """gin's "In file ..., line N" / "In bindings string line N" note, on one line."""
    for line in str(error).splitlines()[1:]:
        if line.strip().startswith("In "):
            return line.strip()[3:]
    return ""


# Parameters keras-ssl's training passes itself: a binding of one never acts,
# and this says which setting to bind instead.
_SET_BY_THE_CALLER = {
    ("keras_ssl.learning_rate_schedule", "global_batch_size"): "keras_ssl.train.batch_size",
    ("keras_ssl.learning_rate_schedule", "total_steps"): "keras_ssl.train.train_steps",
    ("keras_ssl.build_optimizer", "learning_rate"): "keras_ssl.learning_rate_schedule",
}

# Configurables a training run consults only after `refuse_unused_bindings`
# (after the run directory exists). None: everything `keras_ssl.train` uses
# -- the method, backbone, augmentation stack, views, schedule, optimizer and
# kNN monitor -- is called before it, and the export, the sweep and
# keras-ssl-eval read no gin binding (the export rebuilds the method from the
# run's own config.gin, with the same configurables). A configurable that a
# later stage must consult goes here, with the reason.
CONSULTED_AFTER_THE_CHECK: frozenset[str] = frozenset()


def _scope_within(scope: str, active: str) -> bool:
    """Whether a binding in `scope` applies to a call made in scope `active`."""
    return not scope or active == scope or active.startswith(scope + "/")


def _replaced(scope: str, active: str, selector: str, parameter: str, bound) -> bool:
    """Whether a binding more specific than `scope` gives `parameter` to the call in `active`."""
    return any(len(other) > len(scope) and _scope_within(other, active) and parameter in values
               for (other, bound_selector), values in bound.items() if bound_selector == selector)


def _binding_name(scope: str, selector: str, parameter: str) -> str:
    from gin import config as gin_config

    try:
        name = gin_config._REGISTRY.minimal_selector(selector)  # pylint: disable=protected-access
    except Exception:  # a macro, or a selector gin no longer resolves
        name = selector
    if selector == "gin.macro":
        return scope  # a macro `NAME = value` is bound as scope NAME of gin.macro
    return f"{scope}/{name}.{parameter}" if scope else f"{name}.{parameter}"


def _never_called(selector: str, method=None) -> str:
    """Why a configurable this run never called is not used."""
    for plugins in registry.ALL:
        entry = plugins.plugin_for_gin_selector(selector)
        if entry is None:
            continue
        if plugins is registry.METHODS:
            used = _query("keras_ssl.build_method.method")
        elif plugins is registry.BACKBONES:
            used = _query("keras_ssl.build_method.backbone", "resnet_v2")
        elif plugins is registry.AUGMENTATIONS and method is not None:
            used = getattr(method, "augmentation_name", None)
        else:
            used = None
        this = f"this run's is {used!r}" if used else "this run uses another"
        return f"the {plugins.kind} {entry.name!r} is not used ({this})"
    if selector == "gin.macro":
        return "no binding refers to this macro"
    return "nothing in this run calls it"


def _query(selector: str, default=None):
    try:
        return gin.query_parameter(selector)
    except ValueError:
        return default


def unused_bindings(method=None) -> list[str]:
    """Bound gin parameters nothing in this process used, each with why.

    Compares the bindings parsed (gin's config) with the values the called
    configurables took (gin's operative config). A binding is used when a call
    of its configurable in its scope (or a scope below it) took it, and a
    more specific scoped binding did not replace it. Unused: a configurable
    the run never calls (another method's, backbone's or augmentation
    stack's, `ViewSpec` bound where the method builds its own views), a scope
    no reference enters, a parameter the caller passes itself
    (`learning_rate_schedule.total_steps` comes from `keras_ssl.train`), a
    macro nothing refers to.

    Args:
      method: The run's built method, to name its augmentation stack.

    Returns:
      One `"binding: why"` string per unused binding, sorted.
    """
    from gin import config as gin_config

    bound = dict(gin_config._CONFIG)  # pylint: disable=protected-access
    operative = dict(gin_config._OPERATIVE_CONFIG)  # pylint: disable=protected-access
    unused = []
    for (scope, selector), parameters in bound.items():
        if selector in CONSULTED_AFTER_THE_CHECK:
            continue
        calls = {active: taken for (active, called), taken in operative.items() if called == selector}
        for parameter in parameters:
            within = [active for active in calls if _scope_within(scope, active)]
            if any(parameter in calls[active] and not _replaced(scope, active, selector, parameter, bound)
                   for active in within):
                continue
            if not calls:
                why = _never_called(selector, method)
            elif not within:
                why = (f"scope {scope!r} is never entered (it is called in scope "
                       f"{', '.join(repr(active) for active in sorted(calls))})")
            elif any(parameter in calls[active] for active in within):
                why = "a more specific scoped binding replaces it in every call"
            else:
                instead = _SET_BY_THE_CALLER.get((selector, parameter))
                why = "keras-ssl passes this parameter itself" + (
                    f" (bind {instead} instead)" if instead else "")
            unused.append(f"{_binding_name(scope, selector, parameter)}: {why}")
    return sorted(unused)


def refuse_unused_bindings(method=None) -> None:
    """Refuses the run when a bound gin parameter went unused (`unused_bindings`).

    `keras_ssl.train` calls it once the method, data and optimizer are built,
    before the run directory exists, so no binding is silently ignored.

    Raises:
      ConfigError: One line listing the unused bindings and why.
    """
    unused = unused_bindings(method)
    if unused:
        raise ConfigError(
            f"{len(unused)} gin binding{'s' if len(unused) > 1 else ''} would have no effect on "
            f"this run: {'; '.join(unused)}. Remove {'them' if len(unused) > 1 else 'it'} "
            f"(or bind what the run uses).")
