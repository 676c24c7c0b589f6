"""A broken third-party plugin, installed for real (a distribution with ``sassl`` entry points
on the path): it is named in the message, the other plugins keep working, and
``SASSL_DISABLE_PLUGINS`` gets the user past it; a bug in a factory is a traceback naming the
plugin. Loader-level cases live in tests/test_plugins.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sassl_core.plugins as plugins_module
from tests.fixtures.cli_runs import cli
from tests.pipeline.tiny import TINY, TINY_SYNTHETIC

PLUGINS = {
    "raises_at_import": "raise ImportError(\"No module named 'missing_dependency'\")\n",
    "bad_component": (
        "import sassl_core\n\n"
        "@sassl_core.hookimpl\n"
        "def sassl_register_ssl_methods(register):\n"
        "    register('halfbaked', 'not a factory')\n"
    ),
    "hook_fails": (
        "import sassl_core\n\n"
        "@sassl_core.hookimpl\n"
        "def sassl_register_datasets(register):\n"
        "    raise RuntimeError('cannot reach the licence server')\n"
    ),
    "works": (
        "import sassl_core\n\n"
        "def build(options, encoder, feature_dim):\n"
        "    raise NotImplementedError\n\n"
        "@sassl_core.hookimpl\n"
        "def sassl_register_ssl_methods(register):\n"
        "    register('thirdparty_ok', build)\n"
    ),
}
BROKEN = ("raises_at_import", "bad_component", "hook_fails")
DIST = "sassl-thirdparty-broken"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder holding the plugin modules and their distribution's metadata."""
    site = tmp_path_factory.mktemp("site")
    for name, source in PLUGINS.items():
        (site / f"tp_{name}.py").write_text(source)
    info = site / "sassl_thirdparty_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sassl]\n" + "".join(f"{n} = tp_{n}\n" for n in PLUGINS))
    return site


