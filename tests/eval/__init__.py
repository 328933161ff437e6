"""Tests of keras_ssl_eval; they run where only keras-ssl-eval is installed (see conftest.py)."""
