"""Tests of keras_ssl.augment."""
