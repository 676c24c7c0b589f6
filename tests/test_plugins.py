"""The plugin system: discovery, registration, errors, disabling, options validation."""

import types

import pytest
from pydantic import BaseModel, ConfigDict

import sassl_core
from sassl_core import hookspecs
from sassl_core.errors import UserError
from sassl_core.plugins import load_plugins

EXPECTED = {
    "ssl": {"simsiam", "moco", "byol", "simclr"},
    "task": {"cls", "reg", "seg"},
    "dataset": {"panda", "breastpathq", "camelyon16", "tcga", "synthetic"},
    "stain": {"reinhard", "macenko", "vahadane", "meanstd", "hed_jitter"},
    "backbone": {"resnet18", "resnet50", "efficientnet_b0", "vit_small", "swin_tiny"},
}


class WidthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 4


def _plugin(**hooks):
    module = types.ModuleType("throwaway")
    for name, fn in hooks.items():
        setattr(module, name, sassl_core.hookimpl(fn))
    return module


def test_shipped_plugins_register_every_extension_point():
    plugins = load_plugins()
    assert not plugins.failures, [f.message() for f in plugins.failures]
    for kind, names in EXPECTED.items():
        assert names <= set(plugins[kind].names()), kind
    shipped = {p.name: p for p in plugins.plugins}
    assert shipped["simsiam"].distribution == "sassl"
    assert shipped["simsiam"].components == {"ssl": ["simsiam"]}


def test_every_hookspec_is_documented_and_exercised():
    for kind, hook_name in hookspecs.HOOKS.items():
        spec = getattr(hookspecs, hook_name)
        assert spec.__doc__ and "factory(" in spec.__doc__, hook_name
        assert load_plugins()[kind].names(), f"no plugin implements {hook_name}"


def test_throwaway_plugin_registers_and_options_are_validated(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    built = {}

    def build(options, feature_channels, num_outputs):
        built.update(width=options.width, channels=feature_channels)
        return "head"

    plugin = _plugin(sassl_register_tasks=lambda register: register("probe", build, WidthOptions))
    plugins = load_plugins(extra=[("throwaway", plugin)])
    assert plugins["task"].names() == ["probe"]
    assert plugins["ssl"].names() == []  # autoload disabled: only what was registered in code
    assert plugins["task"].create("probe", {"width": 7}, feature_channels=[8], num_outputs=2) == "head"
    assert built == {"width": 7, "channels": [8]}
    with pytest.raises(UserError, match=r"options of task 'probe': widht: Extra inputs"):
        plugins["task"].create("probe", {"widht": 7}, feature_channels=[8], num_outputs=2)


def test_unknown_name_lists_what_exists():
    plugins = load_plugins()
    with pytest.raises(UserError) as err:
        plugins["ssl"].get("simsam")
    assert str(err.value) == f"unknown ssl method 'simsam'; available: {', '.join(plugins['ssl'].names())}"
    assert "byol, moco, simclr, simsiam" in str(err.value)


def test_duplicate_name_is_an_error_naming_both_plugins(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    first = _plugin(sassl_register_ssl_methods=lambda register: register("twin", lambda options: None))
    second = _plugin(sassl_register_ssl_methods=lambda register: register("twin", lambda options: None))
    plugins = load_plugins(extra=[("first", first), ("second", second)])
    assert plugins["ssl"].get("twin").plugin == "first"
    [failure] = plugins.failures
    assert failure.name == "second"
    assert "ssl method 'twin' is registered twice: by plugin 'first' and by plugin 'second'" in failure.error


def test_plugin_that_raises_on_import_is_reported_and_skipped(monkeypatch):
    def broken_load():
        raise ImportError("No module named 'missing_dependency'")

    good = types.SimpleNamespace(
        name="good",
        dist=None,
        load=lambda: _plugin(sassl_register_datasets=lambda register: register("tiny", lambda options, context: None)),
    )
    bad = types.SimpleNamespace(
        name="broken", dist=types.SimpleNamespace(name="sassl-broken", version="0.1"), load=broken_load
    )
    monkeypatch.setattr("sassl_core.plugins._entry_points", lambda: [bad, good])
    plugins = load_plugins()
    assert plugins["dataset"].names() == ["tiny"]
    [failure] = plugins.failures
    assert failure.message() == (
        "plugin 'broken' (distribution sassl-broken) failed: import failed: ImportError: No module named 'missing_dependency'"
    )


def test_plugin_whose_hook_raises_or_registers_garbage_is_named(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")

    def raising(register):
        raise RuntimeError("boom")

    crashing = _plugin(sassl_register_backbones=raising)
    garbage = _plugin(sassl_register_backbones=lambda register: register("x", "not callable"))
    good = _plugin(sassl_register_backbones=lambda register: register("ok", lambda options, image_size: None))
    plugins = load_plugins(extra=[("crashing", crashing), ("garbage", garbage), ("good", good)])
    assert plugins["backbone"].names() == ["ok"]
    errors = {f.name: f.error for f in plugins.failures}
    assert errors["crashing"] == "RuntimeError: boom"
    assert "factory that is not callable" in errors["garbage"]


def test_disable_plugins_by_name(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGINS", "moco, byol")
    plugins = load_plugins()
    assert "moco" not in plugins["ssl"].names() and "byol" not in plugins["ssl"].names()
    assert {"simsiam", "simclr"} <= set(plugins["ssl"].names())


def test_factory_that_crashes_is_named_in_one_user_error(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")

    def build(options, image_size):
        raise RuntimeError("weights shape mismatch\nlong second line")

    plugins = load_plugins(
        extra=[("fragile", _plugin(sassl_register_backbones=lambda register: register("fragile_net", build)))]
    )
    with pytest.raises(UserError) as err:
        plugins["backbone"].create("fragile_net", {}, image_size=32)
    assert str(err.value) == (
        "backbone 'fragile_net' (plugin 'fragile') failed to build: RuntimeError: weights shape mismatch"
    )
