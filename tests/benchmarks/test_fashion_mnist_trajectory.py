"""The step-for-step check against LightlySSL (benchmarks/fashion_mnist_parity/trajectory.py):
every weight of the parity recipe pairs with one PyTorch tensor, in PyTorch's layout."""

import json

import numpy as np
import pytest

from benchmarks.fashion_mnist_parity import trajectory
from keras_ssl import config

# lightly_simclr.py's PreActResNet18 and SimCLRProjectionHead: tensors per module.
_TORCH_TENSORS = 1 + 8 * (2 * 4 + 2) + 3 + 4 + (1 + 4 + 1 + 4)


def _recipe_method():
    import keras_ssl.training  # noqa: F401  (registers keras_ssl.train)
    from keras_ssl.building import build_method

    config.parse_gin([trajectory._RECIPE])
    return build_method()


def _to_torch(variable):
    """A keras weight in PyTorch's layout, written out by rank (independent of `_links`)."""
    value = np.asarray(variable.numpy(), np.float64)
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value.T if value.ndim == 2 else value


@pytest.fixture
def method():
    model = _recipe_method()
    yield model
    config.parse_gin()


def test_every_weight_of_the_recipe_pairs_with_one_pytorch_tensor(method):
    links = trajectory._links(method)
    names = [name for _, name, _ in links]
    assert len(links) == len(method.weights) == _TORCH_TENSORS
    assert len(set(names)) == len(names)
    for variable, name, layout in links:
        torch_shaped = _to_torch(variable)
        np.testing.assert_array_equal(layout(torch_shaped), variable.numpy())
        if name.endswith("conv1.weight") and "net.3." in name:  # 16 -> 32 channels, 3x3
            assert torch_shaped.shape == (32, 16, 3, 3)
    assert "head.layers.4.running_var" in names  # LightlySSL's head ends in a batch norm


def test_keras_ssl_against_its_own_steps_shows_no_difference(method, tmp_path):
    """A file whose steps are keras-ssl's own, written in PyTorch's layout: zero difference.

    Catches a wrong layout (a transposed kernel), a weight paired with the wrong
    tensor, or a run that does not start from the file's weights.
    """
    rng = np.random.default_rng(0)
    steps, batch = 2, 8
    views = {v: rng.uniform(size=(steps, batch, 32, 32, 3)).astype(np.float32)
             for v in ("view_1", "view_2")}
    info = json.dumps(dict(steps=steps, batch_size=batch, seed=0, learning_rate=0.0))
    start = {n: rng.normal(0, 0.1, _to_torch(v).shape) for v, n, lay in
             trajectory._links(method)}
    start.update({n: rng.uniform(0.5, 1.5, v.shape) for n, v in start.items()
                  if n.endswith("running_var")})
    first = tmp_path / "start_only.npz"
    np.savez(first, info=info, losses=np.zeros(steps), **views,
             **{f"start/{n}": v for n, v in start.items()},
             **{f"end/{n}": v for n, v in start.items()})
    links, losses = trajectory.train_from(np.load(first), trajectory._RECIPE, [])
    own = tmp_path / "own_steps.npz"
    np.savez(own, info=info, losses=np.array(losses), **views,
             **{f"start/{n}": v for n, v in start.items()},
             **{f"end/{n}": _to_torch(v) for v, n, lay in links})

    result = trajectory.run(str(own), trajectory._RECIPE, [])
    assert result["keras_ssl_losses"] == pytest.approx(losses, rel=1e-12)
    moved = [t for t in result["tensors"].values() if t["lightly_update"] > 0]
    assert len(moved) > 0.9 * len(result["tensors"])  # the steps moved nearly every tensor
    assert max(t["difference"] for t in result["tensors"].values()) < 1e-9
