"""`KERAS_SSL_EVAL_ONLY=1` (tests/eval/conftest.py) really keeps keras and keras_ssl out."""

import importlib
import os
import sys

import pytest

from tests.helpers.blocked_imports import BLOCKED


@pytest.mark.skipif(os.environ.get("KERAS_SSL_EVAL_ONLY") != "1",
                    reason="checks the KERAS_SSL_EVAL_ONLY=1 run of tests/eval")
def test_keras_and_keras_ssl_cannot_be_imported():
    for name in BLOCKED:
        assert sys.modules.get(name) is None  # Never imported (None: blocked by sys.modules too).
        with pytest.raises(ImportError):
            importlib.import_module(name)
    import keras_ssl_eval  # noqa: F401  # What the evaluation tests use still imports.
