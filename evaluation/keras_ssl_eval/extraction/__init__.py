"""Extraction: end-point activations turned into fixed-size feature vectors, cached on disk.

- `features`: `split_features`, one split's features of several layers in one pass.
- `pooling`: Kolesnikov's adaptive max pooling and VISSL's fixed pools.
- `patches`: the patch grid of patch-based models (Jigsaw, relative patch location).
- `cache`: `FeatureCache`, the on-disk cache several protocols share.
"""
