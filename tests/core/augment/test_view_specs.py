"""View specs (`keras_ssl.augment.view_specs`) keep their former home's import path and gin names.

Drawing views and multi-crop are tested with the methods that use them
(tests/methods/test_noncontrastive.py); a spec's crop sampler here.
"""

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import random
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


def test_a_view_spec_draws_its_crop_with_its_sampler():
    # Pixel (y, x) holds (y, x, 0.5) scaled to [0, 1]: a crop shows its box.
    ys, xs = np.meshgrid(*[np.linspace(0.0, 1.0, 20, dtype=np.float32)] * 2, indexing="ij")
    image = tf.constant(np.stack([ys, xs, np.full_like(ys, 0.5)], -1))
    plain = dict(jitter=None, grayscale_probability=0.0, flip=False)

    def view(spec, index):
        with random.seeded(random.example_seed(5, index)):
            return view_specs.draw_view(image, spec).numpy()

    tensorflow, torchvision = (view_specs.ViewSpec(crop_sampler=sampler, **plain)
                               for sampler in ("tensorflow", "torchvision"))
    assert any(not np.allclose(view(tensorflow, i), view(torchvision, i)) for i in range(4))
    with pytest.raises(ValueError, match="ViewSpec.crop_sampler='area'"):
        view_specs.ViewSpec(crop_sampler="area")
