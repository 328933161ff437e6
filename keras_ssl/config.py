"""Parsing gin configs with errors that say what to fix."""

from __future__ import annotations

import os
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


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = (), *, reset: bool = True) -> None:
    """Registers every installed plugin with gin, then parses `files` and `bindings`.

    Args:
      files: Paths of `.gin` files, applied in order.
      bindings: Extra bindings such as `"resnet_v2.depth = 18"`, applied last.
      reset: Clear previously parsed bindings first.

    Raises:
      ConfigError: A file is missing, or a binding names an unknown
        configurable or parameter, or does not parse. The message names the
        binding and lists the configurables that exist.
    """
    registry.register_all_with_gin()
    # Importing registers the framework's own configurables.
    from keras_ssl import optimizers, training  # noqa: F401  pylint: disable=unused-import

    if reset:
        gin.clear_config()
    for path in files:
        if not os.path.exists(path):
            raise ConfigError(f"gin file {path!r} does not exist (cwd: {os.getcwd()}).")
    try:
        # Not finalized: plugins loaded later (e.g. Model Garden's RandAugment,
        # which registers configurables on import) must still register.
        gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)
    except (ValueError, KeyError, SyntaxError, TypeError) as e:
        raise ConfigError(
            f"Bad gin configuration: {e}\nConfigurables that exist: "
            f"{', '.join(_configurables())}.\nBind parameters as "
            f"`<configurable>.<parameter> = <value>`; `keras-ssl-list` shows the "
            f"installed methods, backbones and augmentation stacks."
        ) from e
