"""First-party keras-ssl methods.

Each method is registered in the `keras_ssl.methods` entry-point group by
this distribution's `setup.cfg`, exactly as a third-party plugin would be;
nothing in `keras_ssl` imports this package.
"""

__version__ = "0.1.0"
