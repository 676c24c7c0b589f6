"""The command line of ``sassl bench stain-shift`` (see :mod:`sassl_core.app.bench`).

Kept apart from the benchmark so that building the ``sassl`` parser imports no torch: the
benchmark is imported only when the command runs. Config order: ``--preset`` → ``--config``
files → flags → ``--set``. ``--out`` must be a new or empty folder unless ``--resume`` continues
the benchmark in it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sassl_core.app.outdir import check_out_dir
from sassl_core.app.parsing import Parser, device, listing
from sassl_core.config import RunConfig, deep_merge, parse_override, read_yaml, validate
from sassl_core.errors import UserError

#: Without ``--data-root`` the presets fall back to synthetic slides of about the same size.
FALLBACK_DATA = {
    "dataset": "synthetic",
    "options": {"centres": 5, "slides_per_centre": 6, "slide_size": 768, "regions": 4, "stain_shift": 1.5, "seed": 0},
}
PRESETS: dict[str, dict] = {
    # about 90 s a run on an idle 2-core CPU, so the default table (4 arms x 3 seeds) in ~20 min;
    # SimSiam's loss flattens after ~120-140 of the 200 pretraining steps (docs/stain_shift.md)
    "cpu": {
        "data": {"dataset": "restained", "image_size": 32, "max_per_slide": 100, "options": {"stain_shift": 1.5}},
        "backbone": {"name": "resnet18"},
        "ssl": {"method": "simsiam", "options": {"proj_dim": 128, "proj_hidden_dim": 256}},
        "sassl": {"hidden_dim": 64},
        "pretrain": {"steps": 200, "batch_size": 32, "sources_per_batch": 4},
        "finetune": {"steps": 100, "batch_size": 32},
        "trainer": {"device": "cpu"},
    },
    "gpu": {
        "data": {"dataset": "restained", "image_size": 128, "max_per_slide": 400, "num_workers": 4},
        "backbone": {"name": "resnet18"},
        "ssl": {"method": "simsiam"},
        "pretrain": {"steps": 2000, "batch_size": 256, "sources_per_batch": 4, "optim": {"warmup_steps": 100}},
        "finetune": {"steps": 1000, "batch_size": 256},
        "trainer": {"device": "cuda"},
    },
}
SWITCH = {"on": (True,), "off": (False,), "both": (False, True)}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None


def add_bench_parser(sub) -> None:
    """Add ``bench stain-shift`` to the ``sassl`` sub-command parsers ``sub``."""
    bench = sub.add_parser("bench", help="benchmarks: stain shift vs stain normalisation, ablations")
    kinds = bench.add_subparsers(dest="bench", required=True)
    p = kinds.add_parser(
        "stain-shift",
        help="hold a centre out; compare SSL, SSL + stain normalisation and SASSL",
        epilog="example:\n  sassl bench stain-shift --preset cpu --arms ssl,macenko,sassl --seeds 0,1,2 --out bench/cpu",
    )
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="starting config (cpu: ~20 min on 2 CPU cores)")
    a(
        "--data-root",
        type=Path,
        help="H&E slides or images the presets re-stain per centre (dataset 'restained'); without it, synthetic slides",
    )
    a(
        "--config",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="YAML config (repeatable, after the preset)",
    )
    a("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")
    a("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    a(
        "--arms",
        type=_csv,
        default=["ssl", "hed", "macenko", "sassl"],
        help="ssl, hed, <normaliser>, sassl, sassl-paper, ... and '+' combinations (default ssl,hed,macenko,sassl)",
    )
    a("--sassl", choices=sorted(SWITCH), help="SASSL on every arm: on, off or both (replaces the arms' own)")
    a("--rl", choices=sorted(SWITCH), help="residual learning: on, off or both")
    listing(a("--ssl", type=_csv, help="SSL methods, comma-separated (an ablation axis)"), "ssl")
    listing(a("--backbone", type=_csv, help="backbones, comma-separated (an ablation axis)"), "backbone")
    a(
        "--held-out",
        metavar="SOURCE",
        help="source (centre) held out as the shifted test set (default: the last by name)",
    )
    a("--steps", type=int, help="pretraining steps")
    a("--finetune-steps", type=int, help="fine-tuning steps")
    a("--image-size", type=int, help="patch side in pixels")
    a("--device", type=device, help="auto, cpu, cuda, cuda:N or mps")
    a("--keep-checkpoints", action="store_true", help="keep every run's checkpoints (large)")
    a("--quiet", action="store_true", help="no progress lines")
    a("--out", type=Path, required=True, help="benchmark folder (new or empty, unless --resume)")
    a(
        "--resume",
        action="store_true",
        help="continue the benchmark in --out: reuse every run that finished (its bench_result.json), rerun the others",
    )


def bench_config(args: argparse.Namespace) -> RunConfig:
    """Preset → ``--config`` files → flags → ``--set``, validated once."""
    merged = dict(PRESETS.get(args.preset, {}))
    for path in args.config:
        merged = deep_merge(merged, read_yaml(path))
    if args.data_root is not None:
        merged = deep_merge(merged, {"data": {"root": str(args.data_root)}})
    flags = {
        ("pretrain", "steps"): args.steps,
        ("finetune", "steps"): args.finetune_steps,
        ("data", "image_size"): args.image_size,
        ("trainer", "device"): args.device,
    }
    for (section, key), value in flags.items():
        if value is not None:
            merged = deep_merge(merged, {section: {key: value}})
    for text in args.set:
        merged = deep_merge(merged, parse_override(text))
    data = merged.get("data")
    if isinstance(data, dict) and data.get("dataset") == "restained" and not data.get("root"):  # else validate() says
        merged = deep_merge(merged, {"data": FALLBACK_DATA})
    return validate(merged)


def cmd_bench(args: argparse.Namespace) -> int:
    """``sassl bench stain-shift``: run the benchmark, print the table."""
    from sassl_core.app.bench import render_markdown, stain_shift_benchmark
    from sassl_core.plugins import default_plugins

    cfg = bench_config(args)
    check_out_dir(args.out, "--out")
    if not args.resume and args.out.is_dir() and any(args.out.iterdir()):
        raise UserError(
            f"--out: {args.out} is not empty; expected a new or empty folder, or --resume to continue the benchmark in it"
        )
    plugins = default_plugins()
    for failure in plugins.failures:
        print(f"warning: {failure.message()}", file=sys.stderr)
    report = stain_shift_benchmark(
        cfg,
        args.out,
        args.seeds,
        args.arms,
        args.held_out,
        sassl=SWITCH.get(args.sassl),
        rl=SWITCH.get(args.rl),
        ssl_methods=args.ssl,
        backbones=args.backbone,
        keep_checkpoints=args.keep_checkpoints,
        plugins=plugins,
        log=(lambda line: None) if args.quiet else (lambda line: print(line, flush=True)),
    )
    if not args.quiet:
        print(render_markdown(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sassl_core.app.bench_cli stain-shift ...`` (the same as ``sassl bench stain-shift``)."""
    parser = Parser(prog="sassl")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    try:
        return cmd_bench(parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
