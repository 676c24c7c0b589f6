"""The ``sassl`` command line.

``sassl run | pretrain | finetune | evaluate | probe`` take the options of the config sections they
use (``ONLY`` lists those not every stage takes), merged into the run config in a fixed order
(defaults → ``--config`` files → flags → ``--set``). Bad input gives one line per problem on
stderr and exit status 2, never a traceback; a closed output pipe (``sassl plugins | head -1``)
ends a command quietly.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sassl_core.app.bench_cli import add_bench_parser, cmd_bench
from sassl_core.app.outdir import check_out_dir
from sassl_core.app.parsing import Parser, VersionAction, dest_of, device, listing, magnification, positive
from sassl_core.app.tile_cli import add_tile_parser, cmd_tile
from sassl_core.config import RunConfig
from sassl_core.errors import SasslError, UserError

# flag destination → config path it sets
FLAG_PATHS = {
    "dataset": ("data.dataset",),
    "data_root": ("data.root",),
    "image_size": ("data.image_size",),
    "fallback_mpp": ("data.mpp",),
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
    "resume_with_changes": ("output.resume_with_changes", "output.resume"),
    "overwrite": ("output.overwrite",),
    "quiet": ("output.quiet",),
}
NEGATED = {"no_sassl", "no_rl"}
#: The stage commands, their one-line help and an example for the epilog of their --help.
STAGES = {
    "run": ("pretrain, fine-tune, evaluate and report", "sassl run --ssl simclr --task cls --steps 2000 --out runs/r1"),
    "pretrain": (
        "stage 1: stain-adaptive self-supervised pretraining",
        "sassl pretrain --ssl simclr --steps 2000 --out runs/simclr",
    ),
    "finetune": (
        "stage 2: downstream fine-tuning with residual learning, then evaluation",
        "sassl finetune --task cls --pretrained runs/simclr --out runs/cls1",
    ),
    "evaluate": ("re-evaluate the fine-tuned model of a run", "sassl evaluate --task cls --out runs/cls1"),
    "probe": (
        "how well a linear probe tells the data's centres apart from a pretrained encoder's features",
        "sassl probe --pretrained runs/simclr --out runs/probe1",
    ),
}
TRAINING = ("run", "pretrain", "finetune")
#: Options only some stages take (by destination); every other option is every stage's.
ONLY = {
    "ssl": ("run", "pretrain"),
    "no_sassl": ("run", "pretrain"),
    "steps": ("run", "pretrain"),
    "task": ("run", "finetune", "evaluate"),
    "no_rl": ("run", "finetune", "evaluate"),
    "finetune_steps": ("run", "finetune"),
    "pretrained": ("finetune", "probe"),
    "resume": TRAINING,
    "resume_with_changes": TRAINING,
    "overwrite": TRAINING,
}
#: --help groups, by the config section an option sets.
GROUPS = {
    "data": "data",
    "backbone": "model",
    "ssl": "pretraining (stage 1)",
    "sassl": "pretraining (stage 1)",
    "pretrain": "pretraining (stage 1)",
    "task": "fine-tuning (stage 2)",
    "finetune": "fine-tuning (stage 2)",
    "trainer": "runtime",
    "output": "output",
    "batch_size": "runtime",  # an option, not a section: the batch size of whichever stage runs
}
#: Options whose help lists the installed components of a kind.
REGISTERED = {"dataset": "dataset", "backbone": "backbone", "ssl": "ssl", "task": "task", "stain_norm": "stain"}


def _adder(parser: argparse.ArgumentParser, command: str) -> Callable[..., None]:
    """``add_argument`` for ``command``'s parser: skips options the command does not take, files
    each under its config section's group and shows the config default in its help."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = RunConfig().model_dump(mode="json")

    def add(*flags: str, **kwargs) -> None:
        dest = dest_of(flags)
        if command not in ONLY.get(dest, (command,)):
            return
        path = FLAG_PATHS[dest][0] if dest in FLAG_PATHS else None
        title = GROUPS.get(dest) or GROUPS[path.split(".")[0]] if path else "config"
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        value = _lookup(defaults, path) if path and kwargs.get("action") != "store_true" else None
        if value is not None:
            kwargs["help"] = f"{kwargs.get('help', path)} (default: {str(value).replace('%', '%%')})"
        action = group.add_argument(*flags, **kwargs)
        if dest in REGISTERED:
            listing(action, REGISTERED[dest])

    return add


