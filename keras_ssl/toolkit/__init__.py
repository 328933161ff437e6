"""The method-author toolkit: the pieces the first-party methods are built from.

A plugin depends on keras-ssl alone and imports them from here, exactly as
`keras_ssl_methods` does (docs/writing_a_method.md shows each signature):

- `bases`: `ContrastiveMethod` (online linear probe, `two_views`) and
  `MultiViewMethod` (views from `keras_ssl.views.ViewSpec`s, `encode_views`).
- `memory_bank`: one unit feature per training example: `add_memory_bank`,
  `bank_rows`, `bank_scores`, `noise_index`, `move_bank_rows`, `unit_rows`.
- `per_example`: `required_num_examples` and `checked_index`, for state with
  one row per training example.
- `queue`: a FIFO ring buffer of earlier steps' rows: `add_queue`, `enqueue`,
  `oldest_first`, and `nearest_neighbour` (NNCLR's positive).
- `patches`: the 3x3 patch grid (`PatchGridMethod`, `cut_grid`, `grid_cell`,
  `random_crop_resized`, `standardize_patches`, `embed_patches`, `PatchHead`,
  `fc_head`, `GRID`).
- `endpoints`: `require_endpoint`, the build-time check of an end-point a
  method reads.
- `masking`: patches and per-image masks for masked-image and predictive
  methods on a ViT (`patchify`, `unpatchify`, `normalized_pixel_target`,
  `patch_statistics`, `random_patch_mask`, `block_mask`, `multi_block_masks`,
  `sincos_position_embedding`, and the checks of their settings).

Every state update here (`move_bank_rows`, `enqueue`) gathers the global batch
across replicas first, so one device and N replicas train alike.
"""

from keras_ssl.toolkit.bases import ContrastiveMethod, MultiViewMethod
from keras_ssl.toolkit.endpoints import require_endpoint
from keras_ssl.toolkit.masking import (
    block_mask, check_block_mask, check_mask_ratio, check_multi_block, multi_block_masks,
    normalized_pixel_target, patch_statistics, patchify, random_patch_mask,
    sincos_position_embedding, unpatchify, visible_count,
)
from keras_ssl.toolkit.memory_bank import (
    add_memory_bank, bank_rows, bank_scores, move_bank_rows, noise_index, unit_rows,
)
from keras_ssl.toolkit.patches import (
    GRID, PatchGridMethod, PatchHead, cut_grid, embed_patches, fc_head, grid_cell,
    random_crop_resized, standardize_patches,
)
from keras_ssl.toolkit.per_example import checked_index, required_num_examples
from keras_ssl.toolkit.queue import add_queue, enqueue, nearest_neighbour, oldest_first

__all__ = [
    "GRID", "ContrastiveMethod", "MultiViewMethod", "PatchGridMethod", "PatchHead",
    "add_memory_bank", "add_queue", "bank_rows", "bank_scores", "block_mask", "check_block_mask",
    "check_mask_ratio", "check_multi_block", "checked_index", "cut_grid", "embed_patches",
    "enqueue", "fc_head", "grid_cell", "move_bank_rows", "multi_block_masks", "nearest_neighbour",
    "noise_index", "normalized_pixel_target", "oldest_first", "patch_statistics", "patchify",
    "random_crop_resized", "random_patch_mask", "require_endpoint", "required_num_examples", "sincos_position_embedding",
    "standardize_patches", "unit_rows", "unpatchify", "visible_count",
]
