"""Plugin registries built on `importlib.metadata` entry points.

A registry holds one kind of plugin (methods, backbones, datasets,
augmentation stacks). Each entry comes from an entry point of an installed
distribution -- first-party or third-party alike -- or from an in-process
`register` call. Entry points are imported lazily and one at a time, so a
plugin that fails to import is reported as broken without affecting the
others.

Example:

>>> from keras_ssl import registry
>>> registry.METHODS.names()          # doctest: +SKIP
['rotation']
>>> Rotation = registry.METHODS.get("rotation")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
from typing import Any, Callable

import gin


class PluginError(Exception):
    """Base class of the registry's errors."""


class UnknownPluginError(PluginError, KeyError):
    """No plugin of that kind is registered under the requested name."""

    def __str__(self):  # KeyError would quote the message.
        return str(self.args[0])


class BrokenPluginError(PluginError, ImportError):
    """The plugin is registered but could not be imported."""


class DuplicatePluginError(PluginError):
    """Two distributions register the same name for the same kind."""


@dataclasses.dataclass
class PluginEntry:
    """One registered plugin and where it came from.

    Attributes:
      name: The name users select it by.
      target: `module:attribute` of the entry point, or the object's
        qualified name for in-process registrations.
      distribution: Name of the installed distribution that declares it
        (`"<in-process>"` for `Registry.register`).
      version: That distribution's version.
      obj: The loaded object, once loaded successfully.
      error: The exception raised while loading, if it failed.
    """

    name: str
    target: str
    distribution: str
    version: str
    obj: Any = None
    error: BaseException | None = None
    _entry_point: importlib.metadata.EntryPoint | None = None

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version} ({self.target})"


