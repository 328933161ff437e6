"""keras-ssl's tests: `core` (keras_ssl), `methods` (keras_ssl_methods), `eval` (keras_ssl_eval).

A package, so that test modules of the same name in different folders
(`core/cli/test_cli.py`, `eval/test_cli.py`) do not clash; shared helpers live in
`tests.helpers`, shared fixtures in `tests/conftest.py`.
"""
