"""Every GPU figure of the pretraining performance targets, in one run of one script.

    python benchmarks/gpu_suite.py [--out DIR_OR_FILE] [--budget-s 300] [--skip SECTION,...]
    python benchmarks/gpu_suite.py --smoke          # tiny sizes on the CPU: every code path once

Each target is a ratio of two figures measured in this one process (never a timed test):

* ``step``     real pretraining step (SimSiam + stain discriminator, ResNet-50, 224 px, 256 pairs,
               bf16, channels_last) vs the raw SimSiam-shaped step on random on-device tensors
               (target ≥ 0.90); the same step without the discriminator (overhead ≤ 5 % of the
               step); peak GPU memory vs the raw step's (≤ 1.10×);
* ``methods``  MoCo v2, BYOL, SimCLR real steps vs their own raw ceilings (≥ 0.90; the MoCo/BYOL
               raw step includes the momentum target's forward and EMA update);
* ``e2e``      end-to-end throughput: slide-balanced batches from the patch cache through the
               DataLoader, views on the GPU, discriminator on, vs the raw ceiling (≥ 0.80);
* ``hires``    512 px at the largest batch that fits, without and with activation checkpointing;
* ``ddp``      the real step through DistributedDataParallel in a one-process group (NCCL on a
               GPU, gloo on the CPU) vs the same step without one: DDP's own cost per step;
* ``gather``   all_gather / all-reduce cost at 8 GPUs, estimated from the measured step and the
               bytes each collective moves (ring model, assumed NVLink bus bandwidth);
* ``compile``  the ``step`` comparison with ``torch.compile`` on both sides (≥ 0.90); last,
               because compiling takes a minute or two, and skipped when the budget is spent.

Needs torch, timm, numpy, pydantic, pluggy, PyYAML, Pillow and this checkout (installed or not:
see ``common.ensure_importable``). Without OpenSlide a placeholder module stands in: no slide is
read, the patch cache is written from synthetic uint8 arrays. Writes ``gpu_suite.json`` and
``gpu_suite.txt`` to ``--out`` (default ``$OUT`` when set, else ``runs/benchmarks``) and
prints the table last.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import socket
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import StepSettings, Timing

SECTIONS = ("step", "ddp", "methods", "e2e", "hires", "gather", "compile")
COMPILE_NEEDS_S = 120  # budget left below which the compile section is skipped
MAX_HIRES_BATCH = 1024  # the largest-batch search stops here (activation checkpointing frees a lot)
DDP_BUCKET_BYTES = 25 * 2**20  # DistributedDataParallel's default bucket_cap_mb


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the issue's on a GPU, tiny ones for ``--smoke``."""

    step: StepSettings
    sources: int  # stain sources per batch (k of the k x m sampler)
    hires_size: int
    hires_probes: tuple[int, int]  # two batch sizes whose peak memory fixes the linear memory model
    cache_sources: int
    cache_per_source: int
    workers: int
    warmup: int
    repeats: int
    e2e_steps: int


GPU_PLAN = Plan(
    step=StepSettings(backbone="resnet50", image_size=224, batch=256, device="cuda", amp=True, channels_last=True),
    sources=32,
    hires_size=512,
    hires_probes=(16, 48),
    cache_sources=64,
    cache_per_source=48,
    workers=min(8, max(1, (os.cpu_count() or 2) - 2)),
    warmup=3,
    repeats=6,
    e2e_steps=20,
)
SMOKE_PLAN = Plan(
    step=StepSettings(backbone="test_resnet", image_size=32, batch=8, device="cpu", amp=False, channels_last=True),
    sources=2,
    hires_size=48,
    hires_probes=(4, 8),
    cache_sources=4,
    cache_per_source=8,
    workers=1,
    warmup=1,
    repeats=1,
    e2e_steps=2,
)


# -- environment -----------------------------------------------------------------------------
class _Missing(types.ModuleType):
    """Stands in for an optional package that is not installed; any use names what is missing."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # introspection (inspect, pickle) probes dunders with hasattr
            raise AttributeError(attr)
        raise ImportError(f"{self.__name__} is not installed here (needed for {self.__name__}.{attr})")


def stand_in_for_missing(names: tuple[str, ...] = ("openslide",)) -> list[str]:
    """Put a :class:`_Missing` module in place of each of ``names`` that cannot be imported."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except (ImportError, OSError):
            sys.modules[name] = _Missing(name)
            missing.append(name)
    return missing


