"""Aliases of the per-layer runners, which now live in their protocols' modules.

`run_linear` is `keras_ssl_eval.protocols.linear.run_linear`, `run_grid`
`keras_ssl_eval.protocols.grid.run_grid`, `run_knn`
`keras_ssl_eval.protocols.knn.run_knn` and `run_lowshot`
`keras_ssl_eval.protocols.lowshot.run_lowshot`; kept so that code written
against 0.1.0 keeps working.
"""

from keras_ssl_eval.protocols.grid import run_grid
from keras_ssl_eval.protocols.knn import run_knn
from keras_ssl_eval.protocols.linear import run_linear
from keras_ssl_eval.protocols.lowshot import run_lowshot

__all__ = ["run_linear", "run_grid", "run_knn", "run_lowshot"]
