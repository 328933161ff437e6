"""View specs (`keras_ssl.augment.view_specs`) keep their former home's import path and gin names.

Drawing views and multi-crop are tested with the methods that use them
(tests/methods/test_noncontrastive.py).
"""

import gin

from keras_ssl.augment import view_specs


def test_the_former_import_path_gives_the_same_objects():
    from keras_ssl import views

    for name in views.__all__:
        assert getattr(views, name) is getattr(view_specs, name)


def test_gin_names_keep_the_former_module():
    from keras_ssl import config

    config.parse_gin(bindings=[
        "keras_ssl.views.multi_crop.num_local_views = 3",
        "keras_ssl.views.multi_crop.local_size = 8",
        "small/keras_ssl.views.ViewSpec.size = 16",
    ])
    specs = gin.get_configurable("keras_ssl.views.multi_crop")()
    assert [spec.size for spec in specs] == [None, None, 8, 8, 8]
    view_spec = gin.get_configurable("keras_ssl.views.ViewSpec")
    with gin.config_scope("small"):
        assert view_spec().size == 16
    assert view_spec().size is None
