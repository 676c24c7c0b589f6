"""Numerical faults and interruptions: a non-finite step is skipped (or halts the run) and never
reaches the weights or the last good checkpoint; SIGINT/SIGTERM write a checkpoint and exit
cleanly; SIGKILL at any moment leaves the last checkpoint intact and ``--resume`` finishes the
run with the weights an uninterrupted run gets."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sassl_core.config import OutputConfig, TrainerConfig
from sassl_core.files import atomic_write
from sassl_core.train.checkpoint import load_checkpoint, save_checkpoint
from sassl_core.train.runtime import Runtime
from sassl_core.train.trainer import NonFiniteLoss, Phase, Program, Trainer, TrainingInterrupted
from tests.pipeline.tiny import TINY

# --- the loop on a two-weight model ---------------------------------------------------------


def _batches(skip: int):
    """Batch ``k`` depends on ``k`` alone, so a resumed stream continues the same sequence."""
    k = skip
    while True:
        yield {"image": torch.randn(4, 2, generator=torch.Generator().manual_seed(k))}
        k += 1


def _program(fault=lambda step: None) -> tuple[Program, nn.Linear]:
    """``fault(step)`` may return 'loss' (a NaN loss), 'grad' (finite loss, NaN gradient),
    'loss-only' (NaN loss, finite gradient) or 'signal:<n>' (send signal n to this process during
    the step)."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def phases(batch, step):
        loss = model(batch["image"]).pow(2).mean()
        kind = fault(step) or ""
        if kind == "loss":
            loss = loss * float("nan")
        elif kind == "loss-only":
            loss = loss + torch.tensor(float("nan"))  # a logged term without gradient
        elif kind == "grad":
            loss = loss + torch.sqrt(model.weight.sum() * 0)  # value 0, gradient NaN
        elif kind.startswith("signal:"):
            os.kill(os.getpid(), int(kind.split(":")[1]))
        yield Phase("main", loss, {"loss": loss.detach(), "constant": 1.0})  # device tensors and floats

    return Program({"model": model}, {"main": opt}, {}, phases), model


def _trainer(run_dir: Path, steps: int, resume: bool = False, **trainer) -> Trainer:
    cfg = TrainerConfig(**{"checkpoint_every": 1, **trainer})
    out = OutputConfig(dir=run_dir, resume=resume, quiet=True, tensorboard=False)
    return Trainer("pretrain", run_dir, cfg, out, Runtime(torch.device("cpu")), steps)


def _fit(trainer: Trainer, program: Program) -> tuple[list[dict], str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rows = trainer.fit(program, _batches)
    return rows, err.getvalue()


def test_nonfinite_loss_skips_the_step_with_a_warning(tmp_path):
    program, model = _program(lambda step: "loss" if step == 2 else None)
    rows, err = _fit(_trainer(tmp_path, 5), program)
    assert "warning: pretrain step 3: non-finite loss or gradient, step skipped" in err
    assert [r["step"] for r in rows] == [1, 2, 4, 5]
    assert torch.isfinite(model.weight).all()
    assert load_checkpoint(tmp_path / "checkpoints" / "pretrain_last.pt")["step"] == 5


def test_nonfinite_loss_with_finite_gradients_is_skipped_too(tmp_path):
    program, model = _program(lambda step: "loss-only" if step == 1 else None)
    trainer = _trainer(tmp_path, 3)
    rows, err = _fit(trainer, program)
    assert "pretrain step 2: non-finite loss or gradient, step skipped" in err
    assert [r["step"] for r in rows] == [1, 3]
    assert all(math.isfinite(r["loss"]) and r["constant"] == 1.0 for r in rows)


def test_nonfinite_gradient_never_reaches_the_weights(tmp_path):
    program, model = _program(lambda step: "grad" if step == 1 else None)
    rows, err = _fit(_trainer(tmp_path, 3), program)
    assert "pretrain step 2: non-finite loss or gradient, step skipped" in err
    assert [r["step"] for r in rows] == [1, 3]
    assert torch.isfinite(model.weight).all() and torch.isfinite(model.bias).all()


@pytest.mark.parametrize("fault", ["loss", "grad"])
def test_nonfinite_in_a_row_halts_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, fault):
    program, model = _program(lambda step: fault if step >= 2 else None)
    trainer = _trainer(tmp_path, 10, max_nonfinite=3)
    with pytest.raises(NonFiniteLoss, match=r"pretrain halted at step 5: non-finite loss or gradient 3 steps in a row"):
        _fit(trainer, program)
    state = load_checkpoint(trainer.last_path)
    assert state["step"] == 2
    assert torch.equal(state["modules"]["model"]["weight"], model.weight.detach())  # skipped steps changed nothing
    assert torch.isfinite(state["modules"]["model"]["weight"]).all()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_writes_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path, signum):
    reference, ref_model = _program()
    _fit(_trainer(tmp_path / "reference", 6), reference)

    program, _ = _program(lambda step: f"signal:{int(signum)}" if step == 2 else None)
    trainer = _trainer(tmp_path / "run", 6)
    with pytest.raises(
        TrainingInterrupted, match=f"pretrain interrupted by signal {int(signum)} after step 3; checkpoint written"
    ):
        _fit(trainer, program)
    assert load_checkpoint(trainer.last_path)["step"] == 3
    assert signal.getsignal(signum) is not trainer._on_signal  # handlers restored

    resumed, model = _program()
    rows, _ = _fit(_trainer(tmp_path / "run", 6, resume=True), resumed)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert torch.equal(model.weight, ref_model.weight) and torch.equal(model.bias, ref_model.bias)


