"""Build-time checks of the backbone end-points a method reads.

Every backbone returns `pre_logits` (`[B, D]`); which intermediate end-points
it has (`block3`, `fc6`, ...) depends on its family. A method that reads one
other than `pre_logits` checks it in `__init__` with `require_endpoint`, so a
backbone without it stops the build with one line listing the ones it has,
not a `KeyError` in the first step.
"""

from __future__ import annotations

import keras


def require_endpoint(backbone: keras.Model, name: str, setting: str,
                     spatial: bool | None = None) -> str:
    """`name`, checked to be an end-point of `backbone` of the expected rank.

    Args:
      backbone: The backbone (a `keras_ssl.backbones` model; its `output` is
        the dict of end-points).
      name: The end-point the method reads.
      setting: The binding that chose it, for the message (`amdim.local_endpoint_5x5`).
      spatial: True: it must be a `[B, H, W, C]` map. False: a `[B, D]`
        vector or a map. None: any rank.

    Returns:
      `name`.

    Raises:
      ValueError: The backbone has no such end-point, or it is not a map
        where a map is needed.

    Example:

    >>> require_endpoint(net, "block3", "colorization.endpoint", spatial=True)  # doctest: +SKIP
    'block3'
    """
    outputs = backbone.output
    if name not in outputs:
        raise ValueError(
            f"{setting}: the backbone has no end-point {name!r}; choose one of "
            f"{', '.join(outputs)}.")
    rank = len(outputs[name].shape)
    if spatial and rank != 4:
        maps = ", ".join(n for n, t in outputs.items() if len(t.shape) == 4)
        raise ValueError(
            f"{setting}: end-point {name!r} is not a spatial feature map (shape "
            f"{outputs[name].shape}); it needs [batch, height, width, channels]: choose one "
            f"of {maps}.")
    if spatial is False and rank not in (2, 4):
        raise ValueError(
            f"{setting}: end-point {name!r} has shape {outputs[name].shape}; it must be "
            f"[batch, D] or a [batch, height, width, channels] map.")
    return name
