"""Tests of keras_ssl.cli."""
