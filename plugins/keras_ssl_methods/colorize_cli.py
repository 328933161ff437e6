"""The old import path of `colorize_files` and `list_images`: `keras_ssl_methods.colorize`.

The binary `keras-ssl-colorize` is `keras_ssl_methods.cli.colorize`.
"""

from keras_ssl_methods.colorize import colorize_files, list_images

__all__ = ["colorize_files", "list_images"]