class Registry:
    """Name -> plugin mapping for one entry-point group.

    Args:
      group: The entry-point group, e.g. `"keras_ssl.methods"`.
      kind: A human name for the plugins, used in messages ("method").
      gin_module: If set, every loaded plugin is registered with gin under
        its name in this module, so configs can bind its parameters as
        `<name>.<param> = ...`.
    """

    def __init__(self, group: str, kind: str, gin_module: str | None = None,
                 renamed: dict[str, str] | None = None):
        """A registry of the plugins of one entry-point `group`.

        Args:
          group: The entry-point group plugins declare themselves in.
          kind: What a plugin is, in messages (`"method"`).
          gin_module: gin module the plugins are registered under.
          renamed: Former names, each mapped to its plugin's present name: asking
            for one names the present one.
        """
        self.group = group
        self.kind = kind
        self._gin_module = gin_module
        self.renamed = dict(renamed or {})
        self._entries: dict[str, list[PluginEntry]] | None = None
        self._gin_wrapped: dict[str, Any] = {}

    @property
    def gin_module(self) -> str | None:
        """The gin module the plugins are registered under, if any."""
        return self._gin_module

    # ----------------------------------------------------------- discovery
    def _discover(self) -> dict[str, list[PluginEntry]]:
        if self._entries is None:
            entries: dict[str, list[PluginEntry]] = {}
            for ep in importlib.metadata.entry_points(group=self.group):
                dist = getattr(ep, "dist", None)
                entry = PluginEntry(
                    name=ep.name,
                    target=ep.value,
                    distribution=dist.metadata["Name"] if dist else "<unknown>",
                    version=dist.version if dist else "?",
                    _entry_point=ep,
                )
                same = entries.setdefault(ep.name, [])
                # One distribution can be visible twice on sys.path (an
                # editable install plus a build dir); that is not a clash.
                if not any(e.distribution == entry.distribution for e in same):
                    same.append(entry)
            self._entries = entries
        return self._entries

    def reload(self) -> None:
        """Forgets what was discovered, so newly installed plugins show up."""
        in_process = {
            name: entries
            for name, entries in (self._entries or {}).items()
            if entries[0]._entry_point is None
        }
        self._entries = None
        self._discover().update(in_process)

    def register(self, name: str, obj: Any = None):
        """Registers `obj` under `name` in this process (also a decorator).

        Entry points are the way to publish a plugin; this is for notebooks,
        tests and experiments that should not need an installed package.

        Args:
          name: The plugin's name.
          obj: The plugin; when omitted, returns a decorator.

        Returns:
          `obj` (or the decorator).

        Raises:
          DuplicatePluginError: If `name` is already taken.
        """
        if obj is None:
            return lambda o: self.register(name, o)
        entries = self._discover()
        if name in entries:
            raise DuplicatePluginError(
                f"{self.kind} {name!r} is already registered by "
                f"{entries[name][0].origin}; choose another name."
            )
        target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', obj)}"
        entries[name] = [
            PluginEntry(name, target, "<in-process>", "", obj=obj)
        ]
        return obj

    def unregister(self, name: str) -> None:
        """Removes an in-process registration (no effect on entry points)."""
        self._discover().pop(name, None)
        self._gin_wrapped.pop(name, None)

    # --------------------------------------------------------------- access
    def names(self) -> list[str]:
        """Names of the plugins that load, sorted (broken ones excluded)."""
        return sorted(e.name for e in self.entries() if e.error is None)

    def __contains__(self, name: str) -> bool:
        return name in self._discover()

    def entries(self) -> list[PluginEntry]:
        """Every registered entry, loading each; broken ones carry `error`.

        A name claimed by several distributions yields one entry per
        distribution, each with a `DuplicatePluginError`.
        """
        result = []
        for name in sorted(self._discover()):
            candidates = self._discover()[name]
            if len(candidates) > 1:
                error = self._duplicate_error(name, candidates)
                for entry in candidates:
                    entry.error = error
                result.extend(candidates)
            else:
                result.append(self._load(candidates[0]))
        return result

    def get(self, name: str) -> Any:
        """Returns the plugin registered as `name`.

        When the registry has a gin module, the returned object is the
        gin-configurable wrapper, so bindings such as
        `rotation.head_dropout = 0.1` apply to it.

        Raises:
          UnknownPluginError: No such name; the message lists those known.
          BrokenPluginError: The plugin failed to import; chained to the
            original exception.
          DuplicatePluginError: Several distributions claim the name.
        """
        entries = self._discover()
        if name not in entries:
            known = sorted(entries)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            if name in self.renamed:
                hint = f" The {self.kind} {name!r} is now called {self.renamed[name]!r}."
            raise UnknownPluginError(
                f"Unknown {self.kind} {name!r}.{hint} Available: "
                f"{', '.join(known) or '(none installed)'}. A {self.kind} is "
                f"added by installing a package that declares it in the "
                f"{self.group!r} entry-point group."
            )
        candidates = entries[name]
        if len(candidates) > 1:
            raise self._duplicate_error(name, candidates)
        entry = self._load(candidates[0])
        if entry.error is not None:
            raise BrokenPluginError(
                f"The {self.kind} {name!r} from {entry.origin} failed to "
                f"import: {type(entry.error).__name__}: {entry.error}. Fix or "
                f"reinstall that distribution, or pick another {self.kind}."
            ) from entry.error
        return self._gin_wrapped.get(name, entry.obj)

    def plugin_for_gin_selector(self, selector: str) -> PluginEntry | None:
        """The loaded entry that gin registered as `selector`, if it is one of ours.

        Args:
          selector: A full gin selector such as `"keras_ssl.methods.moco"`.

        Returns:
          The entry (its `obj` loaded), or None when `selector` is not in this
          registry's gin module or names no loaded plugin.
        """
        if self._gin_module is None or not selector.startswith(self._gin_module + "."):
            return None
        candidates = self._discover().get(selector[len(self._gin_module) + 1:])
        if not candidates or len(candidates) > 1:
            return None
        entry = self._load(candidates[0])
        return entry if entry.error is None else None

    def register_all_with_gin(self) -> None:
        """Loads every plugin so gin knows their names before parsing."""
        for entry in self.entries():
            if entry.error is None and entry.name not in self._gin_wrapped:
                self._wrap_for_gin(entry)

    # ------------------------------------------------------------- internals
    def _load(self, entry: PluginEntry) -> PluginEntry:
        if entry.obj is None and entry.error is None:
            try:
                entry.obj = entry._entry_point.load()
            except Exception as e:  # A plugin may raise anything on import.
                entry.error = e
        if entry.error is None and entry.name not in self._gin_wrapped:
            self._wrap_for_gin(entry)
        return entry

    def _wrap_for_gin(self, entry: PluginEntry) -> None:
        if self._gin_module is None:
            return
        selector = f"{self._gin_module}.{entry.name}"
        try:
            # `gin.configurable` as a decorator breaks keras.Model subclasses;
            # `external_configurable` registers without modifying the class.
            wrapped = gin.external_configurable(
                entry.obj, name=entry.name, module=self._gin_module
            )
        except ValueError:
            # Registered earlier in this process (e.g. after `reload`).
            wrapped = _gin_registered(selector) or entry.obj
        self._gin_wrapped[entry.name] = wrapped

    def _duplicate_error(self, name, candidates) -> DuplicatePluginError:
        origins = " and ".join(e.origin for e in candidates)
        return DuplicatePluginError(
            f"The {self.kind} name {name!r} is registered by more than one "
            f"distribution: {origins}. Uninstall one of them."
        )


