"""Reading: SavedModels that follow the contract, and the labelled images to feed them.

- `savedmodel`: `load_representation_model`, the end-points of a SavedModel.
- `data`: `load_images`, the image sources shared with keras-ssl training
  (TFDS names, prepared TFDS datasets, ``folder:/path``); `_tfds_source` reads TFDS.
"""
