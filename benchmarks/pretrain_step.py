"""Images per second of one real pretraining step, with and without the stain discriminator,
against the raw SSL step of the same backbone (and lightly's SimSiam step): all measured in one process.

    python benchmarks/pretrain_step.py [--method simsiam] [--backbone resnet18] [--image-size 64]
        [--batch 16] [--sources 4] [--device cpu|cuda] [--no-amp] [--compile] [--no-channels-last]
        [--grad-checkpointing] [--threads N] [--cpu-time] [--warmup 2] [--repeats 5] [--json OUT]

* real, stain adversary on: ``Trainer.train_step`` on ``build_pretrain_program`` (paper §3.2:
  views made on the device from uint8 patches, the SSL method, a discriminator step on detached
  embeddings, then the generator step on ``L_ssl − λ(a_same + a_diff)``);
* real, adversary off (``sassl.enabled = False``, the plain SSL baseline of the paper);
* raw: :class:`common.RawSimSiam` on random views already on the device (with the momentum
  target's forward for MoCo and BYOL);
* lightly (``--method simsiam``, when the ``lightly`` package is installed; a benchmark-only
  dependency): lightly's SimSiam (``SimSiamProjectionHead``, ``SimSiamPredictionHead``,
  ``NegativeCosineSimilarity``) on the same backbone, head widths, batch and optimiser, on random
  views already on the device (lightly makes its views in the data loader).

On the CPU the cases are interleaved call by call (load from other processes falls on
all alike; ``--threads 1 --cpu-time`` times by the process's CPU time, blind to waits for a
core); on CUDA each is measured alone, so that its peak memory is its own. Patches are
random uint8 arrays already on the device: this times the step, not data loading
(``benchmarks/gpu_suite.py`` measures the end-to-end path from the patch cache). Rates count
both views (2 × batch images per step). Printed ratios: adversary on / off (its overhead),
real / raw, and step time over lightly's (targets: ≤ 1.0 adversary off, ≤ 1.05 on).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MOMENTUM_METHODS,
    SHIPPED_SSL,
    StepSettings,
    benchmark_plugins,
    environment,
    measure,
    measure_interleaved,
    pretrain_config,
    raw_step,
    real_step_on_device,
    release,
    write_json,
)


def lightly_step(s: StepSettings, plugins) -> Callable[[], None]:
    """One optimiser step of lightly's SimSiam at the widths of sassl's SimSiam defaults, its
    backbone built as sassl builds it and its optimiser by sassl's ``build_optimizer`` with the
    real step's settings, on two random views already on the device."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
    from torch import nn

    from sassl_core.train.backbone import create_backbone, pooled_dim
    from sassl_core.train.optim import build_optimizer
    from sassl_plugins.ssl.simsiam import SimSiamOptions

    cfg = pretrain_config(s, "simsiam", sassl=False)
    widths = SimSiamOptions()
    device = s.torch_device
    backbone = create_backbone(plugins, cfg.backbone.name, cfg.backbone.options, s.image_size)
    model = nn.ModuleDict(
        {
            "backbone": backbone,
            "projection": SimSiamProjectionHead(pooled_dim(backbone), widths.proj_hidden_dim, widths.proj_dim),
            "prediction": SimSiamPredictionHead(widths.proj_dim, widths.pred_hidden_dim, widths.proj_dim),
        }
    ).to(device)
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    criterion = NegativeCosineSimilarity()
    opt = build_optimizer(model, cfg.pretrain.optim)
    x1 = torch.randn(s.batch, 3, s.image_size, s.image_size, device=device).contiguous(memory_format=fmt)
    x2 = torch.randn_like(x1)
    model.train()

    def branch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = model["projection"](model["backbone"](x).flatten(start_dim=1))
        return z.detach(), model["prediction"](z)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.amp and device.type == "cuda"):
            (z1, p1), (z2, p2) = branch(x1), branch(x2)
            loss = 0.5 * (criterion(z1, p2) + criterion(z2, p1))
        loss.backward()
        opt.step()

    return step


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simsiam", choices=SHIPPED_SSL)
    parser.add_argument("--backbone", default="resnet18", help="a timm model name")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="patches per step (two views each)")
    parser.add_argument("--sources", type=int, default=4, help="stain sources per batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 instead of bf16 autocast (CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model on both sides")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing in the backbone")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is steadier on a busy CPU)"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU only: time by this process's CPU time, not wall time (steadier on a busy machine)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures to this JSON file")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    settings = StepSettings(
        backbone=args.backbone,
        image_size=args.image_size,
        batch=args.batch,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        grad_checkpointing=args.grad_checkpointing,
    )
    device = settings.torch_device
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    plugins = benchmark_plugins()
    torch.manual_seed(0)
    timings = {}
    cases = {
        "raw": lambda: raw_step(settings, momentum=args.method in MOMENTUM_METHODS),
        "plain": lambda: real_step_on_device(
            settings, plugins, args.method, sassl=False, sources_per_batch=args.sources
        ),
        "sassl": lambda: real_step_on_device(
            settings, plugins, args.method, sassl=True, sources_per_batch=args.sources
        ),
    }
    lightly_missing = None
    if args.method != "simsiam":
        lightly_missing = "lightly row: SimSiam only (--method simsiam)"
    elif importlib.util.find_spec("lightly") is None:
        lightly_missing = "lightly row skipped: the lightly package is not installed (pip install lightly)"
    else:
        cases["lightly"] = lambda: lightly_step(settings, plugins)
    if device.type == "cpu":  # a shared CPU: interleave the cases call by call
        steps = {name: build() for name, build in cases.items()}
        clock = time.process_time if args.cpu_time else time.perf_counter
        timings = measure_interleaved(steps, device, args.warmup, args.repeats, clock)
    else:  # one case at a time, so that each peak memory is its own
        for name, build in cases.items():
            step = build()
            timings[name] = measure(step, device, args.warmup, args.repeats)
            del step
            release(device)
    images = settings.images_per_step
    rates = {name: t.rate(images) for name, t in timings.items()}
    result = {
        "benchmark": "pretrain_step",
        "settings": {
            **vars(settings),
            "method": args.method,
            "sources_per_batch": args.sources,
            "clock": "process_time" if args.cpu_time and device.type == "cpu" else "wall",
        },
        "environment": environment(device),
        "timings": {name: t.as_dict(images) for name, t in timings.items()},
        "ratio_sassl_over_plain": round(rates["sassl"] / rates["plain"], 4),
        "discriminator_overhead": round(1 - timings["plain"].median_s / timings["sassl"].median_s, 4),
        "ratio_sassl_over_raw": round(rates["sassl"] / rates["raw"], 4),
        "ratio_plain_over_raw": round(rates["plain"] / rates["raw"], 4),
    }
    if "lightly" in timings:
        lightly_s = timings["lightly"].median_s
        result["time_plain_over_lightly"] = round(timings["plain"].median_s / lightly_s, 4)
        result["time_sassl_over_lightly"] = round(timings["sassl"].median_s / lightly_s, 4)
        result["versions"] = {"lightly": version("lightly")}
    else:
        result["lightly_skipped"] = lightly_missing
    return result


