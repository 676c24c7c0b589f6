"""The plugin system: discovery, registration, errors, disabling, options validation."""

import inspect
import json
import subprocess
import sys
import types

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

import sassl_core
from sassl_core import hookspecs
from sassl_core.errors import UserError
from sassl_core.hookspecs import EXTENSION_POINTS
from sassl_core.interfaces import TargetKind, TaskHead
from sassl_core.plugins import load_plugins
from tests.fixtures.cli_runs import cli

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


class ProbeHead(TaskHead):
    """A head that is never run: what a task factory returns."""


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
    plugins = load_plugins()
    assert set(EXTENSION_POINTS) == {"ssl", "backbone", "task", "dataset", "stain"} == set(plugins.registries)
    for kind, point in EXTENSION_POINTS.items():
        spec = getattr(hookspecs, point.hook)
        assert spec.sassl_spec is not None, point.hook  # marked @hookspec
        assert spec.__doc__ and "factory(" in spec.__doc__ and ":param register:" in spec.__doc__, point.hook
        # the factory Protocol's arguments are the ones the docstring hands the factory
        arguments = list(inspect.signature(point.factory.__call__).parameters)[1:]
        assert arguments[0] == "options", point.factory
        for argument in arguments:
            assert f"``{argument}``" in spec.__doc__, (point.hook, argument)
        assert point.returns in spec.__doc__, point.hook
        assert plugins[kind].names(), f"no plugin implements {point.hook}"


def test_sassl_plugins_lists_every_extension_point():
    listing = json.loads(cli("plugins", "--json").out)
    for kind, point in EXTENSION_POINTS.items():
        described = listing["extension_points"][kind]
        assert (described["hook"], described["label"], described["returns"]) == (point.hook, point.label, point.returns)
        assert described["factory"] == point.factory.__name__
    assert {"cls": "label", "reg": "target", "seg": "mask"}.items() <= listing["extension_points"]["task"][
        "target_kinds"
    ].items()
    lines = cli("plugins").out.splitlines()
    tasks = next(line for line in lines if line.startswith("tasks (sassl_register_tasks → TaskHead): "))
    assert "cls [label]" in tasks and "reg [target]" in tasks and "seg [mask]" in tasks


def test_importing_the_hookspecs_imports_no_torch():
    code = "import sys, sassl_core, sassl_core.hookspecs; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_shipped_tasks_declare_their_target_kind():
    tasks = load_plugins()["task"]
    declared = {name: tasks.get(name).target_kind for name in ("cls", "reg", "seg")}
    assert declared == {"cls": TargetKind.LABEL, "reg": TargetKind.TARGET, "seg": TargetKind.MASK}


def test_throwaway_plugin_registers_and_options_are_validated(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    built = {}

    def build(options, feature_channels, num_outputs):
        built.update(width=options.width, channels=feature_channels)
        return ProbeHead()

    plugin = _plugin(
        sassl_register_tasks=lambda register: register("probe", build, WidthOptions, target_kind=TargetKind.TARGET)
    )
    plugins = load_plugins(extra=[("throwaway", plugin)])
    assert plugins["task"].names() == ["probe"]
    assert plugins["ssl"].names() == []  # autoload disabled: only what was registered in code
    head = plugins["task"].create("probe", {"width": 7}, feature_channels=[8], num_outputs=2)
    assert isinstance(head, ProbeHead) and head.target_kind is TargetKind.TARGET  # the declared kind, on the head
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


def test_target_kind_is_required_for_tasks_and_refused_elsewhere(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    build = lambda options, **core: ProbeHead()
    plugins = load_plugins(
        extra=[
            ("undeclared", _plugin(sassl_register_tasks=lambda register: register("plain", build))),
            ("unknown", _plugin(sassl_register_tasks=lambda register: register("odd", build, target_kind="rank"))),
            (
                "misplaced",
                _plugin(sassl_register_stain_transforms=lambda register: register("s", build, target_kind="label")),
            ),
            ("by_value", _plugin(sassl_register_tasks=lambda register: register("valued", build, target_kind="mask"))),
        ]
    )
    assert plugins["task"].names() == ["valued"] and plugins["stain"].names() == []
    assert plugins["task"].get("valued").target_kind is TargetKind.MASK  # the enum's value is accepted
    errors = {f.name: f.error for f in plugins.failures}
    kinds = "TargetKind.LABEL, TargetKind.TARGET, TargetKind.MASK"
    assert errors == {
        "undeclared": f"plugin 'undeclared' registered task 'plain' without a target_kind: expected target_kind= one of {kinds}",
        "unknown": f"plugin 'unknown' registered task 'odd' with target_kind 'rank': expected one of {kinds}",
        "misplaced": "plugin 'misplaced' registered stain transform 's' with a target_kind; only tasks declare one",
    }


def _crashing_backbone(monkeypatch, error: Exception):
    """A plugin 'fragile' whose backbone 'fragile_net' raises ``error`` when built."""
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")

    def build(options, image_size):
        raise error

    plugin = _plugin(sassl_register_backbones=lambda register: register("fragile_net", build))
    return load_plugins(extra=[("fragile", plugin)])["backbone"]


def test_a_bug_in_a_factory_propagates_with_the_plugin_named(monkeypatch):
    """Not a user error (CONTRIBUTING §3): the exception itself, with a note naming its source."""
    backbones = _crashing_backbone(monkeypatch, RuntimeError("weights shape mismatch"))
    with pytest.raises(RuntimeError, match="weights shape mismatch") as err:
        backbones.create("fragile_net", {}, image_size=32)
    assert err.value.__notes__ == ["raised by backbone 'fragile_net' of plugin 'fragile'"]


def test_a_user_error_from_a_factory_stays_one_line(monkeypatch):
    backbones = _crashing_backbone(monkeypatch, UserError("weights.safetensors: expected 512 channels, found 256"))
    with pytest.raises(UserError) as err:
        backbones.create("fragile_net", {}, image_size=32)
    assert str(err.value) == "weights.safetensors: expected 512 channels, found 256"


def test_a_validation_error_from_a_factory_is_a_user_error_naming_the_component(monkeypatch):
    try:
        WidthOptions.model_validate({"width": "wide"})
    except ValidationError as raised:
        invalid = raised
    backbones = _crashing_backbone(monkeypatch, invalid)
    with pytest.raises(UserError) as err:
        backbones.create("fragile_net", {}, image_size=32)
    assert str(err.value) == (
        "backbone 'fragile_net': width: Input should be a valid integer, unable to parse string as an integer"
    )


def test_a_task_factory_must_return_a_task_head(monkeypatch):
    monkeypatch.setenv("SASSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    register = lambda register: register("headless", lambda options, **core: "head", target_kind=TargetKind.LABEL)
    tasks = load_plugins(extra=[("headless", _plugin(sassl_register_tasks=register))])["task"]
    with pytest.raises(TypeError, match="task 'headless' of plugin 'headless' returned str, expected"):
        tasks.create("headless", {}, feature_channels=[8], num_outputs=2)
