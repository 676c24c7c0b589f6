"""The one training loop, shared by pretraining and fine-tuning.

A stage hands the loop a :class:`Program`: its modules, optimisers and schedulers, and a
``phases(batch, step)`` generator yielding the losses to minimise, each with the optimiser that
steps on it. Pretraining yields the stain-discriminator phase, then the generator phase
(paper Eq. 5-6, GAN-style alternation); fine-tuning yields one phase. The loop owns everything
else: gradient accumulation (DistributedDataParallel's all-reduce held back, ``no_sync``, on all
micro-batches but the last), non-finite losses, atomic checkpoints and ``--resume``,
SIGINT/SIGTERM, progress, ``history.csv`` and TensorBoard.
"""

from __future__ import annotations

import csv
import math
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sassl_core.config import OutputConfig, TrainerConfig
from sassl_core.errors import SasslError, UserError
from sassl_core.files import atomic_write, remove_stale_temporaries
from sassl_core.train.checkpoint import load_latest, previous_path, save_checkpoint
from sassl_core.train.rundir import CHECKPOINTS, TENSORBOARD
from sassl_core.train.runtime import Runtime, rng_state, set_rng_state

#: Per-step logs of how the step ran (besides ``lr/<optimiser>`` and ``grad_norm/<optimiser>``),
#: recorded in the history and TensorBoard but not on the progress line.
DIAGNOSTICS = ("step_time", "data_wait", "images_per_s")


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
    # the modules the phases call, DistributedDataParallel wrappers under torchrun: their gradient
    # all-reduce runs inside the last micro-batch's backward; ``no_sync`` holds it back on the others
    replicas: list[nn.Module] = field(default_factory=list)


