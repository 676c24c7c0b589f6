"""``sassl bench stain-shift``: SASSL against stain normalisation under a centre shift.

The paper's Table 1 compares SASSL with stain-normalisation baselines applied before a plain SSL
pipeline; Tables 2-7 ablate SASSL and residual learning (RL) across SSL methods and backbones.
Here one source (centre) of any multi-centre dataset is held out (``data.held_out_source``):
pretraining uses the training slides of the other centres, fine-tuning their labelled patches,
and every patch of the held-out centre is the test split ("shifted"). The validation slides of the training centres
give the "in-domain" score. Every arm runs the same seeds with the same budget:

* ``ssl`` — plain SSL (``sassl.enabled = False``);
* ``ssl+hed`` — plain SSL with strong HED stain augmentation in its views (Tellez et al. 2019,
  "Quantifying the effects of data augmentation and stain color normalization", the known
  strong baseline);
* ``ssl+<normaliser>`` — plain SSL with a stain transform plugin fitted on a training-centre
  image (``stain_target.png``, a mosaic of training patches) applied to every patch, in
  pretraining, fine-tuning and evaluation alike;
* ``sassl`` — SASSL with the default adversary; ``sassl-paper`` — the adversary exactly as the
  paper writes it (Eq. 5 generator, slide sources, projector embeddings); other names of
  :data:`SASSL_VARIANTS` likewise (``sassl+<normaliser>`` etc. combine);

crossed with the ablation axes ``--sassl``, ``--rl``, ``--ssl`` and ``--backbone``. Each run
lives in ``<out>/<arm>/seed<k>/``; ``bench.json`` and ``bench.md`` hold mean ± standard
deviation (sample, ``ddof = 1``) of accuracy and QWK over the seeds, and of the centre probe
(:mod:`sassl_core.app.probe`): how well the pretrained encoder's features still tell the
centres apart.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from sassl_core.app import api
from sassl_core.app.montage import write_montage
from sassl_core.app.probe import centre_probe
from sassl_core.app.report import plot_curves, read_history, save_png
from sassl_core.config import RunConfig, deep_merge, validate
from sassl_core.errors import UserError
from sassl_core.files import atomic_write, atomic_write_text
from sassl_core.interfaces import PreparedData
from sassl_core.metrics import classification_metrics
from sassl_core.plugins import PluginSet, default_plugins
from sassl_core.train.checkpoint import load_checkpoint
from sassl_core.train.data import patch_dataset, prepare_dataset
from sassl_core.train.evaluate import compute_metrics, predict, write_metrics
from sassl_core.train.finetune import build_downstream
from sassl_core.train.inference_meta import finetuned_checkpoint
from sassl_core.train.runtime import Runtime, init_runtime
from sassl_core.wsi.patches import PatchTable

RESULT_FILE = "bench_result.json"
TARGET_FILE = "stain_target.png"
MONTAGE_FILE = "montage.png"
CURVES_FILE = "pretrain_curves.png"
TARGET_TILES = 4  # the stain target is a TARGET_TILES × TARGET_TILES mosaic of training patches

#: The benchmark's labels are grades: QWK is reported beside accuracy and is the headline.
_RUN_DEFAULTS = {
    "output": {"quiet": True, "tensorboard": False},
    "trainer": {"checkpoint_every": 100000},
    "task": {"options": {"ordinal": True}},
    # no validation: the in-domain figure scores the 'val' split, which must not also pick the
    # weights; every arm is evaluated at its last step, as the recorded figures were
    "finetune": {"val_fraction": 0.0},
}

#: SASSL adversaries the benchmark can compare, as ``sassl`` config fields over the defaults.
#: ``sassl`` is the default adversary, which is the paper's: no variant beat it on the held-out
#: centre over 3 seeds (docs/stain_shift.md); ``sassl-paper`` pins the paper's fields for when
#: the default changes.
SASSL_VARIANTS: dict[str, dict] = {
    "sassl": {},
    "sassl-paper": {"generator": "affinity", "source_key": "slide", "embedding": "projector"},
    "sassl-confusion": {"generator": "confusion", "source_key": "provider", "embedding": "projector"},
    "sassl-encoder": {"generator": "confusion", "source_key": "provider", "embedding": "encoder"},
    "sassl-style": {"generator": "confusion", "source_key": "provider", "embedding": "style"},
}
#: Views with strong HED stain augmentation (Tellez et al. 2019's "HED-strong": every image, wide
#: ranges), for the ``+hed`` arms.
STRONG_HED = {"hed_p": 1.0, "hed_scale": (0.7, 1.3), "hed_shift": (-0.15, 0.15)}
#: What may follow an arm's head besides a stain normaliser: strong HED views, AdaBN at evaluation.
MODIFIERS = ("hed", "adabn")


@dataclass(frozen=True)
class Arm:
    """One row of the table: how stain variation is handled, and the ablation axes."""

    name: str
    ssl: str
    backbone: str
    sassl: bool
    stain_norm: str | None
    residual: bool
    variant: str = "sassl"  # the SASSL adversary (a key of SASSL_VARIANTS) when ``sassl``
    hed: bool = False  # strong HED views
    adabn: bool = False  # BatchNorm statistics re-estimated on each evaluated source

    def overrides(self) -> dict:
        """The config fields this arm sets (nested, for :func:`deep_merge`)."""
        out = {
            "ssl": {"method": self.ssl},
            "backbone": {"name": self.backbone},
            "sassl": {"enabled": self.sassl} | (SASSL_VARIANTS[self.variant] if self.sassl else {}),
            "task": {"residual": self.residual, "adapt_bn": self.adabn},
            "data": {"stain_norm": self.stain_norm},
        }
        if self.hed:
            out["ssl"]["views"] = dict(STRONG_HED)
        return out


@dataclass(frozen=True)
class StainArm:
    """What a ``--arms`` token asks for: SASSL (and which adversary), a normaliser, HED views."""

    sassl: bool
    stain_norm: str | None = None
    variant: str = "sassl"
    hed: bool = False
    adabn: bool = False


def parse_arm(token: str, normalisers: Sequence[str]) -> StainArm:
    """``ssl`` | ``<variant>`` (``sassl``, ``sassl-paper``, ...) | ``<normaliser>`` | ``hed`` |
    ``adabn``, and ``+``-joined combinations such as ``ssl+macenko`` or ``sassl+hed+adabn``."""
    parts = [p.strip() for p in token.strip().split("+")]
    head = parts[0] if parts[0] == "ssl" or parts[0] in SASSL_VARIANTS else "ssl"
    rest = parts[1:] if head == parts[0] else parts
    norms = [p for p in rest if p in normalisers]
    unknown = [p for p in rest if p not in normalisers and p not in MODIFIERS]
    if unknown or len(norms) > 1:
        raise UserError(
            f"--arms: unknown arm '{token}'; expected ssl, {', '.join(SASSL_VARIANTS)}, {', '.join(MODIFIERS)} or a stain normaliser "
            f"({', '.join(normalisers)}), joined by '+'"
        )
    sassl = head != "ssl"
    return StainArm(sassl, norms[0] if norms else None, head if sassl else "sassl", "hed" in rest, "adabn" in rest)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def expand_arms(
    base_cfg: RunConfig,
    arms: Sequence[str],
    normalisers: Sequence[str],
    sassl: Sequence[bool] | None = None,
    rl: Sequence[bool] | None = None,
    ssl_methods: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
) -> list[Arm]:
    """The cross product of the stain arms with the ablation axes, in a stable order, no repeats.

    ``sassl`` (e.g. ``(False, True)``) replaces each arm's own SASSL choice; ``rl`` likewise
    for residual learning (default: ``task.residual`` of the base config). An axis with several
    values adds them to the arm names (``-norl`` marks "w/o RL" always).
    """
    stain = [parse_arm(a, normalisers) for a in arms]
    if sassl is not None:
        stain = [replace(arm, sassl=on) for arm in stain for on in sassl]
    methods = list(ssl_methods or [base_cfg.ssl.method])
    nets = list(backbones or [base_cfg.backbone.name])
    residuals = tuple(rl) if rl is not None else (base_cfg.task.residual,)
    out: dict[str, Arm] = {}
    for method, net, residual, arm in itertools.product(methods, nets, residuals, stain):
        head = arm.variant if arm.sassl else "ssl"
        modifiers = [
            m for m, on in ((arm.stain_norm or "", arm.stain_norm), ("hed", arm.hed), ("adabn", arm.adabn)) if on
        ]
        parts = ["+".join([head, *modifiers])]
        parts += [method] if len(methods) > 1 else []
        parts += [net] if len(nets) > 1 else []
        parts += [] if residual else ["norl"]
        name = _safe("-".join(parts))
        out.setdefault(
            name, Arm(name, method, net, arm.sassl, arm.stain_norm, residual, arm.variant, arm.hed, arm.adabn)
        )
    return list(out.values())


def write_stain_target(cfg: RunConfig, patches: PatchTable, path: Path) -> Path:
    """A mosaic of ``patches``' first training slide: the normalisers' fitting target."""
    train = patches.split("train")
    if len(train) == 0:
        raise UserError(f"dataset '{cfg.data.dataset}': no training patches to take a stain target from")
    first_slide = sorted(set(train["slide_id"].astype(str)))[0]
    table = train.select(np.flatnonzero(train["slide_id"].astype(str) == first_slide)[: TARGET_TILES**2])
    dataset = patch_dataset(cfg, table, with_masks=False, quiet=True)
    tiles = [np.asarray(dataset[i]["image"]) for i in range(len(table))]
    tiles += [tiles[i % len(tiles)] for i in range(TARGET_TILES**2 - len(tiles))]
    rows = [np.concatenate(tiles[r * TARGET_TILES : (r + 1) * TARGET_TILES], axis=1) for r in range(TARGET_TILES)]
    save_png(np.concatenate(rows, axis=0).astype(np.uint8), path)
    return path


def accuracy_by_source(predictions) -> dict[str, float]:
    """Accuracy per data source (centre) of a classification :class:`Predictions`."""
    sources = predictions.table["source"].astype(str)
    k = predictions.predictions.shape[1]
    return {
        s: classification_metrics(
            predictions.predictions[sources == s], predictions.targets[sources == s], num_classes=k
        )["accuracy"]
        for s in sorted(set(sources))
    }


def evaluate_in_domain(
    cfg: RunConfig, plugins: PluginSet, prepared: PreparedData, run_dir: Path, rt: Runtime
) -> tuple[dict, dict[str, float]] | None:
    """Metrics of a finished run's fine-tuned model (the weights evaluation uses) on the training
    centres' validation split. The benchmark fine-tunes without validation (``_RUN_DEFAULTS``), so
    that split never chose the weights it scores.

    Writes ``metrics_in_domain.json``; ``None`` when the dataset has no validation patches.
    """
    split = prepared.patches["split"]
    if not (split == "val").any():
        return None
    model = build_downstream(cfg, plugins, prepared, None).to(rt.device)
    model.load_state_dict(load_checkpoint(finetuned_checkpoint(run_dir))["modules"]["model"])
    val = replace(prepared, patches=prepared.patches.select(split == "val"))
    predictions = predict(cfg, model, val, rt)
    metrics = compute_metrics(cfg, model, predictions)
    write_metrics(metrics, run_dir / "metrics_in_domain.json")
    return metrics, accuracy_by_source(predictions)


def run_arm(cfg: RunConfig, plugins: PluginSet, keep_checkpoints: bool) -> dict:
    """One (arm, seed): pretrain → fine-tune → shifted test metrics, then in-domain metrics."""
    result = api.run(cfg, plugins)
    assert result.metrics is not None  # a benchmark runs in one process, the one that evaluates
    shifted = result.metrics["metrics"]
    record: dict = {
        "seed": cfg.trainer.seed,
        "shifted": {"accuracy": shifted["accuracy"], "qwk": shifted["qwk"]},
        "per_centre": {},
        "config": cfg.model_dump(mode="json"),
    }
    prepared, rt = prepare_dataset(cfg, plugins), init_runtime(cfg.trainer.device)
    encoder = result.encoder_path  # None when the arm does not pretrain
    record["centre_probe"] = centre_probe(cfg, plugins, prepared.patches, encoder, rt) if encoder else None
    in_domain = evaluate_in_domain(cfg, plugins, prepared, result.run_dir, rt)
    if in_domain is not None:
        metrics, by_centre = in_domain
        record["in_domain"] = {"accuracy": metrics["metrics"]["accuracy"], "qwk": metrics["metrics"]["qwk"]}
        record["per_centre"].update(by_centre)
    held_out = list(shifted.get("qwk_by_source", {}))
    if len(held_out) == 1:  # the test split is the held-out centre: its accuracy is the shifted one
        record["per_centre"][held_out[0]] = shifted["accuracy"]
    if not keep_checkpoints:
        shutil.rmtree(result.run_dir / "checkpoints", ignore_errors=True)
    atomic_write(result.run_dir / RESULT_FILE, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    return record


def _finished(run_dir: Path, cfg: RunConfig) -> dict | None:
    """The result of an earlier identical run in ``run_dir`` (the benchmark resumes), if any."""
    try:
        record = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("config") == cfg.model_dump(mode="json") else None


def mean_std(values: Sequence[float | None]) -> dict | None:
    """``{"mean", "std", "n"}`` with the sample standard deviation (0 for a single value)."""
    vals = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(vals) == 0:
        return None
    std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": float(vals.mean()), "std": std, "n": int(len(vals))}


def summarise(runs: list[dict]) -> dict:
    """Mean ± std over seeds of shifted/in-domain accuracy and QWK, and of accuracy per centre."""
    centres = sorted({c for r in runs for c in r["per_centre"]})
    summary = {
        f"{where}_{metric}": mean_std([r.get(where, {}).get(metric) for r in runs])
        for where in ("shifted", "in_domain")
        for metric in ("accuracy", "qwk")
    }
    summary["per_centre_accuracy"] = {c: mean_std([r["per_centre"].get(c) for r in runs]) for c in centres}
    summary.update(summarise_probes([r.get("centre_probe") for r in runs]))
    return summary


PROBE_FIGURES = ("accuracy", "adabn_accuracy", "colour_accuracy", "majority")


def summarise_probes(probes: Sequence[dict | None]) -> dict:
    """Mean ± std over seeds of every centre-probe figure (``centre_probe_<figure>``)."""
    return {f"centre_probe_{k}": mean_std([(p or {}).get(k) for p in probes]) for k in PROBE_FIGURES}


def stain_shift_benchmark(
    base_cfg: RunConfig,
    out_dir: Path,
    seeds: list[int],
    arms: list[str],
    held_out: str | None = None,
    *,
    sassl: Sequence[bool] | None = None,
    rl: Sequence[bool] | None = None,
    ssl_methods: list[str] | None = None,
    backbones: list[str] | None = None,
    keep_checkpoints: bool = False,
    plugins: PluginSet | None = None,
    log=print,
) -> dict:
    """Run every arm × seed with the source ``held_out`` (default: the dataset's last source, by
    name) as the test split; write ``bench.json``, ``bench.md`` and a montage of every source.

    Finished runs found in ``out_dir`` with an identical config are reused, so an interrupted
    benchmark continues where it stopped. Returns the content of ``bench.json``.
    """
    if not seeds:
        raise UserError("--seeds: expected at least one seed")
    if base_cfg.task.name != "cls":
        raise UserError(
            f"task.name: the stain-shift benchmark scores classification (accuracy, QWK), expected 'cls', found {base_cfg.task.name!r}"
        )
    plugins = plugins or default_plugins()
    out_dir = Path(out_dir)
    base = deep_merge(base_cfg.model_dump(mode="json"), _RUN_DEFAULTS)
    base["output"]["overwrite"], base["output"]["resume"] = True, False
    if held_out is None:
        patches = prepare_dataset(validate(deep_merge(base, {"trainer": {"seed": seeds[0]}})), plugins).patches
        held_out = sorted(set(patches["source"].astype(str)))[-1]
    base = deep_merge(base, {"data": {"held_out_source": held_out}})
    seed_cfgs = [validate(deep_merge(base, {"trainer": {"seed": s}})) for s in seeds]
    target_cfg = seed_cfgs[0]
    table_arms = expand_arms(target_cfg, arms, plugins["stain"].names(), sassl, rl, ssl_methods, backbones)
    rt = init_runtime(target_cfg.trainer.device)
    # a dataset may draw its data from the run's seed: each seed's untrained reference probes its own
    seed_patches = [prepare_dataset(cfg, plugins).patches for cfg in seed_cfgs]
    target = None
    if any(a.stain_norm for a in table_arms):
        target = write_stain_target(target_cfg, seed_patches[0], out_dir / TARGET_FILE)
    write_montage(seed_patches[0], out_dir / MONTAGE_FILE, per_source=8, patch_px=96)
    reference = [centre_probe(cfg, plugins, patches, None, rt) for cfg, patches in zip(seed_cfgs, seed_patches)]
    rows = []
    for arm in table_arms:
        runs = []
        for seed in seeds:
            run_dir = out_dir / arm.name / f"seed{seed}"
            fields = {
                "trainer": {"seed": seed},
                "output": {"dir": str(run_dir)},
                "data": {"stain_target": str(target) if arm.stain_norm else None},
            }
            cfg = validate(deep_merge(deep_merge(base, arm.overrides()), fields))
            record = _finished(run_dir, cfg) or run_arm(cfg, plugins, keep_checkpoints)
            runs.append(
                {k: v for k, v in record.items() if k != "config"} | {"run_dir": str(run_dir.relative_to(out_dir))}
            )
            log(
                f"{arm.name} seed {seed}: shifted accuracy {record['shifted']['accuracy']:.4f}, qwk {record['shifted']['qwk']:.4f}"
                + (f"; in-domain accuracy {record['in_domain']['accuracy']:.4f}" if "in_domain" in record else "")
                + (f"; centre probe {record['centre_probe']['accuracy']:.4f}" if record.get("centre_probe") else "")
            )
        rows.append(asdict(arm) | {"runs": runs, "summary": summarise(runs)})
    report = {
        "benchmark": "stain-shift",
        "dataset": target_cfg.data.dataset,
        "held_out": held_out,
        "seeds": list(seeds),
        "stain_target": TARGET_FILE if target else None,
        "montage": MONTAGE_FILE,
        "random_encoder_probe": summarise_probes(reference),
        "budget": {
            "image_size": target_cfg.data.image_size,
            "pretrain_steps": target_cfg.pretrain.steps,
            "finetune_steps": target_cfg.finetune.steps,
            "batch_size": target_cfg.pretrain.batch_size,
        },
        "arms": rows,
    }
    curves = {row["name"]: read_history(out_dir / row["runs"][0]["run_dir"], "pretrain") for row in rows}
    if plot_curves(
        {name: h for name, h in curves.items() if h}, f"pretraining, seed {seeds[0]}", out_dir / CURVES_FILE
    ):
        report["curves"] = CURVES_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "bench.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1) + "\n"))
    atomic_write_text(out_dir / "bench.md", render_markdown(report))
    return report


def _cell(stat: dict | None) -> str:
    return "–" if stat is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _probe_cells(summary: dict) -> str:
    return " | ".join(_cell(summary.get(f"centre_probe_{k}")) for k in PROBE_FIGURES[:3])


def _floor(report: dict) -> str:
    shares = [row["summary"].get("centre_probe_majority") for row in report["arms"]]
    share = next((s for s in shares if s), None)
    return f"; chance is the majority share, {share['mean']:.2f}" if share else ""


def render_markdown(report: dict) -> str:
    """The table of ``bench.json`` in the shape of the paper's Table 1 (one row per arm)."""
    b = report["budget"]
    lines = [
        f"# Stain-shift benchmark: source {report['held_out']} held out",
        "",
        f"Dataset `{report['dataset']}`, seeds {', '.join(map(str, report['seeds']))} (mean ± sample std), "
        f"{b['image_size']} px, {b['pretrain_steps']} pretraining + {b['finetune_steps']} fine-tuning steps, batch {b['batch_size']}. "
        "Shifted = the held-out centre (test split); in-domain = validation slides of the training centres. "
        "Centre probe = held-out accuracy of a linear probe predicting the centre from the pretrained encoder's "
        "features (lower = more stain-invariant), with BatchNorm statistics re-estimated per centre (AdaBN), and "
        "from the colour statistics of the encoder's input pixels alone" + _floor(report) + ".",
        "",
        "| arm | SSL | backbone | SASSL | stain norm | RL | shifted acc | shifted QWK | in-domain acc | in-domain QWK "
        "| probe | probe AdaBN | probe colour |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reference = report.get("random_encoder_probe")
    if reference:
        lines.append("| random encoder (no training) | | | | | | | | | | " + _probe_cells(reference) + " |")
    for row in report["arms"]:
        s = row["summary"]
        lines.append(
            f"| {row['name']} | {row['ssl']} | {row['backbone']} | {'yes' if row['sassl'] else 'no'} | {row['stain_norm'] or '–'} | "
            f"{'yes' if row['residual'] else 'no'} | {_cell(s['shifted_accuracy'])} | {_cell(s['shifted_qwk'])} | "
            f"{_cell(s['in_domain_accuracy'])} | {_cell(s['in_domain_qwk'])} | {_probe_cells(s)} |"
        )
    centres = sorted({c for row in report["arms"] for c in row["summary"]["per_centre_accuracy"]})
    if centres:
        lines += [
            "",
            "Accuracy per centre:",
            "",
            "| arm | " + " | ".join(centres) + " |",
            "|---|" + "---|" * len(centres),
        ]
        for row in report["arms"]:
            per = row["summary"]["per_centre_accuracy"]
            lines.append(f"| {row['name']} | " + " | ".join(_cell(per.get(c)) for c in centres) + " |")
    return "\n".join(lines) + "\n"
