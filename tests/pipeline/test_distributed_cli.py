"""Multi-process training: torchrun (gloo, CPU) equals 1 process on the same global batch.

Equality needs the same arithmetic on both sides, so the runs avoid what legitimately differs
per process: BatchNorm statistics (a LayerNorm ViT, heads without BatchNorm: MoCo's projector,
``ssl.options.batch_norm=false`` for the others) and random views (all augmentation
probabilities 0). What remains distributed is real: the samplers' disjoint shares, MoCo's and
SimCLR's negatives and the stain discriminator's affinity matrix over the gathered global batch,
and DistributedDataParallel's gradient averaging. Tolerance: float32 reductions in another
order (weights within 1e-5).
"""

import csv
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sassl_core.train.checkpoint import load_checkpoint
from tests.pipeline.tiny import TINY, sassl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed"),
]

NO_VIEWS = "ssl.views={crop_p: 0, hflip_p: 0, vflip_p: 0, rot90_p: 0, hed_p: 0, color_p: 0, blur_p: 0}"
COMMON = [
    "--backbone",
    "timm:vit_tiny_patch16_224",
    *TINY,
    "--set",
    "trainer.checkpoint_every=100",
]
# SGD: Adam's normalised steps would turn float32 rounding in near-zero gradients into lr-sized steps
SGD = ["--set", "pretrain.optim.name=sgd", "--set", "pretrain.optim.lr=0.05"]
METHOD_OPTIONS = {
    "moco": ["--set", "ssl.options.queue_size=32"],  # BN-free projector
    "simsiam": ["--set", "ssl.options.batch_norm=false"],
    "byol": ["--set", "ssl.options.batch_norm=false"],
    "simclr": ["--set", "ssl.options.batch_norm=false"],
}
FINETUNE = [
    "finetune",
    "--task",
    "reg",
    "--finetune-steps",
    "3",
    *COMMON,
    "--set",
    "finetune.optim.name=sgd",
    "--set",
    "finetune.optim.lr=0.05",
]


def pretrain_args(method: str, steps: int = 4) -> list[str]:
    return [
        "pretrain",
        "--ssl",
        method,
        "--steps",
        str(steps),
        *COMMON,
        "--set",
        NO_VIEWS,
        *SGD,
        *METHOD_OPTIONS[method],
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*launcher: str, args: list[str]) -> subprocess.Popen:
    """``torchrun LAUNCHER -m sassl_core.app.cli ARGS`` as a child process."""
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "sassl_core.app.cli", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(*procs: subprocess.Popen) -> None:
    """Wait for every process; each must exit 0 (the others are stopped when one does not)."""
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, out[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()  # torchrun passes it on to its workers


def two_processes(args: list[str]) -> None:
    finish(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()), args=args))


def assert_same_checkpoints(one, two, stage: str) -> None:
    """Every module of the stage's last checkpoint (momentum targets and D included) within 1e-5."""
    a = load_checkpoint(one / "checkpoints" / f"{stage}_last.pt")["modules"]
    b = load_checkpoint(two / "checkpoints" / f"{stage}_last.pt")["modules"]
    assert a.keys() == b.keys()
    for module in a:
        assert a[module].keys() == b[module].keys()
        for key in a[module]:
            first, second = a[module][key], b[module][key]
            if key == "queue":  # MoCo enqueues the same keys, gathered in another row order
                first, second = first[first[:, 0].argsort()], second[second[:, 0].argsort()]
            torch.testing.assert_close(second, first, rtol=1e-4, atol=1e-5, msg=f"{module}.{key}")


def assert_same_pretraining(one, two) -> None:
    assert_same_checkpoints(one, two, "pretrain")
    first, second = load_file(str(one / "encoder.safetensors")), load_file(str(two / "encoder.safetensors"))
    assert first.keys() == second.keys() and not any(k.startswith("module.") for k in first)
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-4, atol=1e-5, msg=key)
    rows_one, rows_two = _history(one), _history(two)
    assert len(rows_one) == len(rows_two) == 4
    for a, b in zip(rows_one, rows_two):  # losses and affinity means over the global batch
        for key in ("L_ssl", "a_same", "a_diff", "L_D"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5), key


def _history(run_dir, stage: str = "pretrain"):
    with open(run_dir / f"history_{stage}.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The 1-process run of each method, made once for the module's tests."""
    runs = {}

    def run(method: str):
        if method not in runs:
            runs[method] = tmp_path_factory.mktemp(f"one-{method}") / "run"
            sassl(*pretrain_args(method), "--out", runs[method])
        return runs[method]

    return run


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_two_gloo_processes_match_one_process(method, one_process, tmp_path):
    two = tmp_path / "two"
    two_processes([*pretrain_args(method), "--out", two])
    assert_same_pretraining(one_process(method), two)


def test_training_moves_the_weights_compared(one_process, tmp_path):
    """The comparisons above are not vacuous: 4 steps change most weights."""
    sassl(*pretrain_args("moco", steps=0), "--out", tmp_path / "zero")
    start = load_file(str(tmp_path / "zero" / "encoder.safetensors"))
    trained = load_file(str(one_process("moco") / "encoder.safetensors"))
    assert sum(not torch.equal(trained[k], start[k]) for k in start) > len(start) // 2


def test_two_nodes_of_one_process_match_one_process(one_process, tmp_path):
    """Two torchrun "nodes" on this machine, rendezvous over c10d, as ``srun torchrun`` runs them."""
    two = tmp_path / "two-nodes"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        torchrun(
            "--nnodes",
            "2",
            "--node-rank",
            str(rank),
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            "sassl-test",
            args=[*pretrain_args("moco"), "--out", two],
        )
        for rank in (0, 1)
    ]
    finish(*nodes)
    assert_same_pretraining(one_process("moco"), two)


def test_finetuning_on_two_gloo_processes_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    sassl(*FINETUNE, "--out", one)
    two_processes([*FINETUNE, "--out", two])
    assert_same_checkpoints(one, two, "finetune")
    losses_one, losses_two = _history(one, "finetune"), _history(two, "finetune")
    assert [float(r["loss"]) for r in losses_two] == pytest.approx([float(r["loss"]) for r in losses_one], rel=1e-4)