@pytest.fixture
def installed(site, monkeypatch) -> Path:
    """The distribution importable in this process, and the plugin set loaded afresh."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("SASSL_DISABLE_PLUGINS", raising=False)
    monkeypatch.setattr(plugins_module, "_DEFAULT", None)
    yield site
    plugins_module._DEFAULT = None  # later tests load the plugins without this distribution


def _failure(name: str, error: str) -> str:
    return f"plugin '{name}' (distribution {DIST}) failed: {error}"


EXPECTED_ERRORS = {
    "raises_at_import": "import failed: ImportError: No module named 'missing_dependency'",
    "bad_component": "plugin 'bad_component' registered ssl method 'halfbaked' with a factory that is not callable",
    "hook_fails": "RuntimeError: cannot reach the licence server",
}


def test_plugins_lists_each_broken_plugin_and_the_others_work(installed):
    result = cli("plugins", "--json")
    assert result.status == 1, result.err  # a failed plugin fails the listing
    summary = json.loads(result.out)
    failed = {f["name"]: f for f in summary["failed"]}
    assert set(failed) == set(BROKEN)
    for name, error in EXPECTED_ERRORS.items():
        assert failed[name]["distribution"] == DIST and failed[name]["error"] == error
    assert "thirdparty_ok" in summary["ssl"]  # a working plugin of the same distribution
    assert {"simsiam", "moco", "byol", "simclr"} <= set(summary["ssl"])  # the shipped ones
    assert "halfbaked" not in summary["ssl"]
    assert {"panda", "synthetic"} <= set(summary["dataset"])


def test_a_run_warns_by_name_and_goes_on(installed, tmp_path):
    result = cli("pretrain", "--out", tmp_path / "run", *TINY, "--ssl", "simsam")
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: plugin")]
    assert sorted(warnings) == sorted(f"warning: {_failure(n, e)}" for n, e in EXPECTED_ERRORS.items())
    # the run goes on to its own checks, with every healthy plugin's components available
    assert result.status == 2
    assert "error: unknown ssl method 'simsam'; available: " in result.err and "thirdparty_ok" in result.err


def test_run_log_keeps_the_plugin_warnings_and_the_closing_line(installed, tmp_path):
    out = tmp_path / "run"
    result = cli("pretrain", "--steps", 1, "--out", out, *[a for a in TINY if a != "--quiet"])
    assert result.status == 0, result.err[-2000:]
    log = (out / "run.log").read_text().splitlines()
    for name, error in EXPECTED_ERRORS.items():
        warning = f"warning: {_failure(name, error)}"
        assert result.err.splitlines().count(warning) == 1 and log.count(warning) == 1
    assert log[-1] == f"done: {out}" == result.out.splitlines()[-1]


def test_doctor_fails_on_broken_plugins_until_they_are_disabled(installed, monkeypatch):
    result = cli("doctor")
    assert result.status == 1
    for name, error in EXPECTED_ERRORS.items():
        assert f"FAILED {_failure(name, error)}" in result.out
    monkeypatch.setenv("SASSL_DISABLE_PLUGINS", ",".join(BROKEN))
    monkeypatch.setattr(plugins_module, "_DEFAULT", None)
    fine = cli("doctor")
    assert fine.status == 0, fine.out
    assert "FAILED" not in fine.out
    assert "plugin works (sassl-thirdparty-broken 0.1): ssl: thirdparty_ok" in fine.out


def _env_with(site: Path) -> dict[str, str]:
    """The environment of a fresh interpreter that sees the distribution through the path alone."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_console_script_with_the_distribution_installed(site):
    """The same through a fresh interpreter, where only the path makes the distribution visible."""
    env = _env_with(site)
    env["SASSL_DISABLE_PLUGINS"] = "raises_at_import"
    proc = subprocess.run(
        [sys.executable, "-m", "sassl_core.app.cli", "plugins"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1, proc.stderr  # two plugins still fail
    failed = sorted(line for line in proc.stdout.splitlines() if line.startswith("FAILED"))
    assert failed == [
        f"FAILED bad_component ({DIST}): {EXPECTED_ERRORS['bad_component']}",
        f"FAILED hook_fails ({DIST}): {EXPECTED_ERRORS['hook_fails']}",
    ]
    assert any(line.startswith(f"works ({DIST} 0.1) — ssl: thirdparty_ok") for line in proc.stdout.splitlines())


def test_a_bug_in_a_factory_is_a_traceback_naming_the_plugin(site, tmp_path):
    """An exception other than a user error, raised while a plugin builds its component, is a bug
    (CONTRIBUTING §3): the command shows its traceback, with a note naming the component and the
    plugin, and exits with status 1, not the user-error status 2."""
    env = _env_with(site)
    env["SASSL_DISABLE_PLUGINS"] = ",".join(BROKEN)
    tiny = ["--device", "cpu", "--image-size", "32", "--batch-size", "8", "--quiet", *TINY_SYNTHETIC]  # no ssl.options
    args = ["pretrain", "--out", str(tmp_path / "run"), *tiny, "--ssl", "thirdparty_ok"]
    proc = subprocess.run(
        [sys.executable, "-m", "sassl_core.app.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" in proc.stderr and "NotImplementedError" in proc.stderr
    assert "raised by ssl method 'thirdparty_ok' of plugin 'works'" in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def _distribution(site: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """A distribution ``dist`` in ``site``: its modules, METADATA and ``entry_points.txt``."""
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def fresh_site(tmp_path, monkeypatch) -> Path:
    """An empty folder first on the path; the plugin set is loaded afresh with what it gets."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("SASSL_DISABLE_PLUGINS", raising=False)
    monkeypatch.setattr(plugins_module, "_DEFAULT", None)
    yield site
    plugins_module._DEFAULT = None


def test_a_plugin_named_like_a_shipped_one_is_reported_and_the_shipped_one_kept(fresh_site):
    """First on the path, it used to replace the shipped ``cls`` silently (then: unknown task 'cls')."""
    source = "import sassl_core\n\n@sassl_core.hookimpl\ndef sassl_register_ssl_methods(register):\n    pass\n"
    _distribution(fresh_site, "sassl-impostor", "[sassl]\ncls = tp_impostor_cls\n", {"tp_impostor_cls": source})
    result = cli("plugins", "--json")
    assert result.status == 1
    summary = json.loads(result.out)
    assert {"cls", "reg", "seg"} <= set(summary["task"])
    [failure] = summary["failed"]
    assert (failure["name"], failure["distribution"]) == ("cls", "sassl-impostor")
    assert failure["error"] == (
        "entry point 'cls' (module tp_impostor_cls) clashes with plugin 'cls' of distribution sassl "
        "(module sassl_plugins.tasks.cls); not loaded"
    )


def test_a_plugin_calling_sys_exit_at_import_is_a_failed_plugin(fresh_site):
    """It used to end every command, ``doctor`` included, with status 3 and no message."""
    _distribution(fresh_site, "sassl-exits", "[sassl]\nexits = tp_exits\n", {"tp_exits": "raise SystemExit(3)\n"})
    result = cli("doctor")
    assert result.status == 1
    assert "FAILED plugin 'exits' (distribution sassl-exits) failed: import failed: SystemExit: 3" in result.out


def test_a_malformed_entry_points_file_is_a_failed_plugin_naming_the_distribution(fresh_site):
    """A line that is not ``name = module`` used to be a traceback on every command."""
    _distribution(fresh_site, "sassl-malformed", "[sassl]\nthis line has no equals sign\n", {})
    result = cli("plugins")
    assert result.status == 1, result.err
    [line] = [line for line in result.out.splitlines() if line.startswith("FAILED")]
    assert line.startswith("FAILED entry_points.txt (sassl-malformed): import failed: entry_points.txt: expected")
    assert "simsiam" in result.out  # the other plugins load
