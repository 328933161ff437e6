"""The binary of keras-ssl-eval: `keras-ssl-eval` (`keras_ssl_eval.cli.eval`).

A binary lives in `<package>.cli.<name>` in all three distributions, with its
flags as `_NAME = flags.DEFINE_...(...)` holders at the top of its module;
no library module defines flags. The one exception is keras-ssl-eval's settings
flags: its `define_setting_flags` makes one per field of the registered
protocols' settings, so a protocol added later gets its flags too. Importing this package defines none either:
`keras_ssl_eval.cli.run` imports the binary's module only when called.
"""


def run():
    """Console-script entry point of `keras-ssl-eval` (`keras_ssl_eval.cli.eval.run`)."""
    from keras_ssl_eval.cli import eval as eval_binary

    eval_binary.run()
