"""`keras-ssl-show-views`: a contact sheet of an augmentation stack's or a method's views.

Row i shows source image i (left, framed) and `--num_views` independent
views of it drawn by the stack, as the training input pipeline would draw
them (per image, inside `tf.data`). Look at it before training: crops too
small, colours gone, blur on tiny images all show at once.

With `--method`, a row shows the views that method's `preprocess` draws from
the image, in order and at their relative sizes: BYOL's asymmetric pair, or
the global and the smaller local views of multi-crop (DINO, SwAV).

    keras-ssl-show-views --stack=simclr_imagenet --dataset=synthetic_shapes --output=views.png
    keras-ssl-show-views --method=dino --gin_file=gin_configs/dino/synthetic_shapes.gin \\
        --dataset=synthetic_shapes/TCV- --image_size=32 --output=dino_views.png

The drawing and the sheet are `keras_ssl.augment.contact_sheet`.
"""

from __future__ import annotations

from absl import flags

from keras_ssl.cli_errors import run_binary

_STACK = flags.DEFINE_string("stack", "simclr_imagenet", "Registered augmentation stack.")
_METHOD = flags.DEFINE_string("method", None, "Show this registered method's views instead of a "
                              "stack's (configured by --gin_file/--gin_bindings).")
_DATASET = flags.DEFINE_string("dataset", "synthetic_shapes",
                               "Dataset name (see keras_ssl.datasets).")
_SPLIT = flags.DEFINE_string("split", "train", "Split.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None,
                                   "Resize images to this square size (None keeps them).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 6, "Rows: source images.")
_NUM_VIEWS = flags.DEFINE_integer("num_views", 6, "Columns: views per image.")
_CELL = flags.DEFINE_integer("cell", 96, "Pixel size of one cell of the sheet.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "gin files (stack parameters).")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [],
                                          "gin bindings, e.g. \"simclr_imagenet.blur_probability = 0\".")
_OUTPUT = flags.DEFINE_string("output", "views.png", "PNG to write.")


def main(argv):
    """Draws the views and writes the sheet to `--output` (absl main).

    Args:
      argv: Positional arguments left by absl (none are used).
    """
    del argv
    import numpy as np
    from PIL import Image

    # A method's config also binds keras_ssl.train, which the training module registers.
    import keras_ssl.training  # noqa: F401
    from keras_ssl import config, registry
    from keras_ssl.augment.contact_sheet import contact_sheet, draw_method_views, draw_stack_views
    from keras_ssl.datasets import load_dataset

    config.parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value)
    dataset, _ = load_dataset(
        _DATASET.value, _SPLIT.value, data_dir=_DATA_DIR.value, image_size=_IMAGE_SIZE.value
    )
    images = np.stack([e["image"].numpy() for e in dataset.take(_NUM_IMAGES.value)])
    if _METHOD.value:
        from keras_ssl.building import build_method

        method = build_method(method=_METHOD.value)
        method.check_training_setup(1 << 30, images.shape[1])
        views = draw_method_views(images, method, _SEED.value)
        sizes = " ".join(f"{v.shape[0]}" for v in views[0])
        what = f"{len(views[0])} views of method {_METHOD.value!r} (sizes {sizes} px)"
    else:
        views = draw_stack_views(images, registry.AUGMENTATIONS.get(_STACK.value), _NUM_VIEWS.value,
                                 _SEED.value)
        what = f"{_NUM_VIEWS.value} views of stack {_STACK.value!r}"
    Image.fromarray(contact_sheet(images, views, _CELL.value)).save(_OUTPUT.value)
    print(
        f"wrote {_OUTPUT.value}: {len(images)} images x {what} "
        f"({images.shape[1]}x{images.shape[2]} px; source framed in red)"
    )


def run():
    """Console-script entry point of `keras-ssl-show-views`."""
    run_binary("keras-ssl-show-views", main)


if __name__ == "__main__":
    run()
