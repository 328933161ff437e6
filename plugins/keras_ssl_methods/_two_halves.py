"""A backbone split in two halves by input channels: L and ab of CIE Lab (private).

CMC (Tian et al. 2019) and Split-Brain (Zhang et al. 2017) train two networks,
one on the lightness L and one on the colour channels ab of an image, and
represent the image by both together. `lab_halves_backbone` builds that as ONE
backbone, so training, checkpoints and the export treat it like any other:

- its input is the normalised Lab image `lab_input(rgb)`: `[L / 100, a / 110,
  b / 110]` (L in [0, 1], a and b about [-1, 1]); the export builds that
  transform in, so clients still feed [0, 1] RGB;
- each half is a fresh copy of the bound backbone (same family, depth and
  widening factor, its own weights) whose first layer takes 1 (L) or 2 (ab)
  channels;
- its end-points are every end-point of the bound backbone as the channel
  concatenation of the two halves (`pre_logits` is `[B, 2 D]`; the
  representation the papers evaluate), followed by each half's own,
  prefixed: `l_block3`, `ab_pre_logits`, ...

Each half has the bound backbone's width, so the whole network is twice as
wide; to compare with a single network of the same total width, bind half the
widening factor (the papers' halves are half-width networks).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_ssl import Method
from keras_ssl.backbones import backbone_spec, make_backbone
from keras_ssl_methods import _lab

#: (prefix, input channels of the normalised Lab image) of each half, in order.
HALVES = (("l", slice(0, 1)), ("ab", slice(1, 3)))
_LAB_SCALE = (100.0, 110.0, 110.0)
# A colour image has some pixel at least this far from gray in ab (Lab units);
# quantisation noise of a gray image stays far below it.
_MIN_CHROMA = 1.0


def lab_input(rgb: tf.Tensor) -> tf.Tensor:
    """[0, 1] RGB `[..., 3]` -> the normalised Lab image the two halves read."""
    return normalized_lab(_lab.rgb_to_lab(rgb))


def normalized_lab(lab: tf.Tensor) -> tf.Tensor:
    """CIE Lab `[..., 3]` (`_lab.rgb_to_lab`) -> the normalised Lab image the two halves read."""
    return lab / tf.constant(_LAB_SCALE, tf.float32)


def lab_halves_backbone(template: keras.Model) -> keras.Model:
    """The L and ab halves of `template`'s architecture as one backbone.

    Args:
      template: A backbone (`keras_ssl.backbones`); only its architecture is
        used, its weights are not.

    Returns:
      A backbone taking the 3-channel `lab_input` image and returning the
      concatenated and the per-half end-points (see the module docstring).
    """
    spatial = tuple(template.input.shape[1:-1])
    inputs = keras.Input(spatial + (3,), name="lab_images")
    half_outputs = {}
    for prefix, channels in HALVES:
        width = channels.stop - channels.start
        half = keras.models.clone_model(template, input_tensors=keras.Input(spatial + (width,)))
        half.name = f"{prefix}_{template.name}"
        half_outputs[prefix] = half(inputs[..., channels])
    endpoints = {
        name: keras.layers.Concatenate(name=f"{name}_l_ab")(
            [half_outputs[prefix][name] for prefix, _ in HALVES])
        for name in template.endpoint_names
    }
    for prefix, _ in HALVES:
        endpoints.update({f"{prefix}_{name}": half_outputs[prefix][name]
                          for name in template.endpoint_names})
    spec = backbone_spec(template) | {"halves": "L | ab of CIE Lab, one copy each"}
    return make_backbone(inputs, endpoints, name=f"l_ab_{template.name}", spec=spec)


def check_rgb(images: tf.Tensor, method: str) -> None:
    """Refuses images (one, or a batch) without 3 channels before the Lab conversion fails obscurely."""
    if images.shape.rank is not None and images.shape[-1] != 3:
        raise ValueError(
            f"{method}: needs RGB images, [H, W, 3]; got shape {images.shape}. Its two halves "
            f"read L and ab of CIE Lab, which a single-channel image does not have: train it "
            f"on colour data."
        )


def check_colour_data(examples: tf.data.Dataset, method: str, num_images: int = 256) -> None:
    """Refuses a dataset whose first `num_images` images are all gray (R = G = B).

    On such data the ab half sees only zeros and the L half has nothing to
    predict or contrast with.

    Args:
      examples: Decoded examples (`{"image": [H, W, 3] in [0, 1], ...}`).
      method: The method's name, for the message.
      num_images: How many images to look at.

    Raises:
      ValueError: Every image looked at is gray.
    """
    largest, seen = 0.0, 0
    for batch in examples.take(num_images).batch(64):
        check_rgb(batch["image"], method)
        chroma = tf.reduce_max(tf.abs(_lab.rgb_to_lab(batch["image"])[..., 1:]))
        largest, seen = max(largest, float(chroma)), seen + int(batch["image"].shape[0])
    if seen and largest < _MIN_CHROMA:
        raise ValueError(
            f"{method}: the first {seen} training images are grayscale (largest |a|, |b| = "
            f"{largest:.2g} in Lab), so its ab half would see only zeros. It needs colour "
            f"images: use a colour dataset, or a method that trains on gray images "
            f"(e.g. rotation)."
        )



class LabHalvesMethod(Method):
    """Base of the methods whose backbone is `lab_halves_backbone` of the bound one.

    The two halves read `lab_input(images)` (built into the export) and the
    data are checked to be in colour before training (`adapt`), or before a
    hand-built pipeline (`make_dataset`).

    Args:
      backbone: The bound backbone, whose architecture each half copies.
      **kwargs: Passed to the next base (`keras_ssl.Method`, or
        `ContrastiveMethod` for `num_classes`).
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(lab_halves_backbone(backbone), **kwargs)
        self._colour_checked = False

    def _name(self) -> str:
        return getattr(self, "registry_name", type(self).__name__)

    def halves(self, images, training, lab=None) -> dict:
        """Every end-point of both halves (see `lab_halves_backbone`) for RGB `images`.

        `lab`: `_lab.rgb_to_lab(images)`, when the caller needs it too (computed once).
        """
        check_rgb(images, self._name())
        lab = _lab.rgb_to_lab(images) if lab is None else lab
        return self.backbone(normalized_lab(lab), training=training)

    def call(self, images, training=False):
        """Every end-point for RGB `images`, as the export computes them."""
        return self.halves(images, training)

    def export_input_transform(self, images):
        """RGB -> the normalised Lab image (built into the export)."""
        return lab_input(images)

    def export_metadata(self):
        return {"lab_halves": {
            "input_transform": "CIE Lab (D65) as [L / 100, a / 110, b / 110]",
            "halves": {prefix: f"channels {c.start}..{c.stop - 1}, end-points {prefix}_*"
                       for prefix, c in HALVES},
            "concatenated": "the unprefixed end-points: [l_*, ab_*] along the channels",
        }}

    def adapt(self, examples):
        """Refuses grayscale-only training data."""
        check_colour_data(examples, self._name())
        self._colour_checked = True

    def make_dataset(self, images, batch_size):
        if not self._colour_checked:
            self.adapt(images)
        return super().make_dataset(images, batch_size)
