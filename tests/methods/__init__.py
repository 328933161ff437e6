"""Tests of keras_ssl_methods: each method family and the registry-wide method contract."""
