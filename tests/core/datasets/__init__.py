"""Tests of keras_ssl.datasets."""
