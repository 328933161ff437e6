"""The binaries of keras-ssl-methods: `keras-ssl-colorize` (`keras_ssl_methods.cli.colorize`).

A binary lives in `<package>.cli.<name>` in all three distributions (see
`keras_ssl.cli`), one here too, so every binary is found the same way and a
second one here has its place. Flags are `_NAME = flags.DEFINE_...(...)`
holders at the top of the binary's module.
"""
