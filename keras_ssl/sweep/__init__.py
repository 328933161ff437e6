"""`keras-ssl-sweep`: grids of pretraining runs, each exported and evaluated, with tables and plots.

- `grid`: the YAML grid file, its form checks and its cells;
- `checks`: strict gin parsing of every binding, evaluation settings, the disk estimate;
- `cell`: one cell in its own process (train, export step 0 and the end, evaluate);
- `runner`: resume, parallel cells, failures, progress;
- `table`, `plots`, `report`: the results table and the plots over all cells;
- `aggregate`: runs that differ only by seed as one (mean, std, n, 95% interval), and
  the overlap marks of the pivot tables;
- the binary is `keras_ssl.cli.sweep`.

docs/sweep.md describes the grid format and the outputs.
"""

from keras_ssl.sweep.grid import Grid, GridError, load_grid

__all__ = ["Grid", "GridError", "load_grid"]
