"""Smoke tests of the pretraining benchmarks: the scripts run at the tiniest sizes on the CPU and
report what they promise (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import gpu_suite  # noqa: E402

TINY = [
    "--backbone",
    "test_resnet",
    "--image-size",
    "32",
    "--batch",
    "4",
    "--sources",
    "2",
    "--warmup",
    "1",
    "--repeats",
    "1",
]


@pytest.mark.slow
def test_pretrain_step_prints_ratio_and_writes_json(tmp_path):
    out = tmp_path / "step.json"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "pretrain_step.py"), *TINY, "--device", "cpu", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio sassl/plain" in proc.stdout and "discriminator overhead" in proc.stdout
    result = json.loads(out.read_text())
    assert result["settings"]["backbone"] == "test_resnet" and result["settings"]["batch"] == 4
    rates = {name: result["timings"][name]["img_per_s"] for name in ("raw", "plain", "sassl")}
    assert all(rate > 0 for rate in rates.values())
    assert math.isclose(result["ratio_sassl_over_plain"], rates["sassl"] / rates["plain"], rel_tol=0.02)
    assert math.isclose(result["ratio_sassl_over_raw"], rates["sassl"] / rates["raw"], rel_tol=0.02)
    assert f"{result['ratio_sassl_over_plain']:.3f}" in proc.stdout
    if importlib.util.find_spec("lightly") is None:  # a benchmark-only package: the row says it is missing
        assert "lightly row skipped" in proc.stdout and "lightly" not in result["timings"]
    else:
        lightly_s, plain_s = result["timings"]["lightly"]["median_s"], result["timings"]["plain"]["median_s"]
        assert math.isclose(result["time_plain_over_lightly"], plain_s / lightly_s, rel_tol=0.02)
        assert f"adversary off {result['time_plain_over_lightly']:.3f}" in proc.stdout


def test_measure_reports_median_of_repeats():
    calls = []
    timing = common.measure(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and len(timing.times_s) == 3
    assert timing.median_s == sorted(timing.times_s)[1] and timing.peak_gib is None
    assert timing.as_dict(items=10)["img_per_s"] == round(10 / timing.median_s, 2)


def test_measure_interleaved_calls_each_case_once_per_round():
    order = []
    timings = common.measure_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, torch.device("cpu"), warmup=1, repeats=2
    )
    assert order == ["a", "b"] * 3
    assert {name: len(t.times_s) for name, t in timings.items()} == {"a": 2, "b": 2}


@pytest.mark.parametrize("momentum", [False, True])
def test_raw_step_trains_and_moves_the_target(momentum):
    torch.manual_seed(0)
    model = common.RawSimSiam("test_resnet", 32, proj_dim=16, proj_hidden=32, pred_hidden=8, momentum=momentum)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    loss = model(x1, x2)
    assert -1.0 <= float(loss.detach()) <= 1.0  # a negative cosine similarity
    loss.backward()
    assert next(model.encoder.parameters()).grad is not None  # gradients reach the backbone
    if momentum:
        assert all(not p.requires_grad for p in model.target.parameters())
        before = next(model.target.parameters()).clone()
        with torch.no_grad():
            next(model.encoder.parameters()).add_(1.0)
        model.ema(momentum=0.5)
        assert torch.allclose(next(model.target.parameters()), before + 0.5)


def test_synthetic_patch_cache_reads_back_through_the_dataset(tmp_path):
    common.ensure_importable()
    from sassl_core.wsi.dataset import PatchDataset

    table, cache = common.synthetic_patch_cache(tmp_path / "cache", sources=3, per_source=4, patch_size=16)
    dataset = PatchDataset(table, cache)
    assert len(dataset) == 12 and len(set(dataset.sources.tolist())) == 3
    items = dataset.__getitems__([5, 0])
    assert items[0]["image"].shape == (16, 16, 3) and items[0]["image"].dtype == torch.uint8
    assert torch.equal(items[1]["image"], torch.from_numpy(cache.images[0].copy()))


def test_real_step_on_device_runs_both_phases():
    plugins = common.benchmark_plugins()
    settings = common.StepSettings(backbone="test_resnet", image_size=32, batch=4)
    step = common.real_step_on_device(settings, plugins, "simsiam", sassl=True, sources_per_batch=2)
    assert set(step.program.optimizers) == {"ssl", "discriminator"}
    before = [p.clone() for p in step.program.modules["discriminator"].parameters()]
    assert step() == 8  # two views of four patches
    after = list(step.program.modules["discriminator"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the discriminator stepped
    assert step.step == 1


def test_gpu_suite_times_the_real_step_through_ddp():
    suite = gpu_suite.Suite(gpu_suite.SMOKE_PLAN, budget_s=60)
    out = gpu_suite.section_ddp(suite)
    assert out["backend"] == "gloo" and out["replicas"] == ["DistributedDataParallel"] * 2  # SSL model and D
    assert not torch.distributed.is_initialized()  # the one-process group is gone again
    ratio = out["cases"]["ddp"]["median_s"] / out["cases"]["plain"]["median_s"]
    assert math.isclose(out["ratio_ddp_over_plain"], ratio, rel_tol=0.02)
    assert "1-GPU DDP step time / plain step time (gloo)" in gpu_suite.table({"ddp": out})


def test_missing_package_gets_a_stand_in(monkeypatch):
    monkeypatch.setitem(sys.modules, "sassl_no_such_package", None)
    assert gpu_suite.stand_in_for_missing(("sassl_no_such_package", "json")) == ["sassl_no_such_package"]
    stand_in = sys.modules["sassl_no_such_package"]
    assert not hasattr(stand_in, "__file__")
    with pytest.raises(ImportError, match="not installed"):
        stand_in.OpenSlide


def test_suite_table_and_output_paths(tmp_path, monkeypatch):
    case = {"img_per_s": 100.0, "peak_gib": 2.0, "median_s": 0.1}
    results = {
        "step": {
            "cases": {"raw": case, "plain": case, "sassl": case},
            "ratio_real_over_raw": 0.95,
            "discriminator_overhead": 0.02,
            "peak_ratio_real_over_raw": 1.05,
        },
        "methods": {"moco": {"ratio_real_over_raw": 0.91}},
        "compile": {"skipped": "time budget (10 s left of 290)"},
        "e2e": {"error": "Traceback ...\nRuntimeError: boom"},
    }
    text = gpu_suite.table(results)
    assert "step real/raw" in text and "0.950  >= 0.90" in text and "moco real/raw" in text
    assert "compile: skipped" in text and "RuntimeError: boom" in text
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_suite.output_paths(None) == (tmp_path / "gpu_suite.json", tmp_path / "gpu_suite.txt")
    assert gpu_suite.output_paths(str(tmp_path / "x.json"))[1] == tmp_path / "x.txt"


def test_thumbnail_memory_benchmark_compares_both_paths():
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "thumbnail_memory.py"),
            "--side",
            "1024",
            "--max-side",
            "128",
            "--block",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith(("openslide", "blocks"))}
    assert set(rows) == {"openslide", "blocks"}
    assert all("thumbnail (128, 128, 3)" in line for line in rows.values())
    means = [float(line.rsplit("mean", 1)[1]) for line in rows.values()]
    assert abs(means[0] - means[1]) < 2  # the same picture both ways
    assert "single-level slide: blocks/openslide peak growth" in proc.stdout
