"""The contact sheet of `keras-ssl-show-views` (`keras_ssl.augment.contact_sheet`)."""

import os

import numpy as np
import pytest

from keras_ssl.augment.contact_sheet import contact_sheet, draw_stack_views
from keras_ssl.registry import AUGMENTATIONS


def test_a_stacks_views_are_seeded_and_laid_out_one_row_per_image():
    rng = np.random.RandomState(0)
    images = rng.uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    views = draw_stack_views(images, AUGMENTATIONS.get("flip"), num_views=3, seed=1)
    assert views.shape == (2, 3, 8, 8, 3)
    for source, row in zip(images, views):
        for view in row:
            assert np.array_equal(view, source) or np.array_equal(view, source[:, ::-1])
    np.testing.assert_array_equal(
        draw_stack_views(images, AUGMENTATIONS.get("flip"), num_views=3, seed=1), views)

    sheet = contact_sheet(images, views, cell=16, gap=4)
    assert sheet.shape == (2 * 16 + 3 * 4, 4 * 16 + 5 * 4 + 4, 3) and sheet.dtype == np.uint8
    assert (sheet[4:20, 4] == (200, 30, 30)).all()  # the source is framed
    # Row 1, view 2: after the source column, its extra gap and view 1; nearest-neighbour x2.
    y, x = 4 + 20, 4 + 2 * 20 + 4
    expected = np.uint8(views[1, 1] * 255 + 0.5).repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(sheet[y:y + 16, x:x + 16], expected)


@pytest.mark.slow
def test_show_views_writes_a_contact_sheet(data_dir, tmp_path):
    from PIL import Image

    from tests.helpers.forkserver import run_binary
    from tests.helpers.tiny_run import tiny_shapes_name

    output = tmp_path / "views.png"
    result = run_binary(
        "keras-ssl-show-views",
        # randaugment: Model Garden is imported after the gin config is locked.
        "--stack=randaugment", f"--dataset={tiny_shapes_name()}", f"--data_dir={data_dir}",
        "--num_images=3", "--num_views=2", "--cell=32", f"--output={output}",
        timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sheet = np.asarray(Image.open(output))
    assert sheet.shape == (3 * 32 + 4 * 4, 3 * 32 + 5 * 4, 3)
    assert "3 images x 2 views" in result.stdout
    assert (sheet[4:36, 4] == (200, 30, 30)).all()  # the source is framed
