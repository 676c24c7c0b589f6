"""``sassl export RUN --out DIR``: a run's pretrained encoder as a timm model folder that loads
without sassl.

``DIR`` holds timm's Hugging Face layout, written by timm itself (``timm.models.save_for_hf``):
``config.json`` (``architecture``, ``num_classes: 0``, ``num_features``, ``pretrained_cfg`` with
the run's input size, mean and std) and ``model.safetensors``, plus a ``README.md`` model card.
``timm.create_model("local-dir:DIR", pretrained=True)`` loads it (``"hf-hub:<user>/<repo>"`` once
uploaded).
Patches must be prepared as in training: the run's µm/px and stain normaliser are in
``config.json`` under ``sassl`` and in the card.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import yaml
from timm.models import save_for_hf

from sassl_core.app.inference import inference_config
from sassl_core.errors import UserError
from sassl_core.files import atomic_write, atomic_write_text
from sassl_core.plugins import PluginSet, default_plugins
from sassl_core.train.backbone import create_backbone
from sassl_core.train.checkpoint import load_encoder_state
from sassl_core.train.inference_meta import InferenceRecord, read_inference_record
from sassl_core.train.rundir import ENCODER_FILE

TIMM_FILES = ("config.json", "model.safetensors")


def _read_json(path: Path) -> dict | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _run_settings(run_dir: Path) -> dict:
    """The settings the run's pretraining recorded (``config.yaml``), empty when unreadable."""
    try:
        settings = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return settings if isinstance(settings, dict) else {}


def _sassl_settings(record: InferenceRecord) -> dict:
    """What a user of the weights must reproduce to feed them, stored in ``config.json``."""
    stain = record.inputs.stain_norm
    return {
        "backbone": record.backbone.name,
        "target_mpp": record.patches.target_mpp,
        "stain_norm": stain.model_dump(mode="json") if stain is not None else None,
    }


def model_card(record: InferenceRecord, run_dir: Path, out_name: str) -> str:
    """The README: training data, SSL method and SASSL settings, steps, the run's figures, use."""
    settings = _run_settings(run_dir)
    data, ssl, sassl = settings.get("data", {}), settings.get("ssl", {}), settings.get("sassl", {})
    pretrain = settings.get("pretrain", {})
    stain = record.inputs.stain_norm
    size = record.inputs.size
    lines = [
        f"# {record.backbone.timm_model} encoder pretrained with sassl",
        "",
        "Stain-Adaptive Self-Supervised Learning (SASSL) for histopathology: a self-supervised encoder",
        "trained against a stain discriminator so that its features carry little of each slide's stain.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| backbone | `{record.backbone.timm_model}` (sassl `{record.backbone.name}`), {record.backbone.num_features} features |",
        f"| data | dataset `{data.get('dataset', 'unknown')}`, root `{data.get('root')}`, options `{data.get('options', {})}` |",
        f"| patches | {size} px at {record.patches.target_mpp:g} µm/px, tissue >= {record.patches.tissue_threshold:g} |",
        f"| SSL method | `{ssl.get('method', 'unknown')}` |",
        f"| SASSL | enabled `{sassl.get('enabled')}`, λ `{sassl.get('lam')}`, embedding `{sassl.get('embedding')}`, "
        f"stain source `{sassl.get('source_key')}` |",
        f"| steps | {pretrain.get('steps', 'unknown')} (batch {pretrain.get('batch_size', 'unknown')}) |",
        f"| seed | {record.seed} |",
        f"| sassl version | {record.sassl_version} |",
    ]
    figures = []
    for name in ("metrics.json", "centre_probe.json"):
        content = _read_json(run_dir / name)
        if content is None:
            continue
        values = content.get("metrics", content)
        figures += [f"| {name} | {key} | {value:.4g} |" for key, value in values.items() if isinstance(value, float)]
    if figures:
        lines += ["", "## Figures of the run", "", "| file | metric | value |", "|---|---|---|", *figures]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import timm",
        "",
        f'model = timm.create_model("local-dir:{out_name}", pretrained=True)  # or "hf-hub:<user>/<repo>"',
        "features = model(x)  # x: (B, 3, H, W), RGB in [0, 1] normalised with the mean/std below",
        "```",
        "",
        f"Inputs: {size} px patches at {record.patches.target_mpp:g} µm/px, RGB scaled to [0, 1], then "
        f"`(x - mean) / std` with mean `{list(record.inputs.mean)}` and std `{list(record.inputs.std)}` "
        "(`timm.data.resolve_data_config({}, model=model)` gives them).",
    ]
    if stain is not None:
        lines += [
            "",
            f"Patches were stain-normalised with `{stain.name}` before scaling; its fitted target statistics are in "
            "`config.json` under `sassl.stain_norm`.",
        ]
    return "\n".join(lines) + "\n"


def export_run(run_dir: Path, out_dir: Path, plugins: PluginSet | None = None) -> list[Path]:
    """Write ``run_dir``'s encoder into ``out_dir`` as a timm model folder; returns the files."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    record = read_inference_record(run_dir)
    weights = run_dir / ENCODER_FILE
    if not weights.is_file():
        source = (
            f" (its encoder came from {record.paths.pretrained}: export that run)" if record.paths.pretrained else ""
        )
        raise UserError(f"{weights}: not found; expected a run folder that pretrained an encoder{source}")
    if record.backbone.timm_model is None:
        raise UserError(f"{run_dir}: backbone '{record.backbone.name}' is not a timm model; expected one timm built")
    backbone = inference_config(record).backbone
    model = create_backbone(plugins or default_plugins(), backbone.name, backbone.options, record.inputs.size)
    model.load_state_dict(load_encoder_state(weights, model))
    size = record.inputs.size
    data_config = {"input_size": (3, size, size), "mean": record.inputs.mean, "std": record.inputs.std, "crop_pct": 1.0}
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        save_for_hf(
            model.eval(),
            str(staging),
            model_config={"sassl": _sassl_settings(record)},
            safe_serialization=True,
            data_config=data_config,
        )
        for name in TIMM_FILES:
            atomic_write(out_dir / name, partial(os.replace, staging / name))  # moved onto the temporary name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(out_dir / "README.md", model_card(record, run_dir, str(out_dir)))
    return [out_dir / name for name in (*TIMM_FILES, "README.md")]
