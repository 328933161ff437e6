"""Tests of keras_ssl.sweep."""
