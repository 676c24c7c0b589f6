"""The one training loop, shared by pretraining and fine-tuning.

A stage hands the loop a :class:`Program`: its modules, optimisers and schedulers, and a
``phases(batch, step)`` generator yielding the losses to minimise, each with the optimiser that
steps on it. Pretraining yields the stain-discriminator phase, then the generator phase
(paper Eq. 5-6, GAN-style alternation); fine-tuning yields one phase. The loop owns everything
else: gradient accumulation, gradient averaging across processes, non-finite losses, atomic
checkpoints and ``--resume``, SIGINT/SIGTERM, progress, ``history.csv`` and TensorBoard.
"""

from __future__ import annotations

import csv
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sassl_core.config import OutputConfig, TrainerConfig
from sassl_core.errors import SasslError, UserError
from sassl_core.files import atomic_write, remove_stale_temporaries
from sassl_core.train.checkpoint import load_checkpoint, save_checkpoint
from sassl_core.train.grad_sync import average_gradients, optimizer_gradients
from sassl_core.train.rundir import CHECKPOINTS, TENSORBOARD
from sassl_core.train.runtime import Runtime, rng_state, set_rng_state


@dataclass
class Phase:
    """One loss of a step and the optimiser that minimises it. ``logs`` values may be 0-d
    tensors still on the device: the loop reads a step's logs back in one go at its end."""

    optimizer: str
    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


@dataclass
class Program:
    """What a stage trains: named modules, optimisers, schedulers and the step's phases."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    phases: Callable[[dict, int], Iterator[Phase]]
    after_step: Callable[[int], None] = lambda step: None
    extra_state: Callable[[], dict] = dict  # e.g. a view generator's RNG
    load_extra_state: Callable[[dict], object] = lambda state: None  # what it returns is ignored


def finite_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
    """Whether ``loss`` and every gradient ``optimizer`` would apply are finite: one reduction,
    the step's only wait for the device before the optimiser steps."""
    grads = optimizer_gradients(optimizer)
    return bool(torch.isfinite(torch.nn.utils.get_total_norm([loss.detach().float().reshape(1), *grads])))