# -- measuring -------------------------------------------------------------------------------
class Suite:
    """The plan, the plugins, the results so far and the time budget."""

    def __init__(self, plan: Plan, budget_s: float) -> None:
        self.plan = plan
        self.device = plan.step.torch_device
        self.plugins = common.benchmark_plugins()
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.results: dict[str, dict] = {}

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    def time_case(
        self,
        build: Callable[[], Callable[[], object]],
        images: int,
        warmup: int | None = None,
        repeats: int | None = None,
    ) -> dict:
        """Build a step, time it alone, free it; img/s counts ``images`` per step."""
        common.release(self.device)
        step = build()
        timing: Timing = common.measure(step, self.device, warmup or self.plan.warmup, repeats or self.plan.repeats)
        del step
        common.release(self.device)
        return timing.as_dict(images)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


def section_step(suite: Suite, compile: bool = False) -> dict:
    s = replace(suite.plan.step, compile=compile)
    k, plugins = suite.plan.sources, suite.plugins
    cases = {
        "raw": lambda: common.raw_step(s),
        "sassl": lambda: common.real_step_on_device(s, plugins, "simsiam", True, k),
    }
    if not compile:
        cases["plain"] = lambda: common.real_step_on_device(s, plugins, "simsiam", False, k)
    timings = {name: suite.time_case(build, s.images_per_step) for name, build in cases.items()}
    out = {
        "settings": vars(s) | {"sources_per_batch": k},
        "cases": timings,
        "ratio_real_over_raw": _ratio(timings["sassl"]["img_per_s"], timings["raw"]["img_per_s"]),
        "peak_ratio_real_over_raw": _ratio(timings["sassl"]["peak_gib"], timings["raw"]["peak_gib"]),
    }
    if not compile:
        out["discriminator_overhead"] = round(1 - timings["plain"]["median_s"] / timings["sassl"]["median_s"], 4)
    return out


@contextmanager
def one_process_group(device: torch.device) -> Iterator[str]:
    """A torch.distributed group of this process alone (NCCL on a GPU, else gloo); yields the backend."""
    backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield backend
    finally:
        dist.destroy_process_group()


def section_ddp(suite: Suite) -> dict:
    """The real step (SimSiam + discriminator) with its SSL model and D wrapped in
    DistributedDataParallel, as under torchrun, vs the same step unwrapped, timed in turns."""
    s, k = suite.plan.step, suite.plan.sources
    plain = common.real_step_on_device(s, suite.plugins, "simsiam", True, k)
    with one_process_group(suite.device) as backend:
        ddp = common.real_step_on_device(s, suite.plugins, "simsiam", True, k)
        wrapped = [type(r).__name__ for r in ddp.program.replicas]
        timings = common.measure_interleaved(
            {"plain": plain, "ddp": ddp}, suite.device, suite.plan.warmup, suite.plan.repeats
        )
    del plain, ddp
    return {
        "backend": backend,
        "replicas": wrapped,
        "cases": {name: t.as_dict(s.images_per_step) for name, t in timings.items()},
        "ratio_ddp_over_plain": _ratio(timings["ddp"].median_s, timings["plain"].median_s),
    }


def section_methods(suite: Suite) -> dict:
    s, k = suite.plan.step, suite.plan.sources
    out = {}
    for method in ("moco", "byol", "simclr"):
        momentum = method in common.MOMENTUM_METHODS
        raw = suite.time_case(lambda: common.raw_step(s, momentum=momentum), s.images_per_step)
        real = suite.time_case(lambda: common.real_step_on_device(s, suite.plugins, method, True, k), s.images_per_step)
        out[method] = {"raw": raw, "sassl": real, "ratio_real_over_raw": _ratio(real["img_per_s"], raw["img_per_s"])}
    return out


