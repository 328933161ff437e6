"""The entry-point registries: discovery, broken and duplicate plugins, errors."""

import importlib
import sys
import textwrap

import pytest

from keras_ssl import registry
from keras_ssl.cli.list import format_registry


def _install_fake_distribution(site, dist_name, entry_points: dict, modules: dict):
    """Writes a minimal installed distribution (dist-info + modules) into `site`.

    This is what pip leaves on disk; importlib.metadata reads nothing else.
    """
    info = site / f"{dist_name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.2.3\n")
    lines = []
    for group, items in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in items.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    for module in ("good_plugin", "broken_plugin", "other_good"):
        sys.modules.pop(module, None)


def _fresh(group="keras_ssl.methods"):
    return registry.Registry(group, "method")


def test_first_party_rotation_is_registered_by_entry_point():
    entries = {e.name: e for e in registry.METHODS.entries()}
    assert entries["rotation"].distribution == "keras-ssl-methods"
    assert entries["rotation"].error is None
    assert "resnet_v2" in registry.BACKBONES.names()
    assert "synthetic_shapes" in registry.DATASETS.names()
    assert {"none", "flip", "crop_flip"} <= set(registry.AUGMENTATIONS.names())


def test_unknown_name_lists_available_and_suggests():
    with pytest.raises(registry.UnknownPluginError) as info:
        registry.METHODS.get("rotaton")
    message = str(info.value)
    assert "Unknown method 'rotaton'" in message
    assert "Did you mean 'rotation'" in message
    assert "rotation" in message.split("Available:")[1]


def test_broken_plugin_is_reported_without_breaking_others(fake_site):
    _install_fake_distribution(
        fake_site,
        "ssl-broken-plugin",
        {"keras_ssl.methods": {"broken": "broken_plugin:Broken", "good": "good_plugin:Good"}},
        {
            "broken_plugin": "import this_module_does_not_exist\n",
            "good_plugin": "class Good:\n    pass\n",
        },
    )
    reg = _fresh()
    entries = {e.name: e for e in reg.entries()}
    assert entries["good"].error is None
    assert isinstance(entries["broken"].error, ModuleNotFoundError)
    assert entries["broken"].distribution == "ssl-broken-plugin"
    assert entries["broken"].version == "1.2.3"
    assert "broken" not in reg.names() and "good" in reg.names()
    assert reg.get("good").__name__ == "Good"
    with pytest.raises(registry.BrokenPluginError) as info:
        reg.get("broken")
    assert "ssl-broken-plugin 1.2.3" in str(info.value)
    assert "this_module_does_not_exist" in str(info.value)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    listing = "\n".join(format_registry(reg))
    assert "BROKEN" in listing and "ssl-broken-plugin 1.2.3" in listing
    assert "ModuleNotFoundError" in listing


def test_duplicate_names_across_distributions_name_both(fake_site):
    for dist, module in (("ssl-plugin-a", "good_plugin"), ("ssl-plugin-b", "other_good")):
        _install_fake_distribution(
            fake_site,
            dist,
            {"keras_ssl.methods": {"clash": f"{module}:Thing"}},
            {module: "class Thing:\n    pass\n"},
        )
    reg = _fresh()
    with pytest.raises(registry.DuplicatePluginError) as info:
        reg.get("clash")
    assert "ssl-plugin-a" in str(info.value) and "ssl-plugin-b" in str(info.value)
    listing = "\n".join(format_registry(reg))
    assert listing.count("BROKEN") == 2


def test_in_process_registration_and_gin_binding():
    import gin

    reg = registry.Registry("keras_ssl.test_only", "widget", gin_module="keras_ssl.test_widgets")

    @reg.register("scaled")
    def scaled(value, factor=1):
        return value * factor

    assert reg.names() == ["scaled"]
    gin.parse_config("scaled.factor = 3")
    try:
        assert reg.get("scaled")(2) == 6
    finally:
        gin.clear_config()
    with pytest.raises(registry.DuplicatePluginError):
        reg.register("scaled", lambda: None)


def test_list_binary_prints_every_kind(capsys):
    from keras_ssl.cli import list as list_binary

    list_binary.main(["keras-ssl-list"])
    out = capsys.readouterr().out
    for heading in ("methods (", "backbones (", "augmentation stacks (", "datasets ("):
        assert heading in out
    assert "rotation" in out and "keras-ssl-methods" in out
