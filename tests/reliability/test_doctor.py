"""``sassl doctor``: versions, devices, plugins and data roots; exit status 1 when something
asked about is unusable."""

from __future__ import annotations

import sassl_core.plugins as plugins_module
from sassl_core.app.doctor import PACKAGES, report
from sassl_core.plugins import PluginFailure, load_plugins
from tests.fixtures.cli_runs import cli


def test_report_lists_versions_device_and_plugins(tmp_path):
    lines, ok = report([tmp_path])
    text = "\n".join(lines)
    assert ok, text
    assert lines[0].startswith("python ")
    for package in PACKAGES:
        assert any(line.startswith(f"{package} ") for line in lines), package
    assert any(line.startswith("OpenSlide library ") for line in lines)
    assert any(line.startswith("CUDA") for line in lines)
    assert any(line.startswith("plugin simsiam (sassl ") and line.endswith("ssl: simsiam") for line in lines)
    assert f"data root {tmp_path}: readable" in lines


def test_unreadable_data_root_fails_with_exit_status_1(tmp_path):
    missing = tmp_path / "nowhere"
    result = cli("doctor", tmp_path, missing)
    assert result.status == 1
    assert f"data root {tmp_path}: readable" in result.out
    assert f"data root {missing}: NOT readable or not a folder" in result.out
    assert cli("doctor", tmp_path).status == 0


def test_failed_plugin_is_reported_and_fails(monkeypatch):
    broken = load_plugins()
    broken.failures.append(PluginFailure("lab_plugin", "lab-tools", "import failed: ImportError: no cuda"))
    monkeypatch.setattr(plugins_module, "_DEFAULT", broken)
    lines, ok = report([])
    assert not ok
    assert "FAILED plugin 'lab_plugin' (distribution lab-tools) failed: import failed: ImportError: no cuda" in lines
