"""Images per second of one real pretraining step, with and without the stain discriminator,
against the raw SSL step of the same backbone — all three measured in one process.

    python benchmarks/pretrain_step.py [--method simsiam] [--backbone resnet18] [--image-size 64]
        [--batch 16] [--sources 4] [--device cpu|cuda] [--no-amp] [--compile] [--no-channels-last]
        [--grad-checkpointing] [--threads N] [--cpu-time] [--warmup 2] [--repeats 5] [--json OUT]

* real, stain adversary on: ``Trainer.train_step`` on ``build_pretrain_program`` (paper §3.2:
  views made on the device from uint8 patches, the SSL method, a discriminator step on detached
  embeddings, then the generator step on ``L_ssl − λ(a_same + a_diff)``);
* real, adversary off (``sassl.enabled = False``, the plain SSL baseline of the paper);
* raw: :class:`common.RawSimSiam` on random views already on the device (with the momentum
  target's forward for MoCo and BYOL).

On the CPU the three cases are interleaved call by call (load from other processes falls on
all alike; ``--threads 1 --cpu-time`` times by the process's CPU time, blind to waits for a
core); on CUDA each is measured alone, so that its peak memory is its own. Patches are
random uint8 arrays already on the device: this times the step, not data loading
(``benchmarks/gpu_suite.py`` measures the end-to-end path from the patch cache). Rates count
both views (2 × batch images per step). Printed ratios: adversary on / off (its overhead) and
real / raw.
"""

from __future__ import annotations

import argparse
import sys
import time
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
    raw_step,
    real_step_on_device,
    release,
    write_json,
)


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
    return result


def report(result: dict) -> str:
    s, t = result["settings"], result["timings"]
    head = (
        f"{s['method']} step, {s['backbone']} {s['image_size']}px, batch {s['batch']} "
        f"({2 * s['batch']} images), {s['device']}, amp={s['amp']}, compile={s['compile']}, "
        f"channels_last={s['channels_last']}, clock={s['clock']}"
    )
    lines = [head]
    for name, label in (("raw", "raw SSL step"), ("plain", "real, adversary off"), ("sassl", "real, adversary on")):
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
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        print(f"wrote {write_json(args.json, result)}")


if __name__ == "__main__":
    main()
