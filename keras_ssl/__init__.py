"""keras-ssl: self-supervised visual representation learning on Keras 3.

The public surface:
- `Method`: base class of self-supervised methods (plugins subclass it).
- `registry`: the plugin registries (methods, backbones, datasets,
  augmentation stacks) built on entry points.
- `keras_ssl.backbones`, `keras_ssl.datasets`, `keras_ssl.training`,
  `keras_ssl.export`.
"""

# First, so its quieting of TensorFlow's start-up logs for the binaries applies here too.
import keras_ssl_eval  # noqa: E402, F401  pylint: disable=unused-import

__version__ = "0.1.0"

from keras_ssl import registry  # noqa: E402
from keras_ssl.method import Method  # noqa: E402

__all__ = ["Method", "registry", "__version__"]
