"""The lab-pipeline example runs end to end through the Python API."""

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "examples" / "lab_pipeline.py"


@pytest.mark.slow
def test_lab_pipeline_example_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("lab_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path), "--steps", "2"])
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed if "accuracy" in line] == ["SimSiam", "SimSiam", "SASSL"]
    assert sum("centre probe" in line for line in printed) == 2
    for run in ("baseline", "sassl"):
        assert 0.0 <= json.loads((tmp_path / run / "centre_probe.json").read_text())["accuracy"] <= 1.0
        assert (tmp_path / run / "metrics.json").is_file()  # probing kept the run it probed (overwrite=true)
    assert json.loads((tmp_path / "sassl_without_rl" / "metrics.json").read_text())["task"] == "cls"