def _lookup(config: dict, path: str) -> object:
    """The value at dotted ``path`` of a nested config mapping."""
    for part in path.split("."):
        config = config[part]
    return config


def _run_options(parser: argparse.ArgumentParser, command: str) -> None:
    a = _adder(parser, command)
    a("--config", action="append", default=[], type=Path, metavar="FILE", help="YAML config (repeatable, deep-merged)")
    a("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. sassl.lam=0.5")
    a("--dataset", help="dataset plugin name")
    a("--data-root", type=Path, help="dataset folder")
    a("--backbone", help="backbone name, or timm:<any timm model>")
    a("--ssl", help="SSL method")
    a("--no-sassl", action="store_true", default=None, help="plain SSL baseline: no stain discriminator")
    a("--task", help="downstream task")
    a("--no-rl", action="store_true", default=None, help="'w/o RL' ablation: fine-tune the pretrained encoder alone")
    a("--steps", type=int, help="pretraining steps")
    a("--finetune-steps", type=int, help="fine-tuning steps")
    a("--image-size", type=int, help="patch side in pixels")
    a("--batch-size", type=int, help="batch size of both stages")
    a("--pretrained", type=Path, help="pretraining run folder or encoder.safetensors")
    a("--fallback-mpp", type=positive, help="µm/px to assume for slides that carry no resolution")
    a("--num-workers", type=int, help="data-loading worker processes")
    a("--strict", action="store_true", default=None, help="a bad slide is fatal instead of skipped")
    a("--stain-norm", help="stain normaliser applied before training")
    a("--stain-target", type=Path, help="target image the stain normaliser is fitted on")
    a("--device", type=device, help="auto, cpu, cuda, cuda:N or mps")
    a("--compile", action="store_true", default=None, help="torch.compile the model")
    a("--seed", type=int, help="random seed")
    a("--out", type=Path, help="run folder")
    a("--resume", action="store_true", default=None, help="continue the run in --out from its last checkpoint")
    a(
        "--resume-with-changes",
        action="store_true",
        default=None,
        help="--resume, applying settings changed since the run started",
    )
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
    parser = Parser(prog="sassl", description="Stain-Adaptive Self-Supervised Learning for histopathology")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, example) in STAGES.items():
        _run_options(sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}"), name)

    p = sub.add_parser(
        "completion",
        help="print a shell completion script",
        epilog="example:\n  sassl completion bash > ~/.local/share/bash-completion/completions/sassl",
    )
    p.add_argument("shell", choices=["bash", "zsh"])

    add_bench_parser(sub)

    p = sub.add_parser("plugins", help="list plugins and their components")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("heatmap", help="whole-slide prediction heatmap and Grad-CAM patches of a fine-tuned run")
    p.add_argument(
        "--checkpoint", type=Path, required=True, metavar="RUN", help="run folder holding a fine-tuned model"
    )
    p.add_argument("--slide", type=Path, required=True)
    p.add_argument("--out", type=Path, help="output folder (default: RUN/heatmaps)")
    p.add_argument(
        "--cam-patches", type=int, default=4, metavar="N", help="Grad-CAM panels of the N top-scoring patches (cls)"
    )
    p.add_argument(
        "--class",
        dest="target_class",
        metavar="CLASS",
        help="class index or name whose probability is painted (default: the last)",
    )
    res = p.add_mutually_exclusive_group()
    res.add_argument("--mpp", type=positive, metavar="UM", help="µm/px of the patches (default: the run's)")
    res.add_argument(
        "--magnification", type=magnification, metavar="X", help="objective power of the patches, e.g. 20x = 0.5 µm/px"
    )
    p.add_argument(
        "--fallback-mpp", type=positive, metavar="UM", help="µm/px to assume for a slide that carries no resolution"
    )
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N or mps")

    p = sub.add_parser(
        "export", help="write a run's encoder as a timm model folder (config.json, model.safetensors, README.md)"
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder holding encoder.safetensors")
    p.add_argument(
        "--out", type=Path, required=True, help="folder to write (timm.create_model('local-dir:OUT', pretrained=True))"
    )

    p = sub.add_parser("doctor", help="versions, devices, plugins and data roots")
    p.add_argument("roots", nargs="*", type=Path, metavar="DATA_ROOT")

    add_tile_parser(sub)
    return parser


def cmd_plugins(args: argparse.Namespace) -> int:
    from sassl_core.plugins import default_plugins

    summary = default_plugins().summary()
    status = 1 if summary["failed"] else 0  # a plugin that failed to load fails the listing
    if args.json:
        print(json.dumps(summary, indent=2))
        return status
    for kind, point in summary["extension_points"].items():
        kinds = point.get("target_kinds", {})
        names = ", ".join(f"{n} [{kinds[n]}]" if n in kinds else n for n in summary[kind]) or "(none)"
        print(f"{point['label']}s ({point['hook']} → {point['returns']}): {names}")
    for p in summary["plugins"]:
        comps = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in p["components"].items())
        print(f"{p['name']} ({p['distribution']} {p['version']}) — {comps}")
    for f in summary["failed"]:
        print(f"FAILED {f['name']} ({f['distribution']}): {f['error']}")
    return status


