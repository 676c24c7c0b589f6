"""Shared helpers of the pretraining benchmarks: imports, timing, peak memory, the raw SSL
step that every "raw ceiling" is measured with, the real pretraining step, and JSON output.

Timing: warm-up calls first (cuDNN autotuning, ``torch.compile``, allocator growth stay out of
the figures), then each repeat is timed alone between two device synchronisations and the
median is reported. Image rates count both views of every patch (``2 × batch`` images per
step).
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SSL = ("simsiam", "moco", "byol", "simclr")
MOMENTUM_METHODS = ("moco", "byol")


# -- imports ---------------------------------------------------------------------------------
def ensure_importable() -> None:
    """Make ``sassl_core`` and ``sassl_plugins`` importable from this checkout when the package
    is not installed (e.g. on a bare GPU machine): the repository root goes on ``sys.path`` and
    ``sassl_plugins`` is mapped onto the ``plugins/`` folder, as pyproject.toml's package-dir does."""
    if importlib.util.find_spec("sassl_core") is None:
        sys.path.insert(0, str(REPO))
    if importlib.util.find_spec("sassl_plugins") is None:
        folder = REPO / "plugins"
        spec = importlib.util.spec_from_file_location(
            "sassl_plugins", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["sassl_plugins"] = module
        spec.loader.exec_module(module)


def benchmark_plugins():
    """The plugin set: installed entry points, else the shipped SSL and backbone plugins by module."""
    ensure_importable()
    from sassl_core.plugins import load_plugins

    plugins = load_plugins()
    if set(SHIPPED_SSL) <= set(plugins["ssl"].names()) and "resnet18" in plugins["backbone"].names():
        return plugins
    modules = [(name, importlib.import_module(f"sassl_plugins.ssl.{name}")) for name in SHIPPED_SSL]
    modules.append(("backbones", importlib.import_module("sassl_plugins.backbones.timm_backbones")))
    os.environ["SASSL_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return load_plugins(extra=modules)


# -- timing ----------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds per call (median of ``times_s``) and peak device memory during the timed calls."""

    median_s: float
    times_s: list[float]
    peak_gib: float | None = None
    warmup_s: float = 0.0  # the warm-up calls together (compilation shows up here)

    def rate(self, items: int) -> float:
        return items / self.median_s

    def as_dict(self, items: int | None = None) -> dict:
        out = asdict(self)
        out["min_s"] = min(self.times_s)  # the least disturbed call, for a CPU shared with other work
        if items is not None:
            out["img_per_s"] = round(self.rate(items), 2)
        return out


def measure(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int = 2,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Median time of ``fn()`` over ``repeats`` calls after ``warmup`` calls (wall time unless
    ``clock`` says otherwise, e.g. ``time.process_time``: see :func:`measure_interleaved`).

    >>> t = measure(lambda: sum(range(100)), torch.device("cpu"), warmup=1, repeats=3)
    >>> len(t.times_s), t.median_s > 0
    (3, True)
    """
    start = clock()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warmup_s = clock() - start
    reset_peak_memory(device)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        synchronize(device)
        times.append(clock() - start)
    return Timing(statistics.median(times), times, peak_memory_gib(device), warmup_s)


def measure_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int = 2,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """:func:`measure` for several callables at once, one call of each per round, so that load
    from other processes (a shared CPU) falls on all of them alike. No peak memory: every
    callable's tensors are alive together. On a busy CPU, ``clock=time.process_time`` (the CPU
    time this process computed, blind to the time it waited for a core) with one torch thread
    is far steadier than wall time."""
    warmup_s = dict.fromkeys(fns, 0.0)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            synchronize(device)
            elapsed = clock() - start
            if round_ < warmup:
                warmup_s[name] += elapsed
            else:
                times[name].append(elapsed)
    return {name: Timing(statistics.median(t), t, None, warmup_s[name]) for name, t in times.items()}


def measure_throughput(
    fn: Callable[[], int], device: torch.device, warmup: int = 3, steps: int = 10
) -> tuple[float, float]:
    """(items per second, mean seconds per call) over ``steps`` back-to-back calls of ``fn``
    (each returns its item count). No synchronisation between calls, so a data pipeline that
    cannot keep up shows as a lower rate."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    items = sum(fn() for _ in range(steps))
    synchronize(device)
    elapsed = time.perf_counter() - start
    return items / elapsed, elapsed / steps


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory held by tensors since the last reset (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def release(device: torch.device) -> None:
    """Free cached memory between measurements so that one does not inflate the next's peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


# -- the raw SSL step (the ceiling) ----------------------------------------------------------
class RawSimSiam(nn.Module):
    """Backbone + 3-layer projector + 2-layer predictor and the symmetric negative-cosine loss
    (SimSiam, paper §3.1 Eq. 3), with nothing else. ``momentum=True`` adds a frozen target copy
    of backbone and projector run on both views (the extra forward of MoCo and BYOL), which the
    loss then regresses instead of the stopped-gradient online projection."""

    def __init__(
        self,
        backbone: str,
        image_size: int,
        proj_dim: int = 256,
        proj_hidden: int = 512,
        pred_hidden: int = 128,
        momentum: bool = False,
    ) -> None:
        super().__init__()
        import timm

        ensure_importable()
        from sassl_core.ssl.mlp import build_mlp
        from sassl_core.ssl.momentum import frozen_copy

        kwargs = {"img_size": image_size} if backbone.startswith(("vit", "swin", "deit")) else {}
        self.encoder = timm.create_model(backbone, pretrained=False, num_classes=0, **kwargs)
        self.projector = build_mlp(self.encoder.num_features, proj_hidden, proj_dim, 3, last_batch_norm=True)
        self.predictor = build_mlp(proj_dim, pred_hidden, proj_dim, 2)
        self.target = frozen_copy(self._online()) if momentum else None

    def _online(self) -> nn.Sequential:
        return nn.Sequential(self.encoder, self.projector)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.encoder(x1)), self.projector(self.encoder(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        if self.target is None:
            t1, t2 = z1.detach(), z2.detach()
        else:
            with torch.no_grad():
                t1, t2 = self.target(x1), self.target(x2)
        return -0.5 * (F.cosine_similarity(p1, t2, dim=-1).mean() + F.cosine_similarity(p2, t1, dim=-1).mean())

    @torch.no_grad()
    def ema(self, momentum: float = 0.99) -> None:
        """The momentum update of the target (MoCo/BYOL's ``after_step``); nothing without one."""
        if self.target is not None:
            from sassl_core.ssl.momentum import ema_update

            ema_update(self.target, self._online(), momentum)


@dataclass
class StepSettings:
    """What both sides of a comparison share."""

    backbone: str = "resnet18"
    image_size: int = 64
    batch: int = 16  # patches per step (two views each)
    device: str = "cpu"
    amp: bool = True  # bf16 autocast (CUDA only)
    channels_last: bool = True
    compile: bool = False
    grad_checkpointing: bool = False  # timm's set_grad_checkpointing on the backbone

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def images_per_step(self) -> int:
        return 2 * self.batch


def _autocast(s: StepSettings):
    if s.amp and s.torch_device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def raw_step(s: StepSettings, momentum: bool = False) -> Callable[[], None]:
    """One optimiser step of :class:`RawSimSiam` on random views already on the device."""
    device = s.torch_device
    model = RawSimSiam(s.backbone, s.image_size, momentum=momentum).to(device)
    if s.grad_checkpointing:
        model.encoder.set_grad_checkpointing(True)
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    forward = torch.compile(model) if s.compile else model
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x1 = torch.randn(s.batch, 3, s.image_size, s.image_size, device=device).contiguous(memory_format=fmt)
    x2 = torch.randn_like(x1)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(s):
            loss = forward(x1, x2)
        loss.backward()
        opt.step()
        model.ema()

    return step


# -- the real pretraining step ---------------------------------------------------------------
def pretrain_config(s: StepSettings, method: str = "simsiam", sassl: bool = True, sources_per_batch: int = 4):
    """The run config of a pretraining step with ``s``'s settings; SGD as in the raw step."""
    ensure_importable()
    from sassl_core.config import RunConfig

    return RunConfig.model_validate(
        {
            "data": {"image_size": s.image_size},
            "backbone": {"name": f"timm:{s.backbone}"},  # the very timm model the raw step builds
            "ssl": {"method": method},
            "sassl": {"enabled": sassl},
            "pretrain": {
                "batch_size": s.batch,
                "sources_per_batch": sources_per_batch,
                "steps": 10**6,
                "optim": {"name": "sgd", "lr": 1e-3},
            },
            "trainer": {"device": s.device, "amp": s.amp, "compile": s.compile, "channels_last": s.channels_last},
            "output": {"quiet": True, "tensorboard": False},
        }
    )


def random_patch_batches(s: StepSettings, count: int = 2) -> list[dict]:
    """``count`` batches of random uint8 patches ``(B, P, P, 3)`` already on the device, with
    their patch-table rows (the stain sources follow from :func:`balanced_sources`)."""
    device = s.torch_device
    return [
        {
            "image": torch.randint(0, 256, (s.batch, s.image_size, s.image_size, 3), dtype=torch.uint8, device=device),
            "index": torch.arange(s.batch, device=device),
        }
        for _ in range(count)
    ]


def balanced_sources(batch: int, sources_per_batch: int, device: torch.device) -> torch.Tensor:
    """Row → stain source for a batch of ``sources_per_batch`` × ``batch / sources_per_batch`` rows."""
    return torch.arange(batch, device=device) // max(1, batch // sources_per_batch)


@dataclass
class RealStep:
    """One real pretraining step: ``Trainer.train_step`` on the program of
    ``build_pretrain_program`` (device views, SSL method, stain adversary when enabled), then the
    schedulers and ``after_step`` (momentum update) as ``Trainer.fit`` runs them."""

    program: object
    model: nn.Module
    trainer: object
    stream: object
    images_per_step: int
    step: int = field(default=0)

    def __call__(self) -> int:
        _, n_images, _, finite = self.trainer.train_step(self.program, self.stream, self.step)
        if not finite:
            raise RuntimeError(f"benchmark step {self.step}: non-finite loss")
        for sched in self.program.schedulers.values():
            sched.step()
        self.program.after_step(self.step)
        self.step += 1
        return 2 * n_images


def real_step(cfg, plugins, source_of: torch.Tensor, stream, grad_checkpointing: bool = False) -> RealStep:
    """A :class:`RealStep` for ``cfg`` reading batches from the iterator ``stream``."""
    from sassl_core.train.pretrain import build_pretrain_program
    from sassl_core.train.runtime import Runtime
    from sassl_core.train.trainer import Trainer

    rt = Runtime(torch.device(cfg.trainer.device))
    program, model = build_pretrain_program(cfg, plugins, rt, source_of)
    if grad_checkpointing:
        model.encoder.set_grad_checkpointing(True)
    # train_step writes nothing; the run folder only names where checkpoints would go
    trainer = Trainer(
        "pretrain", Path(tempfile.gettempdir()) / "sassl-benchmark", cfg.trainer, cfg.output, rt, cfg.pretrain.steps
    )
    return RealStep(program, model, trainer, stream, 2 * cfg.pretrain.batch_size)


def real_step_on_device(
    s: StepSettings, plugins, method: str = "simsiam", sassl: bool = True, sources_per_batch: int = 4
) -> RealStep:
    """A real step fed random uint8 patches already on the device (no data loading)."""
    cfg = pretrain_config(s, method, sassl, sources_per_batch)
    source_of = balanced_sources(s.batch, sources_per_batch, s.torch_device)
    stream = itertools.cycle(random_patch_batches(s))
    return real_step(cfg, plugins, source_of, stream, s.grad_checkpointing)


# -- output ----------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    """Hardware and software the figures were measured on."""
    import timm

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


def write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


# -- the end-to-end data path ----------------------------------------------------------------
def synthetic_patch_cache(folder: Path, sources: int, per_source: int, patch_size: int, seed: int = 0):
    """A patch table and its :class:`~sassl_core.wsi.cache.PatchCache` written straight from
    random uint8 arrays (no slide is read, so OpenSlide is not needed); ``sources`` slides of
    ``per_source`` patches each. Reading it back is the same memory-mapped path as a cache built
    from slides."""
    import numpy as np

    from sassl_core.wsi.cache import PatchCache, write_header
    from sassl_core.wsi.patches import PatchTable

    n = sources * per_source
    rows = [
        {
            "slide": f"synthetic/slide{i // per_source}.tiff",
            "x": (i % per_source) * patch_size,
            "y": 0,
            "level": 0,
            "read_size": patch_size,
            "source": f"slide{i // per_source}",
            "slide_id": f"slide{i // per_source}",
            "split": "train",
        }
        for i in range(n)
    ]
    table = PatchTable.from_rows(rows, patch_size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = np.memmap(folder / "images.u8", np.uint8, "w+", shape=(n, patch_size, patch_size, 3))
    rng = np.random.default_rng(seed)
    for start in range(0, n, 256):
        images[start : start + 256] = rng.integers(0, 256, images[start : start + 256].shape, dtype=np.uint8)
    images.flush()
    del images
    write_header(folder, table, with_masks=False)
    return table, PatchCache.open(folder, table)


def cache_step(
    s: StepSettings, plugins, table, cache, workers: int, method: str = "simsiam", sources_per_batch: int = 4
) -> RealStep:
    """A real step (adversary on) fed as ``pretrain`` feeds it: slide-balanced batches of the
    patch cache through the DataLoader (``workers`` processes, pinned memory), views on the device."""
    from sassl_core.train.data import batch_stream, source_ids
    from sassl_core.train.pretrain import balanced_sampler
    from sassl_core.train.runtime import Runtime
    from sassl_core.wsi.dataset import PatchDataset

    cfg = pretrain_config(s, method, sassl=True, sources_per_batch=sources_per_batch)
    rt = Runtime(s.torch_device)
    ids = source_ids(table, cfg.sassl.source_key)
    sampler = balanced_sampler(cfg, ids, rt)

    def index_batches():
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from sampler

    stream = batch_stream(PatchDataset(table, cache), index_batches, workers)(0)
    return real_step(cfg, plugins, torch.as_tensor(ids, device=s.torch_device), stream, s.grad_checkpointing)