def read_back(logs: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """A step's logs as floats, the device tensors among them copied back in one transfer."""
    tensors = {k: v for k, v in logs.items() if isinstance(v, torch.Tensor)}
    values = torch.stack([t.float().reshape(()) for t in tensors.values()]).tolist() if tensors else []
    read = dict(zip(tensors, values))
    return {k: read[k] if k in read else float(v) for k, v in logs.items()}


class TrainingInterrupted(SasslError):
    """SIGINT/SIGTERM arrived; a checkpoint of the last finished step was written."""


class NonFiniteLoss(UserError):
    """Too many non-finite losses (or gradients) in a row."""


class Trainer:
    """Runs ``program`` for ``total_steps`` optimiser steps over ``batches``."""

    def __init__(
        self,
        stage: str,
        run_dir: Path,
        trainer_cfg: TrainerConfig,
        output_cfg: OutputConfig,
        runtime: Runtime,
        total_steps: int,
    ) -> None:
        self.stage = stage
        self.run_dir = Path(run_dir)
        self.cfg = trainer_cfg
        self.out = output_cfg
        self.rt = runtime
        self.total_steps = total_steps
        self.ckpt_dir = self.run_dir / CHECKPOINTS
        self.last_path = self.ckpt_dir / f"{stage}_last.pt"
        self._stop_signal: int | None = None

    # -- state -------------------------------------------------------------------------------
    def _state(self, program: Program, step: int, batches_seen: int) -> dict:
        return {
            "stage": self.stage,
            "step": step,
            "batches_seen": batches_seen,
            "modules": {k: m.state_dict() for k, m in program.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in program.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in program.schedulers.items()},
            "extra": program.extra_state(),
            "rng": rng_state(),
        }

    def save(self, program: Program, step: int, batches_seen: int) -> None:
        if self.rt.is_main:
            save_checkpoint(self._state(program, step, batches_seen), self.last_path)

    def restore(self, program: Program) -> tuple[int, int]:
        """Load the last checkpoint of this stage; returns (step, batches_seen)."""
        state = load_checkpoint(self.last_path)
        if state.get("stage") != self.stage:
            raise UserError(f"{self.last_path}: checkpoint of stage '{state.get('stage')}', expected '{self.stage}'")
        for key, module in program.modules.items():
            try:
                module.load_state_dict(state["modules"][key])
            except (KeyError, RuntimeError) as err:
                raise UserError(
                    f"{self.last_path}: does not fit this run's {key} "
                    f"(another backbone, method or task?): {str(err).splitlines()[0][:200]}"
                ) from None
        for key, opt in program.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in program.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
        program.load_extra_state(state.get("extra", {}))
        set_rng_state(state["rng"])
        return int(state["step"]), int(state["batches_seen"])

    # -- loop --------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def train_step(self, program: Program, stream: Iterator[dict], step: int) -> tuple[dict, int, int, bool]:
        """One optimiser step over ``grad_accum`` batches: (logs, images, batches used, finite).

        A non-finite loss or gradient ends the step before its optimiser steps (phases already
        stepped, e.g. the discriminator's, keep their update); ``finite`` is then False.
        """
        for module in program.modules.values():
            module.train()
        for opt in program.optimizers.values():
            opt.zero_grad(set_to_none=True)
        logs: dict[str, float | torch.Tensor] = {}
        n_images = 0
        for micro in range(self.cfg.grad_accum):
            batch = next(stream)
            n_images += int(batch["image"].shape[0])
            last_micro = micro == self.cfg.grad_accum - 1
            for phase in program.phases(batch, step):
                (phase.loss / self.cfg.grad_accum).backward()
                logs.update(phase.logs)
                if last_micro:  # a non-finite loss of an earlier micro-batch left non-finite gradients
                    opt = program.optimizers[phase.optimizer]
                    if self.rt.distributed:
                        average_gradients(opt, self.rt.world_size)
                    if not finite_step(opt, phase.loss):
                        return {}, n_images, micro + 1, False
                    opt.step()
                    opt.zero_grad(set_to_none=True)
        return read_back(logs), n_images, self.cfg.grad_accum, True

    def fit(self, program: Program, batches: Callable[[int], Iterator[dict]]) -> list[dict]:
        """Train; ``batches(skip)`` returns the batch stream with its first ``skip`` batches skipped."""
        start, seen = 0, 0
        if self.rt.is_main:
            remove_stale_temporaries(self.last_path)
            remove_stale_temporaries(HistoryWriter.path_for(self.run_dir, self.stage))
        if self.out.resume and self.last_path.exists():
            start, seen = self.restore(program)
        history = HistoryWriter(
            self.run_dir, self.stage, self.rt.is_main and self.out.tensorboard, resume_at=start, enabled=self.rt.is_main
        )
        progress = Progress(self.stage, self.total_steps, self.out.quiet or not self.rt.is_main, self.cfg.log_every)
        stream = batches(seen)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bad_in_a_row = 0
        try:
            for step in range(start, self.total_steps):
                logs, n_images, used, finite = self.train_step(program, stream, step)
                seen += used
                if not finite:
                    bad_in_a_row += 1
                    for opt in program.optimizers.values():
                        opt.zero_grad(set_to_none=True)
                    print(
                        f"warning: {self.stage} step {step + 1}: non-finite loss or gradient, step skipped",
                        file=sys.stderr,
                    )
                    if bad_in_a_row >= self.cfg.max_nonfinite:
                        raise NonFiniteLoss(
                            f"{self.stage} halted at step {step + 1}: non-finite loss or gradient {bad_in_a_row} steps in a row "
                            f"(last good checkpoint kept at {self.last_path})"
                        )
                    continue
                bad_in_a_row = 0
                for sched in program.schedulers.values():
                    sched.step()
                program.after_step(step)
                logs["lr"] = next(iter(program.optimizers.values())).param_groups[0]["lr"]
                history.write(step + 1, logs)
                progress.update(step + 1, logs, n_images)
                done = step + 1
                # History goes to disk before the checkpoint that claims its steps: a kill between
                # the two then leaves extra rows (dropped on resume), never missing ones.
                if done % self.cfg.checkpoint_every == 0 or done == self.total_steps:
                    history.flush()
                    self.save(program, done, seen)
                if self._stop_signal is not None:
                    history.flush()
                    self.save(program, done, seen)
                    raise TrainingInterrupted(
                        f"{self.stage} interrupted by signal {self._stop_signal} after step {done}; "
                        f"checkpoint written to {self.last_path} (continue with --resume)"
                    )
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            history.close()
        return history.rows


class HistoryWriter:
    """Per-step logs to ``history.csv`` (one file per stage) and TensorBoard event files."""

    def __init__(self, run_dir: Path, stage: str, tensorboard: bool, resume_at: int, enabled: bool = True) -> None:
        self.path = self.path_for(run_dir, stage)
        self.stage = stage
        self.enabled = enabled  # only rank 0 writes
        self.rows: list[dict] = []
        if resume_at and self.path.exists():
            with open(self.path) as fh:
                rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]
            self.rows = [r for r in rows if r["step"] <= resume_at]
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD / stage))

    @staticmethod
    def path_for(run_dir: Path, stage: str) -> Path:
        return Path(run_dir) / f"history_{stage}.csv"

    def write(self, step: int, logs: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in logs.items()}}
        self.rows.append(row)
        if self.tb is not None:
            for key, value in logs.items():
                self.tb.add_scalar(f"{self.stage}/{key}", value, step)

    def flush(self) -> None:
        """Rewrite the CSV atomically (called with every checkpoint)."""
        if self.rows and self.enabled:
            keys = sorted({k for r in self.rows for k in r} - {"step"})

            def write(tmp: Path) -> None:
                with open(tmp, "w", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=["step", *keys])
                    writer.writeheader()
                    writer.writerows(self.rows)

            atomic_write(self.path, write)

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            self.tb.close()


class Progress:
    """A console line every ``every`` steps: step, losses, images/s, time left."""

    def __init__(self, stage: str, total: int, quiet: bool, every: int) -> None:
        self.stage, self.total, self.quiet, self.every = stage, total, quiet, every
        self.t0 = time.perf_counter()
        self.images = 0

    def update(self, step: int, logs: dict[str, float], n_images: int) -> None:
        self.images += n_images
        if self.quiet or (step % self.every and step != self.total):
            return
        elapsed = time.perf_counter() - self.t0
        rate = self.images / elapsed if elapsed > 0 else math.nan
        left = elapsed / max(1, step) * (self.total - step) if step else math.nan
        shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k != "lr")
        print(f"[{self.stage}] step {step}/{self.total} {shown} | {rate:.1f} img/s | {left:.0f}s left", file=sys.stderr)
