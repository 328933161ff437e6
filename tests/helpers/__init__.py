"""Helpers shared by the tests (fixtures live in tests/conftest.py).

- `tiny_run`: the tiny synthetic_shapes variant and a seconds-long run's gin bindings
  (the tiny backbone and each method's tiny settings: `keras_ssl.testing`).
- `method_runs`: a method's tiny keras-ssl-train run in process, and the checks every
  such run passes; `classic_methods` and `contrastive_training` wrap it for their families.
- `contrastive_training`: tiny SimCLR/MoCo/NPID methods and a few training steps.
- `runs`: keras-ssl-train as a process: commands, signals, checkpoints.
- `forkserver`: the binaries' entry points as forks of one preloaded process.
- Scripts run as their own processes: `contrastive_replicas.py`,
  `deepcluster_replicas.py`, `batch_norm_replicas.py`, `load_without_keras.py`
  (the registry's replica check: `keras_ssl.testing.replicas`),
  `load_keras_without_keras_ssl.py` (a `.keras` export in a Python without keras_ssl).
- `numpy_losses`: losses written out in numpy, the loss tests' references.
- `blocked_imports`: keeps keras and keras_ssl out of a process (tests/eval).

`tests.helpers`, `tiny_run` and `blocked_imports` import neither TensorFlow nor
keras when imported (tests/conftest.py and tests/eval use them where only
keras-ssl-eval is installed).
"""

import os

# The repository's root and this folder (for the helper scripts).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPERS = os.path.join(REPO, "tests", "helpers")