def test_a_write_cut_short_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "pretrain_last.pt"
    save_checkpoint({"step": 4}, path)

    def dies_midway(tmp):
        Path(tmp).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, dies_midway)
    assert load_checkpoint(path)["step"] == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["pretrain_last.pt"]


def test_history_of_every_checkpointed_step_is_on_disk_before_the_checkpoint(tmp_path, monkeypatch):
    """A SIGKILL right after a checkpoint write must not lose the rows of the steps it claims."""
    on_disk_at_save = {}
    real_save = Trainer.save

    def recording_save(self, program, step, batches_seen):
        on_disk_at_save[step] = _steps(self.run_dir)
        real_save(self, program, step, batches_seen)

    monkeypatch.setattr(Trainer, "save", recording_save)
    program, _ = _program()
    _fit(_trainer(tmp_path, 6, checkpoint_every=2), program)
    assert on_disk_at_save == {2: [1, 2], 4: [1, 2, 3, 4], 6: [1, 2, 3, 4, 5, 6]}


def test_temp_files_left_by_a_kill_are_removed_when_training_starts(tmp_path):
    stale = [tmp_path / "checkpoints" / ".pretrain_last.pt.tmp12345", tmp_path / ".history_pretrain.csv.tmp12345"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    program, _ = _program()
    _fit(_trainer(tmp_path, 1), program)
    assert not [p for p in stale if p.exists()]


# --- the real command line in a subprocess -------------------------------------------------

KILL_RUN = [*TINY, "--steps", 10, "--seed", 3, "--set", "trainer.checkpoint_every=2", "--no-sassl"]


def _start(out: Path, *extra) -> subprocess.Popen:
    args = [sys.executable, "-m", "sassl_core.app.cli", "pretrain", "--out", out, *KILL_RUN, *extra]
    return subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(run: Path) -> list[int]:
    with open(run / "history_pretrain.csv") as fh:
        return [int(float(r["step"])) for r in csv.DictReader(fh)]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigint_to_the_cli_exits_130_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for(out / "checkpoints" / "pretrain_last.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    [line] = [l for l in err.splitlines() if "interrupted" in l]
    done = load_checkpoint(out / "checkpoints" / "pretrain_last.pt")["step"]
    assert line.startswith(f"pretrain interrupted by signal 2 after step {done}; checkpoint written to ")
    assert line.endswith("(continue with --resume)")
    finished = _start(out, "--resume")
    _, err = finished.communicate(timeout=600)
    assert finished.returncode == 0, err[-2000:]
    assert _steps(out) == list(range(1, 11))


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    started = time.monotonic()
    proc = _start(reference)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    duration = time.monotonic() - started  # kills land anywhere from start-up to the last step

    out = tmp_path / "run"
    rng = random.Random(os.environ.get("SASSL_KILL_SEED", time.time_ns()))
    killed_after = []
    for attempt in range(3):
        proc = _start(out, *(["--resume"] if attempt else []))
        time.sleep(rng.uniform(0.5, duration))
        if proc.poll() is None:
            proc.kill()
            killed_after.append(
                load_checkpoint(out / "checkpoints" / "pretrain_last.pt")["step"]
                if (out / "checkpoints" / "pretrain_last.pt").exists()
                else 0
            )
        proc.communicate()
    finished = _start(out, "--resume")
    _, err = finished.communicate(timeout=600)
    assert finished.returncode == 0, f"killed after checkpoints {killed_after}:\n{err[-2000:]}"
    assert _steps(out) == list(range(1, 11))
    want, got = load_file(str(reference / "encoder.safetensors")), load_file(str(out / "encoder.safetensors"))
    assert want.keys() == got.keys()
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, (
        f"killed after checkpoints {killed_after}: {len(different)} tensors differ, e.g. {different[:3]}"
    )
    assert not list(out.rglob(".*tmp*"))
