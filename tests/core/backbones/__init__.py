"""Tests of keras_ssl.backbones."""
