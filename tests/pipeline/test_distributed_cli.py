"""Multi-process pretraining: a 2-process torchrun (gloo, CPU) equals 1 process on the same global batch.

Equality needs the same arithmetic on both sides, so the run avoids what legitimately differs
per process: BatchNorm statistics (a LayerNorm ViT and MoCo's BN-free projector) and random
views (all augmentation probabilities 0). What remains distributed is real: the sampler's
disjoint shares, MoCo's negatives and the stain discriminator's affinity matrix over the
gathered global batch, and gradient averaging. Tolerance: float32 reductions in another order (weights within 1e-5).
"""

import csv
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.pipeline.tiny import TINY, sassl

NO_VIEWS = "ssl.views={crop_p: 0, hflip_p: 0, vflip_p: 0, rot90_p: 0, hed_p: 0, color_p: 0, blur_p: 0}"
ARGS = [
    "pretrain",
    "--ssl",
    "moco",
    "--backbone",
    "timm:vit_tiny_patch16_224",
    "--steps",
    "4",
    *TINY,
    "--set",
    NO_VIEWS,
    "--set",
    "ssl.options.queue_size=32",
    "--set",
    "trainer.checkpoint_every=100",
    # SGD: Adam's normalised steps would turn float32 rounding in near-zero gradients into lr-sized steps
    "--set",
    "pretrain.optim.name=sgd",
    "--set",
    "pretrain.optim.lr=0.05",
]


def _history(run_dir):
    with open(run_dir / "history_pretrain.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not torch.distributed.is_available(), reason="no torch.distributed"
)
def test_two_gloo_processes_match_one_process(tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    sassl(*ARGS, "--out", single)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "sassl_core.app.cli",
            *ARGS,
            "--out",
            str(double),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    untrained = tmp_path / "zero"
    sassl(*ARGS, "--out", untrained, "--set", "pretrain.steps=0")
    start = load_file(str(untrained / "encoder.safetensors"))
    one, two = load_file(str(single / "encoder.safetensors")), load_file(str(double / "encoder.safetensors"))
    assert one.keys() == two.keys() == start.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert sum(not torch.equal(one[k], start[k]) for k in one) > len(one) // 2  # training really moved them
    rows_one, rows_two = _history(single), _history(double)
    assert len(rows_one) == len(rows_two) == 4
    for a, b in zip(rows_one, rows_two):  # the affinity means are computed over the global batch
        for key in ("a_same", "a_diff", "L_D"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5), key
