"""Smoke test of the many-slide tiling benchmark: it runs every tool available here on two
copies of each slide and reports counts and rates (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_tiling_many_reports_every_tool_on_every_slide_set():
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "tiling_many.py"), "--copies", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    with_tia = importlib.util.find_spec("tiatoolbox") is not None
    assert bool(report["meta"]["tiatoolbox"]) == with_tia
    assert any("generated 4-level TIFF" in r["slides"] for r in report["results"])
    for result in report["results"]:
        counts = result["patches"]
        sassl = {v for k, v in counts.items() if k.startswith("sassl")}
        assert len(sassl) == 1 and sassl.pop() > 0  # workers and --save-tiles do not change what is kept
        assert counts["plain OpenSlide + Otsu loop"] > 0
        assert ("tiatoolbox tissue_mask + PatchExtractor" in counts) == with_tia
        assert all(rate > 0 for rate in result["patches_per_s"].values())
