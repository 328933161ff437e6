"""`synthetic_shapes`: procedurally rendered 2-D shapes with switchable nuisance factors.

Each image shows one of twelve shapes (most with a canonical "up", so rotation prediction has
signal). Four nuisance factors can be switched on or off independently, after the synthetic
datasets of Newell & Deng, "How Useful is Self-Supervised Pretraining for Visual Tasks?"
(CVPR 2020):

* T, texture: shape and background filled with random stripes, checkers or smooth noise
  (off: flat fills).
* C, colour: random hues for shape and background, one light and one dark so the shape
  stays visible (off: a light grey shape on a mid-grey background).
* V, viewpoint: in-plane rotation in [-45, 45] degrees, scale 0.55-0.95 of the canvas and a
  translation that keeps the shape in frame (off: upright, centred, scale 0.75).
* L, lighting: a linear illumination gradient lit from within 60 degrees of "above", with
  random strength and ambient level, multiplied into the image (off: uniform).

A factor string lists them in the order T, C, V, L, with the letter for "on" and "-" for
"off": "TCVL" (all on), "-C-L", "----" (all off).

Every example is rendered from `np.random.default_rng([seed, split_id, index])` and draws
the same random numbers whatever the factors, so two configs that differ in one factor show
the same shapes with the same values of every other nuisance.

Example:
    >>> import tensorflow_datasets as tfds
    >>> cfg = synthetic_shapes_config("TC--", image_size=32, train_size=96, test_size=24)
    >>> builder = tfds.builder("synthetic_shapes", config=cfg, data_dir="/tmp/tfds")
    >>> builder.download_and_prepare()
    >>> ds = builder.as_dataset(split="train", as_supervised=True)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from keras_ssl.datasets.shapes_render import (  # noqa: F401  (public API re-exported)
    CLASS_NAMES,
    FACTOR_LETTERS,
    FACTOR_STRINGS,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    SPLIT_IDS,
    Factors,
    _check_image_size,
    example_label,
    example_rng,
    parse_factors,
    render_example,
    render_split,
)


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
    """BuilderConfig for `synthetic_shapes`.

    Attributes:
      factors: factor string, see `parse_factors`.
      image_size: side of the square images, in [16, 256].
      train_size: number of training examples.
      test_size: number of test examples.
      seed: dataset seed; examples depend only on (seed, split, index).
    """

    factors: str = "TCVL"
    image_size: int = 32
    train_size: int = 10000
    test_size: int = 2000
    seed: int = 0

    def __post_init__(self):
        parse_factors(self.factors)
        _check_image_size(self.image_size)
        for field in ("train_size", "test_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)!r}.")


def _describe(factors, image_size, train_size, test_size, seed):
    on = parse_factors(factors)
    names = [n for n, flag in zip(("texture", "colour", "viewpoint", "lighting"), on) if flag]
    return (
        f"{image_size}px, nuisance factors on: {', '.join(names) or 'none'}; "
        f"{train_size} train / {test_size} test examples, seed {seed}."
    )


def synthetic_shapes_config(factors="TCVL", image_size=32, train_size=10000, test_size=2000, seed=0):
    """Returns a `SyntheticShapesConfig` with a name derived from all its fields.

    Args:
      factors: factor string such as "TCVL" or "-C-L", see `parse_factors`.
      image_size: side of the square images, in [16, 256].
      train_size: number of training examples.
      test_size: number of test examples.
      seed: dataset seed.

    Returns:
      A config named like "TCVL_32px_n512x128_s0", so differently sized or seeded versions
      are prepared into different directories.

    Example:
      >>> synthetic_shapes_config("-C-L", 16, 48, 24).name
      '-C-L_16px_n48x24_s0'
    """
    parse_factors(factors)
    _check_image_size(image_size)
    return SyntheticShapesConfig(
        name=f"{factors}_{image_size}px_n{train_size}x{test_size}_s{seed}",
        description=_describe(factors, image_size, train_size, test_size, seed),
        factors=factors,
        image_size=image_size,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
    )


def _standard_configs():
    configs = []
    for size, suffix in ((32, ""), (64, "_64")):
        for factors in FACTOR_STRINGS:
            configs.append(
                SyntheticShapesConfig(
                    name=factors + suffix,
                    factors=factors,
                    image_size=size,
                    description=_describe(factors, size, 10000, 2000, 0),
                )
            )
    return configs


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic shapes with switchable texture, colour, viewpoint and lighting.

    Twelve shape classes rendered procedurally (no download); the nuisance factors follow
    Newell & Deng, "How Useful is Self-Supervised Pretraining for Visual Tasks?", CVPR 2020.
    Configs "TCVL" ... "----" (32 px) and "TCVL_64" ... "----_64" (64 px) hold 10,000 train
    and 2,000 test examples; `synthetic_shapes_config` makes other sizes and seeds.

    Example:
      >>> ds = tfds.load("synthetic_shapes/-C-L", split="test", data_dir="/tmp/tfds")
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _standard_configs()
    DEFAULT_CONFIG_NAME = "TCVL"

    def _info(self):
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=(
                "Procedurally rendered shapes (" + ", ".join(CLASS_NAMES) + ") with four "
                "switchable nuisance factors after Newell & Deng, 'How Useful is Self-Supervised "
                "Pretraining for Visual Tasks?' (CVPR 2020): T texture (stripes, checkers or "
                "smooth noise instead of flat fills), C colour (random hues for shape and "
                "background instead of grey), V viewpoint (rotation in [-45, 45] degrees, scale "
                "and translation instead of an upright centred shape), L lighting (a gradient "
                "lit from above with random strength and ambient level instead of uniform "
                "light). Labels: class, pose (rotation in degrees) and a segmentation mask "
                "(0 background, class + 1 on the shape)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3)),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    "pose": tfds.features.Scalar(
                        np.float32, doc="In-plane rotation, degrees counter-clockwise."
                    ),
                    "segmentation_mask": tfds.features.Image(shape=(size, size, 1), use_colormap=True),
                    "index": tfds.features.Scalar(np.int64, doc="Index within the split."),
                }
            ),
            supervised_keys=("image", "label"),
            citation="""@inproceedings{newell2020useful,
  title={How Useful is Self-Supervised Pretraining for Visual Tasks?},
  author={Newell, Alejandro and Deng, Jia},
  booktitle={CVPR},
  year={2020}
}""",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is rendered; nothing to download.
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.train_size),
            "test": self._generate_examples("test", cfg.test_size),
        }

    def _generate_examples(self, split, num_examples):
        cfg = self.builder_config
        factors = parse_factors(cfg.factors)
        for index in range(num_examples):
            label = example_label(index)
            image, pose, mask = render_example(
                example_rng(cfg.seed, split, index), label, factors, cfg.image_size
            )
            yield (
                index,
                {
                    "image": image,
                    "label": label,
                    "pose": np.float32(pose),
                    "segmentation_mask": mask,
                    "index": index,
                },
            )