def accepted_parameters(obj: Callable) -> frozenset[str] | None:
    """The keyword arguments `obj` (a class or a function) really accepts.

    A plugin constructor's `**kwargs` usually travel up the class hierarchy
    (to `keras_ssl.Method`, then `keras.Model`), so the walk follows the MRO's
    `__init__` signatures while each one takes `**kwargs`; at Keras' own
    classes it adds the keywords of `keras.layers.Layer` (`name`, `dtype`,
    `trainable`, ...), which is where Keras stops accepting unknown ones.

    Args:
      obj: The plugin: a class (its constructor is inspected) or a function.

    Returns:
      The accepted names, or None when `obj` takes arbitrary keywords that
      cannot be traced (a function with `**kwargs`).
    """
    if not inspect.isclass(obj):
        names, takes_any = _keyword_parameters(obj)
        return None if takes_any else frozenset(names)
    accepted: set[str] = set()
    for cls in obj.__mro__:
        if cls is object:
            break
        if "__init__" not in vars(cls):
            continue
        names, takes_any = _keyword_parameters(cls.__init__)
        accepted |= names
        if cls.__module__.split(".")[0] == "keras":
            # Keras' own classes: between keras.Model (`*args, **kwargs`) and
            # keras.layers.Layer sit trainers taking nothing; Layer has the keywords.
            import keras

            accepted |= _keyword_parameters(keras.layers.Layer.__init__)[0]
            break
        if not takes_any:
            break
    return frozenset(accepted)


def _keyword_parameters(function: Callable) -> tuple[set[str], bool]:
    """`(names that can be passed by keyword, whether **kwargs is taken too)`."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # A builtin without a signature: cannot tell.
        return set(), True
    names = {
        p.name for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    }
    return names, any(p.kind == p.VAR_KEYWORD for p in parameters)


def _gin_registered(selector: str) -> Callable | None:
    try:
        from gin import config as gin_config

        return gin_config._REGISTRY.get_match(selector).wrapped
    except Exception:
        return None


METHODS = Registry("keras_ssl.methods", "method", gin_module="keras_ssl.methods")
BACKBONES = Registry(
    "keras_ssl.backbones", "backbone", gin_module="keras_ssl.backbones"
)
DATASETS = Registry("keras_ssl.datasets", "dataset")
AUGMENTATIONS = Registry(
    "keras_ssl.augmentations", "augmentation stack",
    gin_module="keras_ssl.augmentations",
    # `simclr` names the method alone, so gin takes `simclr.temperature`.
    renamed={"simclr": "simclr_imagenet"},
)
ALL = (METHODS, BACKBONES, DATASETS, AUGMENTATIONS)


def register_all_with_gin() -> None:
    """Makes every installed plugin's parameters bindable from gin."""
    for reg in ALL:
        reg.register_all_with_gin()