def report(result: dict) -> str:
    s, t = result["settings"], result["timings"]
    head = (
        f"{s['method']} step, {s['backbone']} {s['image_size']}px, batch {s['batch']} "
        f"({2 * s['batch']} images), {s['device']}, amp={s['amp']}, compile={s['compile']}, "
        f"channels_last={s['channels_last']}, clock={s['clock']}"
    )
    lines = [head]
    labels = {"raw": "raw SSL step", "plain": "real, adversary off", "sassl": "real, adversary on"}
    labels |= {"lightly": f"lightly {result['versions']['lightly']}"} if "lightly" in t else {}
    for name, label in labels.items():
        peak = f", peak {t[name]['peak_gib']} GiB" if t[name]["peak_gib"] is not None else ""
        lines.append(
            f"  {label:<22} {t[name]['median_s'] * 1e3:9.1f} ms  {t[name]['img_per_s']:9.1f} img/s  "
            f"(fastest call {t[name]['min_s'] * 1e3:.1f} ms){peak}"
        )
    lines.append(
        f"  ratio sassl/plain {result['ratio_sassl_over_plain']:.3f} "
        f"(discriminator overhead {100 * result['discriminator_overhead']:.1f}% of the step), "
        f"sassl/raw {result['ratio_sassl_over_raw']:.3f}, plain/raw {result['ratio_plain_over_raw']:.3f}"
    )
    if "lightly" in t:
        lines.append(
            f"  step time over lightly's: adversary off {result['time_plain_over_lightly']:.3f} (target <= 1.0), "
            f"adversary on {result['time_sassl_over_lightly']:.3f} (target <= 1.05)"
        )
    else:
        lines.append(f"  {result['lightly_skipped']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        print(f"wrote {write_json(args.json, result)}")


if __name__ == "__main__":
    main()