def section_e2e(suite: Suite) -> dict:
    plan, s = suite.plan, suite.plan.step
    with tempfile.TemporaryDirectory(prefix="sassl-cache-") as folder:
        start = time.perf_counter()
        table, cache = common.synthetic_patch_cache(
            Path(folder), plan.cache_sources, plan.cache_per_source, s.image_size
        )
        write_s = time.perf_counter() - start
        step = common.cache_step(s, suite.plugins, table, cache, plan.workers, sources_per_batch=plan.sources)
        rate, per_step = common.measure_throughput(step, suite.device, warmup=plan.warmup, steps=plan.e2e_steps)
        del step
    common.release(suite.device)
    raw = suite.results.get("step", {}).get("cases", {}).get("raw", {}).get("img_per_s")
    return {
        "patches_in_cache": len(table),
        "cache_write_s": round(write_s, 2),
        "workers": plan.workers,
        "steps": plan.e2e_steps,
        "img_per_s": round(rate, 2),
        "s_per_step": round(per_step, 4),
        "raw_img_per_s": raw,
        "ratio_e2e_over_raw": _ratio(rate, raw),
    }


def largest_batch(suite: Suite, s: StepSettings, probes: tuple[int, int]) -> tuple[int, dict]:
    """The largest batch of the real step that fits in 92 % of device memory, from a linear fit
    of peak memory over two probe batches; backs off by an eighth after an out-of-memory error."""
    k = suite.plan.sources
    peaks = {}
    for batch in probes:
        sb = replace(s, batch=batch)
        peaks[batch] = suite.time_case(
            lambda: common.real_step_on_device(sb, suite.plugins, "simsiam", True, min(k, batch // 2)),
            sb.images_per_step,
            warmup=1,
            repeats=1,
        )["peak_gib"]
    if suite.device.type != "cuda":  # no device memory to fit: the larger probe stands in
        return probes[1], {"probe_peaks_gib": peaks}
    (b0, p0), (b1, p1) = peaks.items()
    per_patch = (p1 - p0) / (b1 - b0)
    capacity = 0.92 * torch.cuda.get_device_properties(suite.device).total_memory / 2**30
    batch = int((capacity - (p0 - per_patch * b0)) / per_patch) // 8 * 8
    model = {"probe_peaks_gib": peaks, "gib_per_patch": round(per_patch, 4), "capacity_gib": round(capacity, 1)}
    return min(max(batch, probes[1]), MAX_HIRES_BATCH), model


def section_hires(suite: Suite) -> dict:
    base = replace(suite.plan.step, image_size=suite.plan.hires_size)
    out = {}
    for checkpointing in (False, True):
        s = replace(base, grad_checkpointing=checkpointing)
        batch, memory_model = largest_batch(suite, s, suite.plan.hires_probes)
        k = min(suite.plan.sources, batch // 2)
        for _attempt in range(4):
            sb = replace(s, batch=batch)
            try:
                real = suite.time_case(
                    lambda: common.real_step_on_device(sb, suite.plugins, "simsiam", True, k),
                    sb.images_per_step,
                    warmup=2,
                    repeats=3,
                )
                break
            except RuntimeError as err:
                if not common.is_out_of_memory(err):
                    raise
            common.release(suite.device)  # after the handler: the failed step's frames are gone
            batch = batch * 7 // 8 // 8 * 8
        else:
            raise RuntimeError(f"no batch fits at {s.image_size} px (last tried {batch})")
        raw = suite.time_case(lambda: common.raw_step(sb), sb.images_per_step, warmup=2, repeats=3)
        out["checkpointing" if checkpointing else "plain"] = {
            "image_size": s.image_size,
            "batch": batch,
            "memory_model": memory_model,
            "sassl": real,
            "raw": raw,
            "ratio_real_over_raw": _ratio(real["img_per_s"], raw["img_per_s"]),
        }
    return out


def section_gather(suite: Suite, gpus: int = 8, busbw_gbs: float = 350.0, latency_us: float = 20.0) -> dict:
    """Ring-model estimate of the collectives one step adds at ``gpus`` GPUs (weak scaling: each
    GPU keeps the measured per-GPU batch). all_gather of S bytes in total (the gathered output)
    takes ``L + (N−1)/N · S / busbw``; all-reduce of S bytes ``L + 2(N−1)/N · S / busbw``.
    ``busbw_gbs`` (NCCL bus bandwidth over NVLink 4 on H100/H200 SXM, ~350-450 GB/s) and
    ``latency_us`` (a small collective's fixed cost) are assumptions, not measurements."""
    s = suite.plan.step
    step = common.real_step_on_device(s, suite.plugins, "simsiam", True, suite.plan.sources)
    adversary = step.program.modules["discriminator"]
    embed_dim = next(m for m in adversary.modules() if isinstance(m, nn.Linear)).in_features
    grads = [p for opt in step.program.optimizers.values() for g in opt.param_groups for p in g["params"]]
    del step
    common.release(suite.device)
    n, b, bw, lat = gpus, s.batch, busbw_gbs * 1e9, latency_us * 1e-6
    embed_bytes, id_bytes = b * embed_dim * 4, b * 8  # per GPU: S1 or S2 in fp32, int64 source ids

    def all_gather(per_gpu: int) -> float:
        return lat + (n - 1) / n * per_gpu * n / bw

    def all_reduce(total: int) -> float:
        return lat + 2 * (n - 1) / n * total / bw

    # affinity_means runs twice per step (D phase on detached S, G phase with gradients):
    # each gathers S1, S2 and the ids; the G phase's backward all-reduces both gathered S grads.
    adversary_s = 2 * (2 * all_gather(embed_bytes) + all_gather(id_bytes)) + 2 * all_reduce(n * embed_bytes)
    grad_bytes = sum(p.numel() * p.element_size() for p in grads)
    per_tensor_s = sum(all_reduce(p.numel() * p.element_size()) for p in grads)  # one collective per tensor
    buckets = max(1, math.ceil(grad_bytes / DDP_BUCKET_BYTES))  # DistributedDataParallel's bucket size
    bucketed_s = buckets * lat + 2 * (n - 1) / n * grad_bytes / bw
    measured = suite.results.get("step", {}).get("cases", {}).get("sassl", {}).get("median_s")
    out = {
        "gpus": n,
        "per_gpu_batch": b,
        "embed_dim": embed_dim,
        "assumed_busbw_gbs": busbw_gbs,
        "assumed_latency_us": latency_us,
        "gathered_bytes_per_step": 2 * n * (2 * embed_bytes + id_bytes),
        "adversary_collectives_ms": round(adversary_s * 1e3, 3),
        "grad_tensors": len(grads),
        "grad_buckets": buckets,
        "grad_bytes": grad_bytes,
        "grad_allreduce_per_tensor_ms": round(per_tensor_s * 1e3, 3),
        "grad_allreduce_bucketed_ms": round(bucketed_s * 1e3, 3),
        "measured_step_s": measured,
    }
    if measured:
        estimated = measured + adversary_s + bucketed_s  # no overlap assumed: DDP hides part of the all-reduce
        out.update(
            estimated_step_s=round(estimated, 4),
            adversary_share=round(adversary_s / estimated, 5),
            estimated_scaling_efficiency=round(measured / estimated, 4),
            estimated_img_per_s_8gpu=round(n * s.images_per_step / estimated, 1),
        )
    return out


# -- report ----------------------------------------------------------------------------------
def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict) -> str:
    """The figures against their targets, one line each."""
    rows: list[tuple[str, str, str]] = []

    def add(label: str, value, target: str = "", spec: str = ".3f") -> None:
        rows.append((label, _fmt(value, spec), target))

    if "step" in results and "cases" in results["step"]:
        r = results["step"]
        for name in ("raw", "plain", "sassl"):
            c = r["cases"][name]
            add(f"step {name} img/s (peak GiB {_fmt(c['peak_gib'], '.1f')})", c["img_per_s"], spec=".1f")
        add("step real/raw", r["ratio_real_over_raw"], ">= 0.90")
        add("discriminator overhead", r["discriminator_overhead"], "<= 0.05")
        add("peak memory real/raw", r["peak_ratio_real_over_raw"], "<= 1.10")
    if "ddp" in results and "cases" in results["ddp"]:
        add(
            f"1-GPU DDP step time / plain step time ({results['ddp']['backend']})",
            results["ddp"]["ratio_ddp_over_plain"],
        )
    if "compile" in results and "cases" in results["compile"]:
        r = results["compile"]
        add("compiled raw img/s", r["cases"]["raw"]["img_per_s"], spec=".1f")
        add("compiled real img/s", r["cases"]["sassl"]["img_per_s"], spec=".1f")
        add("compiled real/raw", r["ratio_real_over_raw"], ">= 0.90")
    if "e2e" in results and "img_per_s" in results["e2e"]:
        add("end-to-end img/s (cache, loader, views)", results["e2e"]["img_per_s"], spec=".1f")
        add("end-to-end / raw", results["e2e"]["ratio_e2e_over_raw"], ">= 0.80")
    for method in ("moco", "byol", "simclr"):
        if method in results.get("methods", {}):
            add(f"{method} real/raw", results["methods"][method]["ratio_real_over_raw"], ">= 0.90")
    for mode, r in results.get("hires", {}).items():
        if isinstance(r, dict) and "batch" in r:
            c = r["sassl"]
            px = f"{r['image_size']}px {mode}"
            add(f"{px}: batch {r['batch']} img/s (peak GiB {_fmt(c['peak_gib'], '.1f')})", c["img_per_s"], spec=".1f")
            add(f"{px}: real/raw", r["ratio_real_over_raw"])
    g = results.get("gather", {})
    if "adversary_collectives_ms" in g:
        add("8 GPUs: adversary collectives ms/step (est.)", g["adversary_collectives_ms"])
        add("8 GPUs: grad all-reduce, bucketed ms (est.)", g["grad_allreduce_bucketed_ms"])
        add("8 GPUs: same, one per tensor ms (est.)", g["grad_allreduce_per_tensor_ms"])
        add("8 GPUs: scaling efficiency (est.)", g.get("estimated_scaling_efficiency"))
    for name, r in results.items():
        if isinstance(r, dict) and "skipped" in r:
            rows.append((f"{name}: skipped", "-", r["skipped"][:60]))
        if isinstance(r, dict) and "error" in r:
            rows.append((f"{name}: error", "-", r["error"].splitlines()[-1][:60]))
    width = max(len(r[0]) for r in rows) if rows else 10
    return "\n".join(f"{label:<{width}}  {value:>10}  {target}" for label, value, target in rows)


def output_paths(out: str | None) -> tuple[Path, Path]:
    target = Path(out or os.environ.get("OUT") or common.REPO / "runs" / "benchmarks")
    if target.suffix == ".json":
        return target, target.with_suffix(".txt")
    return target / "gpu_suite.json", target / "gpu_suite.txt"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder (or .json file) for the results; default $OUT, else runs/benchmarks")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to check every code path")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop starting sections after this many seconds")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out, of {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: no CUDA device (use --smoke to run the tiny CPU version)")
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    stand_ins = stand_in_for_missing()
    if plan.step.torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    suite = Suite(plan, args.budget_s)
    runners = {
        "step": lambda: section_step(suite),
        "ddp": lambda: section_ddp(suite),
        "methods": lambda: section_methods(suite),
        "e2e": lambda: section_e2e(suite),
        "hires": lambda: section_hires(suite),
        "gather": lambda: section_gather(suite),
        "compile": lambda: section_step(suite, compile=True),
    }
    for name in SECTIONS:
        left = args.budget_s - suite.elapsed_s
        if name in skip:
            suite.results[name] = {"skipped": "--skip"}
        elif left <= 0 or (name == "compile" and left < COMPILE_NEEDS_S and not args.smoke):
            suite.results[name] = {"skipped": f"time budget ({left:.0f} s left of {args.budget_s:.0f})"}
        else:
            start = time.perf_counter()
            try:
                suite.results[name] = runners[name]()
            except Exception:  # one broken section must not cost the others' figures
                suite.results[name] = {"error": traceback.format_exc()}
            common.release(suite.device)
            suite.results[name]["section_s"] = round(time.perf_counter() - start, 1)
        print(f"[{suite.elapsed_s:6.1f} s] {name} done", flush=True)
    payload = {
        "benchmark": "gpu_suite",
        "smoke": args.smoke,
        "environment": common.environment(suite.device) | {"stand_ins_for_missing": stand_ins},
        "total_s": round(suite.elapsed_s, 1),
        "results": suite.results,
    }
    json_path, text_path = output_paths(args.out)
    common.write_json(json_path, payload)
    text = table(suite.results)
    text_path.write_text(text + "\n")
    env = payload["environment"]
    print(f"\n{env.get('gpu', env['device'])}, torch {env['torch']}, timm {env['timm']}; {payload['total_s']} s in all")
    print(text)
    print(f"wrote {json_path} and {text_path}")


if __name__ == "__main__":
    main()
