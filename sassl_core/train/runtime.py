"""Process runtime: device choice, seeding, mixed precision, torchrun/DDP initialisation."""

from __future__ import annotations

import contextlib
import inspect
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sassl_core.errors import UserError

ModelT = TypeVar("ModelT", bound=torch.nn.Module)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(choice: str) -> torch.device:
    """The device ``trainer.device`` names: ``auto`` (CUDA if there is one, else CPU), ``cpu``,
    ``cuda``, ``cuda:N`` or ``mps``; one that this machine lacks is a :class:`UserError`."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"trainer.device: expected a CUDA device for {choice!r}, found none on this machine")
        if device.index is not None and device.index >= count:
            raise UserError(f"trainer.device: expected cuda:0 to cuda:{count - 1}, found {choice!r}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"trainer.device: expected an Apple MPS device for {choice!r}, found none on this machine")
    return device


def init_runtime(device_choice: str) -> Runtime:
    """Set up the device and, under ``torchrun``, the process group (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_choice)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick the fastest kernels
    if world <= 1:
        return Runtime(device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, rank, world, local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op context on CPU (fp32 there)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state() -> dict:
    """RNG states in types that ``torch.load(weights_only=True)`` accepts."""
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # the legacy form is always a tuple; numpy's stubs say tuple | dict
    name, keys, pos, has_gauss, cached = legacy
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_model(model: ModelT, rt: Runtime, sync_bn: bool, channels_last: bool) -> ModelT:
    """Move ``model`` to the device; SyncBatchNorm across processes and channels_last on request."""
    if sync_bn and rt.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(rt.device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@contextlib.contextmanager
def in_turn(rt: Runtime) -> Iterator[None]:
    """Run the body on rank 0 first, then on the first process of every other node, then on the
    rest (two barriers): what rank 0 writes into a folder all nodes share (the patch cache), the
    others find and open; a node-local folder is written once per node. Never two at once."""
    if not rt.distributed:
        yield
        return
    first, node_first = rt.rank == 0, rt.rank != 0 and rt.local_rank == 0
    if not first:
        dist.barrier()
    if not (first or node_first):
        dist.barrier()
    yield
    if first:
        dist.barrier()
    if first or node_first:
        dist.barrier()


def replicate(module: torch.nn.Module, rt: Runtime, find_unused: bool = False) -> torch.nn.Module:
    """``module`` wrapped in :class:`DistributedDataParallel` when a process group is up (torchrun
    with more than one process, or a benchmark's one-process group), else ``module`` itself.

    DDP averages the gradients of the parameters that require one in ~25 MiB buckets, each
    all-reduced as soon as backward has produced it, so communication overlaps the rest of the
    backward pass. Parameters without gradients (momentum targets, frozen encoders) take no part.
    Buffers are not synchronised at each forward pass: each process keeps its own BatchNorm
    statistics, as without DDP (``trainer.sync_bn`` shares them). The wrapper is only for
    calling: state dicts, optimisers and exports use ``module`` itself, so no key gains a
    ``module.`` prefix. ``find_unused``: some trainable parameters may take no part in a step's
    loss (DDP then searches the graph after every forward pass for them).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return module
    device_ids = None
    if rt.device.type == "cuda":
        device_ids = [rt.device.index if rt.device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused, **_NO_BUFFER_SYNC)


# torch 2.14 renamed ``broadcast_buffers``; the new flag still syncs buffers once at wrapping,
# harmless here: every process seeds the same initial weights and statistics
_NO_BUFFER_SYNC: dict[str, Any] = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)
