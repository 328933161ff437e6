"""Protocols: the registry of evaluation protocols, one module per protocol, and `evaluate`.

- `base`: `Protocol`, `register`, `get_protocol`, `registered`: the registry
  that `evaluate`, the report, the plots, the binary's flags and keras_ssl's
  sweep table iterate over.
- `linear`, `grid`, `knn`, `lowshot`, `utility`: one protocol each, with its
  runner, result rows, markdown table and plots (its settings dataclass is in
  `keras_ssl_eval.settings`, below the probes that share its defaults).
- `evaluate`: `evaluate`, every requested protocol on every layer of every model.
- `per_layer`: aliases of the per-layer runners of 0.1.0.
"""
