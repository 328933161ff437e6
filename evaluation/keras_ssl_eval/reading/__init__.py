"""Reading: SavedModels that follow the contract, and the labelled images to feed them.

- `savedmodel`: `load_representation_model`, the end-points of a SavedModel.
- `adapters`: any other model (``.keras``, keras-hub preset, another SavedModel)
  as a contract model (`open_model`, `open_trainable`); `keras_models` loads the
  Keras kinds safely (`load_keras_file`), importing keras only then.
- `data`: `load_images`, the image sources shared with keras-ssl training
  (TFDS names, prepared TFDS datasets, ``folder:/path``); `_tfds_source` reads TFDS.
"""
