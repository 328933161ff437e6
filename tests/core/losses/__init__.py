"""Tests of keras_ssl.losses."""