def cmd_completion(args: argparse.Namespace) -> int:
    """A completion script generated from the parser itself, so it follows every option."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def cmd_heatmap(args: argparse.Namespace) -> int:
    from sassl_core.app.api import heatmap
    from sassl_core.wsi.reader import magnification_mpp

    mpp = magnification_mpp(args.magnification) if args.magnification else args.mpp
    if args.out is not None:
        check_out_dir(args.out, "--out")
    written = heatmap(
        args.checkpoint,
        args.slide,
        args.out,
        args.cam_patches,
        args.target_class,
        target_mpp=mpp,
        fallback_mpp=args.fallback_mpp,
        device=args.device,
    )
    for path in written:
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sassl_core.app.export import export_run

    check_out_dir(args.out, "--out")
    for path in export_run(args.run, args.out):
        print(path)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from sassl_core.app.doctor import report

    lines, ok = report(args.roots)
    print("\n".join(lines))
    return 0 if ok else 1


def cmd_stage(args: argparse.Namespace) -> int:
    from sassl_core.app import api
    from sassl_core.app.runlog import console_log
    from sassl_core.config import load_config
    from sassl_core.plugins import default_plugins

    cfg = load_config(args.config, flags_to_config(args), args.set)
    check_out_dir(cfg.output.dir, "output.dir")
    with console_log():  # run.log also keeps the lines printed before and after the stage
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


COMMANDS = {
    "plugins": cmd_plugins,
    "tile": cmd_tile,
    "doctor": cmd_doctor,
    "heatmap": cmd_heatmap,
    "export": cmd_export,
    "bench": cmd_bench,
    "completion": cmd_completion,
}
#: Errors of the file system about a path the user gave: one line naming the path, exit 2.
PATH_ERRNOS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC}
PATH_ERRNOS |= {errno.ENAMETOOLONG, errno.ELOOP}


def main(argv: list[str] | None = None) -> int:
    """``sassl``: the exit status of the command (0 done, 1 failed check, 2 bad input, 130 interrupted)."""
    try:
        status = _command(argv)
        sys.stdout.flush()  # output that fit in the buffer meets a closed pipe only here
        return status
    except BrokenPipeError:  # the reader of our output went away (``| head``): stop quietly
        _discard_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports a command its pipe ended


def _command(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad argument (already reported)
        return done.code if isinstance(done.code, int) else 0
    try:
        return COMMANDS.get(args.command, cmd_stage)(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SasslError as err:
        from sassl_core.train.trainer import TrainingInterrupted  # imported already when a stage raised it

        if not isinstance(err, TrainingInterrupted):
            raise
        print(str(err), file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in PATH_ERRNOS or err.filename is None:
            raise
        print(f"error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # stdout is not a file (tests capture it): nothing is flushed to a pipe


if __name__ == "__main__":
    sys.exit(main())
