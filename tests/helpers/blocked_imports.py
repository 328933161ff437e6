"""Makes keras, keras_ssl and keras_ssl_methods impossible to import in this process.

The evaluation promises to work where only keras-ssl-eval is installed; the
tests check it by blocking the other packages: tests/eval/conftest.py (with
`KERAS_SSL_EVAL_ONLY=1`) and the helper scripts that load a SavedModel
without keras (`load_without_keras.py`). Plain standard library, so a script
can import it before TensorFlow.
"""

import importlib.abc
import importlib.machinery
import sys

BLOCKED = ("keras", "keras_ssl", "keras_ssl_methods", "tf_keras")


class _Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the blocked packages (TensorFlow looks them up) but fails to import them."""

    def __init__(self, names):
        self.names = tuple(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ImportError(f"{spec.name} cannot be imported in this process")

    def exec_module(self, module):
        raise ImportError(f"{module.__name__} cannot be imported in this process")


def block_imports(names=BLOCKED):
    """From now on, importing any of `names` (or their submodules) raises ImportError.

    Args:
      names: Top-level package names.

    Raises:
      RuntimeError: One of them was imported already (too late to block it).
    """
    imported = sorted(n for n, module in sys.modules.items()
                      if n.split(".")[0] in names and module is not None)  # None: blocked
    if imported:
        raise RuntimeError(f"already imported, cannot be blocked: {', '.join(imported[:5])}")
    sys.meta_path.insert(0, _Block(names))
