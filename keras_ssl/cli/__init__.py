"""keras-ssl's binaries, one module per binary, named after it.

| binary                   | module                          |
|--------------------------|---------------------------------|
| `keras-ssl-train`        | `keras_ssl.cli.train`           |
| `keras-ssl-export`       | `keras_ssl.cli.export`          |
| `keras-ssl-list`         | `keras_ssl.cli.list`            |
| `keras-ssl-prepare-data` | `keras_ssl.cli.prepare_data`    |
| `keras-ssl-show-views`   | `keras_ssl.cli.show_views`      |
| `keras-ssl-sweep`        | `keras_ssl.cli.sweep`           |

`keras-ssl-eval` is `keras_ssl_eval.cli.eval` and `keras-ssl-colorize`
`keras_ssl_methods.cli.colorize`, by the same rule.

Every binary defines its flags at the top of its module as
`_NAME = flags.DEFINE_...(...)` holders and reads them as `_NAME.value`; no
library module defines flags. A binary module is imported only to run that
binary (`python -m keras_ssl.cli.train` works as `keras-ssl-train`): two of
them in one process would define some of the same flags.

Every binary starts quietly (`keras_ssl.cli_errors.run_binary`): it prints
its own lines only, and `--verbosity=0` (or higher) brings TensorFlow's,
absl's and TFDS' logs back.
"""
