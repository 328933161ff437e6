"""The former home of `keras_ssl.augment.view_specs`, kept because plugins import from it.

The docs of keras-ssl 0.1.0 import `ViewSpec`, `multi_crop` and `BYOL_VIEWS`
from here.
"""

from keras_ssl.augment.view_specs import (
    BYOL_JITTER,
    BYOL_VIEWS,
    ViewSpec,
    check_views_fit,
    draw_view,
    draw_views,
    multi_crop,
)

__all__ = ["BYOL_JITTER", "BYOL_VIEWS", "ViewSpec", "check_views_fit", "draw_view", "draw_views",
           "multi_crop"]
