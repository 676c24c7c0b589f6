"""The ``sassl`` command line.

``sassl run | pretrain | finetune | evaluate | probe`` share one set of options, merged into the run
config in a fixed order (defaults → ``--config`` files → flags → ``--set``). Bad input gives
one line per problem on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sassl_core.app.bench_cli import add_bench_parser, cmd_bench
from sassl_core.errors import UserError

# flag destination → config path it sets
FLAG_PATHS = {
    "dataset": ("data.dataset",),
    "data_root": ("data.root",),
    "image_size": ("data.image_size",),
    "mpp": ("data.mpp",),
    "num_workers": ("data.num_workers",),
    "strict": ("data.strict",),
    "stain_norm": ("data.stain_norm",),
    "stain_target": ("data.stain_target",),
    "backbone": ("backbone.name",),
    "ssl": ("ssl.method",),
    "no_sassl": ("sassl.enabled",),
    "task": ("task.name",),
    "no_rl": ("task.residual",),
    "steps": ("pretrain.steps",),
    "finetune_steps": ("finetune.steps",),
    "batch_size": ("pretrain.batch_size", "finetune.batch_size"),
    "pretrained": ("finetune.pretrained",),
    "device": ("trainer.device",),
    "seed": ("trainer.seed",),
    "compile": ("trainer.compile",),
    "out": ("output.dir",),
    "resume": ("output.resume",),
    "overwrite": ("output.overwrite",),
    "quiet": ("output.quiet",),
}
NEGATED = {"no_sassl", "no_rl"}


def _run_options(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--config", action="append", default=[], type=Path, metavar="FILE", help="YAML config (repeatable, deep-merged)")
    a("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. sassl.lam=0.5")
    a("--dataset", help="dataset plugin name (default: synthetic)")
    a("--data-root", type=Path, help="dataset folder")
    a("--backbone", help="backbone name, or timm:<any timm model>")
    a("--ssl", help="SSL method (simsiam, moco, byol, simclr, ...)")
    a("--no-sassl", action="store_true", default=None, help="plain SSL baseline: no stain discriminator")
    a("--task", help="downstream task: cls, reg or seg")
    a("--no-rl", action="store_true", default=None, help="'w/o RL' ablation: fine-tune the pretrained encoder alone")
    a("--steps", type=int, help="pretraining steps")
    a("--finetune-steps", type=int, help="fine-tuning steps")
    a("--image-size", type=int, help="patch side in pixels")
    a("--batch-size", type=int, help="batch size of both stages")
    a("--pretrained", type=Path, help="pretraining run folder or encoder.safetensors (finetune, probe)")
    a("--mpp", type=float, help="µm/px to assume for slides that carry no resolution")
    a("--num-workers", type=int, help="data-loading worker processes")
    a("--strict", action="store_true", default=None, help="a bad slide is fatal instead of skipped")
    a("--stain-norm", help="stain normaliser applied before training (reinhard, macenko, ...)")
    a("--stain-target", type=Path, help="target image the stain normaliser is fitted on")
    a("--device", choices=["auto", "cpu", "cuda"])
    a("--compile", action="store_true", default=None, help="torch.compile the model")
    a("--seed", type=int)
    a("--out", type=Path, help="run folder")
    a("--resume", action="store_true", default=None, help="continue the run in --out from its last checkpoint")
    a("--overwrite", action="store_true", default=None, help="replace the run in --out (sassl's own files only)")
    a("--quiet", action="store_true", default=None, help="no progress output")


def flags_to_config(args: argparse.Namespace) -> dict:
    """The flags the user gave, as a nested config mapping."""
    nested: dict = {}
    for dest, paths in FLAG_PATHS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest in NEGATED:
            value = not value
        if isinstance(value, Path):
            value = str(value)
        for path in paths:
            node = nested
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return nested


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sassl", description="Stain-Adaptive Self-Supervised Learning for histopathology"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "pretrain, fine-tune, evaluate and report"),
        ("pretrain", "stage 1: stain-adaptive self-supervised pretraining"),
        ("finetune", "stage 2: downstream fine-tuning with residual learning, then evaluation"),
        ("evaluate", "re-evaluate the fine-tuned model of a run"),
        ("probe", "how well a linear probe tells the data's centres apart from a pretrained encoder's features"),
    ):
        _run_options(sub.add_parser(name, help=help_text))

    add_bench_parser(sub)

    p = sub.add_parser("plugins", help="list plugins and their components")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("heatmap", help="whole-slide prediction heatmap and Grad-CAM patches of a fine-tuned run")
    p.add_argument(
        "--checkpoint", type=Path, required=True, metavar="RUN", help="run folder holding a fine-tuned model"
    )
    p.add_argument("--slide", type=Path, required=True)
    p.add_argument("--out", type=Path, help="output folder (default: RUN/heatmaps)")
    p.add_argument("--cam-patches", type=int, default=4, help="Grad-CAM overlays of this many tissue patches (cls)")
    p.add_argument(
        "--class", dest="target_class", type=int, help="class whose probability is painted (default: the last)"
    )

    p = sub.add_parser("doctor", help="versions, devices, plugins and data roots")
    p.add_argument("roots", nargs="*", type=Path, metavar="DATA_ROOT")

    p = sub.add_parser("tile", help="tile slides into a patch index with tissue masks")
    p.add_argument("slides", nargs="+", type=Path, metavar="SLIDE_OR_DIR")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patch-size", type=int, default=224)
    p.add_argument("--mpp", type=float, default=0.5, help="target µm per pixel of the patches")
    p.add_argument("--fallback-mpp", type=float, help="µm/px to assume for slides that carry no resolution")
    p.add_argument("--max-per-slide", type=int, default=100)
    p.add_argument("--tissue-threshold", type=float, default=0.5)
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--strict", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return parser


def cmd_plugins(args: argparse.Namespace) -> int:
    from sassl_core.plugins import default_plugins

    summary = default_plugins().summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for kind, point in summary["extension_points"].items():
        kinds = point.get("target_kinds", {})
        names = ", ".join(f"{n} [{kinds[n]}]" if n in kinds else n for n in summary[kind]) or "(none)"
        print(f"{point['label']}s ({point['hook']} → {point['returns']}): {names}")
    for p in summary["plugins"]:
        comps = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in p["components"].items())
        print(f"{p['name']} ({p['distribution']} {p['version']}) — {comps}")
    for f in summary["failed"]:
        print(f"FAILED {f['name']} ({f['distribution']}): {f['error']}")
    return 0


def cmd_heatmap(args: argparse.Namespace) -> int:
    from sassl_core.app.api import heatmap

    for path in heatmap(args.checkpoint, args.slide, args.out, args.cam_patches, args.target_class):
        print(path)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from sassl_core.app.doctor import report

    lines, ok = report(args.roots)
    print("\n".join(lines))
    return 0 if ok else 1


def cmd_tile(args: argparse.Namespace) -> int:
    from sassl_core.wsi.tiling import tile_to_folder

    summary = tile_to_folder(
        args.slides,
        args.out,
        patch_size=args.patch_size,
        target_mpp=args.mpp,
        fallback_mpp=args.fallback_mpp,
        max_per_slide=args.max_per_slide,
        tissue_threshold=args.tissue_threshold,
        overlap=args.overlap,
        strict=args.strict,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    if not args.quiet:
        counts = summary.get("patches_per_slide", {})
        print(f"tiled {len(counts)} slide(s), {sum(counts.values())} tissue patches → {args.out}")
        for item in summary.get("skipped", []):
            print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from sassl_core.app import api
    from sassl_core.config import load_config
    from sassl_core.plugins import default_plugins

    cfg = load_config(args.config, flags_to_config(args), args.set)
    plugins = default_plugins()
    for failure in plugins.failures:
        print(f"warning: {failure.message()}", file=sys.stderr)
    result = getattr(api, args.command)(cfg, plugins)
    if not cfg.output.quiet and result.metrics:
        shown = {k: v for k, v in result.metrics["metrics"].items() if isinstance(v, float)}
        print(json.dumps({"run_dir": str(result.run_dir), "metrics": shown}))
    elif not cfg.output.quiet:
        print(f"done: {result.run_dir}")
    return 0


COMMANDS = {"plugins": cmd_plugins, "tile": cmd_tile, "doctor": cmd_doctor, "heatmap": cmd_heatmap, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sassl_core.train.trainer import TrainingInterrupted

    try:
        return COMMANDS.get(args.command, cmd_stage)(args)
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