def optimizer_gradients(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The gradients ``optimizer`` would apply, in parameter order."""
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def finite_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """Whether ``loss`` and every gradient ``optimizer`` would apply are finite (one read-back,
    the step's only wait for the device before the optimiser steps), and the gradients' total
    L2 norm as a device tensor."""
    grads = optimizer_gradients(optimizer)
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
    checked = torch.stack([norm.float(), loss.detach().float().reshape(())])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(checked)  # one verdict for all processes: every one skips the step, or none does
    return bool(torch.isfinite(checked).all()), norm


def read_back(logs: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """A step's logs as floats, the device tensors among them copied back in one transfer; across
    processes each is the mean over them (one all-reduce), i.e. over the global batch."""
    tensors = {k: v for k, v in logs.items() if isinstance(v, torch.Tensor)}
    values = []
    if tensors:
        stacked = torch.stack([t.detach().float().reshape(()) for t in tensors.values()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stacked)  # SUM: gloo has no AVG
            stacked /= dist.get_world_size()
        values = stacked.tolist()
    read = dict(zip(tensors, values))
    return {k: read[k] if k in read else float(v) for k, v in logs.items()}


def _settings(group: dict) -> dict:
    """An optimiser parameter group's settings (learning rate, weight decay, ...), without its parameters."""
    return {k: v for k, v in group.items() if k != "params"}


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

    def has_checkpoint(self) -> bool:
        return self.last_path.is_file() or previous_path(self.last_path).is_file()

    def restore(self, program: Program) -> tuple[int, int]:
        """Load the last good checkpoint of this stage (:func:`load_latest`); returns (step, batches_seen).

        The learning-rate settings stay those of this run's config (a ``--resume-with-changes``
        learning rate applies from the resumed step on); the rest of the optimiser and scheduler
        state comes from the checkpoint.
        """
        state, path = load_latest(self.last_path)
        if state.get("stage") != self.stage:
            raise UserError(f"{path}: checkpoint of stage '{state.get('stage')}', expected '{self.stage}'")
        for key, module in program.modules.items():
            try:
                module.load_state_dict(state["modules"][key])
            except (KeyError, RuntimeError) as err:
                raise UserError(
                    f"{path}: does not fit this run's {key} "
                    f"(another backbone, method or task?): {str(err).splitlines()[0][:200]}"
                ) from None
        configured = {k: [_settings(g) for g in o.param_groups] for k, o in program.optimizers.items()}
        base_lrs = {k: list(s.base_lrs) for k, s in program.schedulers.items()}
        for key, opt in program.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
            for group, settings in zip(opt.param_groups, configured[key]):
                group.update(settings)
        for key, sched in program.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
            sched.base_lrs = base_lrs[key]
            with warnings.catch_warnings():  # get_lr() outside step(): the closed form is wanted here
                warnings.simplefilter("ignore", UserWarning)
                rates = sched.get_lr()
            for group, lr in zip(sched.optimizer.param_groups, rates):
                group["lr"] = lr
            sched._last_lr = list(rates)  # what get_last_lr() reports
        program.load_extra_state(state.get("extra", {}))
        set_rng_state(state["rng"])
        return int(state["step"]), int(state["batches_seen"])

    # -- loop --------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop; under torchrun, whether any process got one (a scalar
        all-reduce), so that every process stops after the same step and rank 0 checkpoints it."""
        if not self.rt.distributed:
            return self._stop_signal is not None
        flag = torch.tensor(float(self._stop_signal is not None), device=self.rt.device)
        dist.all_reduce(flag)
        return bool(flag.item())

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
        n_images, data_wait = 0, 0.0
        for micro in range(self.cfg.grad_accum):
            t0 = time.perf_counter()
            batch = next(stream)
            data_wait += time.perf_counter() - t0
            n_images += int(batch["image"].shape[0])
            last_micro = micro == self.cfg.grad_accum - 1
            with ExitStack() as held_back:
                if not last_micro:
                    for replica in program.replicas:
                        if isinstance(replica, DistributedDataParallel):
                            held_back.enter_context(replica.no_sync())
                for phase in program.phases(batch, step):
                    (phase.loss / self.cfg.grad_accum).backward()  # DDP: gradients arrive averaged
                    logs.update(phase.logs)
                    if last_micro:  # a non-finite loss of an earlier micro-batch left non-finite gradients
                        opt = program.optimizers[phase.optimizer]
                        finite, norm = finite_step(opt, phase.loss)
                        if not finite:
                            return {}, n_images, micro + 1, False
                        logs[f"grad_norm/{phase.optimizer}"] = norm
                        opt.step()
                        opt.zero_grad(set_to_none=True)
        logs["data_wait"] = data_wait
        return read_back(logs), n_images, self.cfg.grad_accum, True

    def fit(self, program: Program, batches: Callable[[int], Iterator[dict]]) -> list[dict]:
        """Train; ``batches(skip)`` returns the batch stream with its first ``skip`` batches skipped."""
        start, seen = 0, 0
        if self.rt.is_main:
            remove_stale_temporaries(self.last_path)
            remove_stale_temporaries(HistoryWriter.path_for(self.run_dir, self.stage))
        if self.out.resume and self.has_checkpoint():
            start, seen = self.restore(program)
        history = HistoryWriter(
            self.run_dir, self.stage, self.rt.is_main and self.out.tensorboard, resume_at=start, enabled=self.rt.is_main
        )
        progress = Progress(self.stage, self.total_steps, self.out.quiet or not self.rt.is_main, self.cfg.log_every)
        stream = batches(seen)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bad_in_a_row = skipped = 0
        try:
            for step in range(start, self.total_steps):
                rates = {f"lr/{k}": o.param_groups[0]["lr"] for k, o in program.optimizers.items()}  # this step's
                t0 = time.perf_counter()
                logs, n_images, used, finite = self.train_step(program, stream, step)
                step_time = time.perf_counter() - t0
                seen += used
                if not finite:
                    bad_in_a_row += 1
                    skipped += 1
                    for opt in program.optimizers.values():
                        opt.zero_grad(set_to_none=True)
                    print(
                        f"warning: {self.stage} step {step + 1}: non-finite loss or gradient, step skipped",
                        file=sys.stderr,
                    )
                    if bad_in_a_row >= self.cfg.max_nonfinite:
                        raise NonFiniteLoss(
                            f"{self.stage} halted at step {step + 1}: non-finite loss or gradient {bad_in_a_row} steps in a row "
                            f"({self._kept()})"
                        )
                    continue
                bad_in_a_row = 0
                for sched in program.schedulers.values():
                    sched.step()
                program.after_step(step)
                logs.update(rates, step_time=step_time, images_per_s=n_images / max(step_time, 1e-9))
                history.write(step + 1, logs)
                progress.update(step + 1, logs, n_images)
                done = step + 1
                # History goes to disk before the checkpoint that claims its steps: a kill between
                # the two then leaves extra rows (dropped on resume), never missing ones.
                if done % self.cfg.checkpoint_every == 0 or done == self.total_steps:
                    history.flush()
                    self.save(program, done, seen)
                if self._stop_requested():
                    history.flush()
                    self.save(program, done, seen)
                    raise TrainingInterrupted(
                        f"{self.stage} interrupted by signal {self._stop_signal or 'sent to another process'} "
                        f"after step {done}; "
                        f"checkpoint written to {self.last_path} (continue with --resume)"
                    )
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            progress.close()
            history.close()
        self._check_skipped(skipped, self.total_steps - start, resumed=start > 0)
        return history.rows

    def _kept(self) -> str:
        """What a halted stage leaves to resume from."""
        if self.last_path.is_file():
            return f"last good checkpoint kept at {self.last_path}"
        return "no checkpoint was written yet"

    def _check_skipped(self, skipped: int, attempted: int, resumed: bool) -> None:
        """A stage whose every step was skipped trained nothing: an error (nothing is exported);
        more than half skipped: a warning."""
        if attempted and skipped == attempted and not resumed:
            raise NonFiniteLoss(
                f"{self.stage}: no step succeeded ({skipped} of {attempted} skipped as non-finite); nothing exported"
            )
        if skipped * 2 > attempted:
            print(
                f"warning: {self.stage}: {skipped} of {attempted} steps skipped as non-finite "
                "(lower the learning rate, or check the data)",
                file=sys.stderr,
            )


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
    """A console line every ``every`` steps: step, losses, images/s, time left; on a terminal
    also a tqdm bar of the steps, the lines printed above it (``run.log`` keeps the lines only)."""

    def __init__(self, stage: str, total: int, quiet: bool, every: int) -> None:
        self.stage, self.total, self.quiet, self.every = stage, total, quiet, every
        self.t0 = time.perf_counter()
        self.images = 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=stage, unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(self, step: int, logs: dict[str, float], n_images: int) -> None:
        self.images += n_images
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        if self.quiet or (step % self.every and step != self.total):
            return
        elapsed = time.perf_counter() - self.t0
        rate = self.images / elapsed if elapsed > 0 else math.nan
        left = elapsed / max(1, step) * (self.total - step) if step else math.nan
        shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k not in DIAGNOSTICS and "/" not in k)
        line = f"[{self.stage}] step {step}/{self.total} {shown} | {rate:.1f} img/s | {left:.0f}s left"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
