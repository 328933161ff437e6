"""Patch-based models: cutting images into a grid of patches (Kolesnikov et al.).

Methods such as relative patch location and jigsaw see patches, not whole
images. Their SavedModels record ``"input_form": "patches"`` with a
``"patch_grid"`` ``[rows, cols]`` and a ``"patch_size"`` ``[h, w]`` in
``assets/keras_ssl.json``. For evaluation the image (at the metadata
``input_size``) is cut into the grid of non-overlapping cells, each cell is
resized to ``patch_size``, every patch goes through the model, and the
end-points are averaged over the patches of an image.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

__all__ = ["PatchSpec", "patch_spec_from_metadata", "cut_patches"]


@dataclasses.dataclass(frozen=True)
class PatchSpec:
    """How a patch-based model sees an image.

    Attributes:
        grid: ``(rows, cols)`` of non-overlapping cells.
        patch_size: ``(h, w)`` every cell is resized to.
    """

    grid: tuple[int, int]
    patch_size: tuple[int, int]

    @property
    def num_patches(self) -> int:
        """Patches per image."""
        return self.grid[0] * self.grid[1]


def _pair(value, key):
    if isinstance(value, (int, float)):
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) >= 2:
        return (int(value[0]), int(value[1]))
    raise ValueError(f"Metadata {key!r} must be [h, w], got {value!r}.")


def patch_spec_from_metadata(metadata: dict) -> PatchSpec | None:
    """Returns the `PatchSpec` of a patch model's metadata, None for image models.

    Args:
        metadata: Contents of ``assets/keras_ssl.json``.

    Returns:
        A `PatchSpec` when ``input_form`` is ``"patches"``, else None.

    Raises:
        ValueError: ``input_form`` is ``"patches"`` but the grid or size is missing.
    """
    if metadata.get("input_form") != "patches":
        return None
    missing = [k for k in ("patch_grid", "patch_size") if k not in metadata]
    if missing:
        raise ValueError(f"Metadata says input_form 'patches' but lacks {missing}; a patch "
                         f"model records patch_grid [rows, cols] and patch_size [h, w].")
    return PatchSpec(_pair(metadata["patch_grid"], "patch_grid"),
                     _pair(metadata["patch_size"], "patch_size"))


def cut_patches(images, spec: PatchSpec) -> tf.Tensor:
    """Cuts ``[B, H, W, 3]`` images into ``[B * rows * cols, h, w, 3]`` patches.

    Cell (i, j) covers rows ``i * H // rows`` to ``(i + 1) * H // rows`` (the same
    for columns); patches of one image are consecutive, row-major.

    Args:
        images: Float images ``[B, H, W, 3]``.
        spec: The grid and patch size.

    Returns:
        The patches, each resized to ``spec.patch_size``.

    Example:
        >>> cut_patches(tf.zeros([2, 96, 96, 3]), PatchSpec((3, 3), (32, 32))).shape
        TensorShape([18, 32, 32, 3])
    """
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = int(images.shape[1]), int(images.shape[2])
    rows, cols = spec.grid
    if rows > height or cols > width:
        raise ValueError(f"A {rows}x{cols} patch grid does not fit {height}x{width} images.")
    cells = []
    for i in range(rows):
        for j in range(cols):
            cell = images[:, i * height // rows:(i + 1) * height // rows,
                          j * width // cols:(j + 1) * width // cols]
            if tuple(cell.shape[1:3]) != spec.patch_size:
                cell = tf.clip_by_value(
                    tf.image.resize(cell, spec.patch_size, antialias=True), 0.0, 1.0)
            cells.append(cell)
    return tf.reshape(tf.stack(cells, axis=1), [-1, *spec.patch_size, images.shape[-1]])
