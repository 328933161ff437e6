"""Tests of keras_ssl: augmentation, backbones, data, training, export, binaries, sweeps."""
