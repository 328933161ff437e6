"""The evaluation tests need only keras-ssl-eval: `KERAS_SSL_EVAL_ONLY=1` proves it.

With `KERAS_SSL_EVAL_ONLY=1 pytest tests/eval`, keras, keras_ssl and
keras_ssl_methods cannot be imported in the test process (any import raises
ImportError), as where only keras-ssl-eval is installed. The few tests that
need a dataset or a run of keras_ssl (the `data_dir` and `trained_run`
fixtures of tests/conftest.py) are skipped then. Run tests/eval alone with
it: a whole-suite run imports keras_ssl before this file is read.
"""

import os

import pytest

if os.environ.get("KERAS_SSL_EVAL_ONLY") == "1":
    from tests.helpers.blocked_imports import block_imports

    try:
        block_imports()
    except RuntimeError as error:
        raise pytest.UsageError(
            f"KERAS_SSL_EVAL_ONLY=1 works with tests/eval alone: {error}") from None
