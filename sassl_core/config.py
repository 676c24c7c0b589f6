"""Run configuration: pydantic models, merged once from four sources and validated once.

Merge order (later wins): model defaults → YAML files (``--config``, repeatable, deep-merged in
the order given) → CLI flags → ``--set a.b=c`` overrides. Every section forbids unknown keys, so
a typo is an error naming its path. The resolved config is written to ``<run>/config.yaml`` and
can be fed back with ``--config`` to repeat the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from sassl_core.errors import UserError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] > bounds[1]:
        raise ValueError(f"expected (low, high) with low <= high, found {bounds}")
    return bounds


def _positive(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] <= 0:
        raise ValueError(f"expected values > 0, found {bounds}")
    return bounds


def _non_negative(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] < 0:
        raise ValueError(f"expected values >= 0, found {bounds}")
    return bounds


#: A ``(low, high)`` range to sample uniformly from; ``Factors`` >= 0, ``PositiveRange`` > 0.
Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
Factors = Annotated[Range, AfterValidator(_non_negative)]
PositiveRange = Annotated[Range, AfterValidator(_positive)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # no inf/nan settings


class DataConfig(Section):
    dataset: str = "synthetic"
    root: Path | None = None  # dataset folder (None: the dataset's built-in default)
    options: dict[str, Any] = Field(default_factory=dict)  # validated by the dataset plugin
    image_size: int = Field(64, ge=16)  # patch side fed to the model (the paper: 224 / 512)
    target_mpp: float = Field(0.5, gt=0)  # µm per pixel of the patches (20x ≈ 0.5)
    mpp: float | None = Field(None, gt=0)  # fallback for slides that carry no resolution
    max_per_slide: int = Field(100, ge=1)  # the paper samples 100 tissue patches per slide
    tissue_threshold: float = Field(0.5, ge=0, le=1)
    cache: bool = True  # extract patches once into a memory-mapped store
    cache_dir: Path | None = None  # default: $SASSL_CACHE or ~/.cache/sassl
    num_workers: int = Field(0, ge=0)
    strict: bool = False  # a bad slide is fatal instead of skipped
    stain_norm: str | None = None  # stain transform applied to every image (a baseline)
    stain_norm_options: dict[str, Any] = Field(default_factory=dict)
    stain_target: Path | None = None  # image the stain transform is fitted on
    held_out_source: str | None = None  # this source (centre) is the test split; the others train


class InputConfig(Section):
    """How a patch in ``[0, 1]`` becomes an encoder input: ``(x - mean) / std`` per channel
    (ImageNet statistics by default, what timm's pretrained weights expect). Every stage reads
    this one section: pretraining views, fine-tuning, evaluation, the probe and heatmaps."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(std) <= 0:
            raise ValueError(f"expected values > 0, found {std}")
        return std


class BackboneConfig(Section):
    name: str = "resnet18"
    options: dict[str, Any] = Field(default_factory=dict)


class SSLConfig(Section):
    method: str = "simsiam"
    options: dict[str, Any] = Field(default_factory=dict)
    views: dict[str, Any] = Field(default_factory=dict)  # sassl_core.train.views.ViewOptions


class SasslConfig(Section):
    """The stain discriminator and adversarial objective (paper §3.2, Eq. 4-6)."""

    enabled: bool = True
    hidden_dim: int = Field(256, ge=1)
    layers: int = Field(3, ge=1)
    temperature: float = Field(1.0, gt=0)
    squash: bool = True  # A = sigmoid(l1 l2ᵀ / τ), a probability for the BCE of Eq. 4-6, not the raw product
    cosine: bool = False  # compare unit-length D outputs: affinities cannot saturate (|logit| <= 1/τ)
    # G's adversarial term: every affinity high (paper Eq. 5), or D's own loss maximised
    generator: Literal["affinity", "confusion"] = "affinity"
    normalize: bool = True  # D reads unit-length S1, S2 (else G can inflate every affinity by scaling S)
    lam: float = Field(1.0, ge=0)  # λ weighting the adversarial term in L_G
    warmup_steps: int = Field(0, ge=0)  # λ ramps linearly from 0 over these steps
    lr: float = Field(1e-3, gt=0)  # discriminator learning rate (its own optimiser)
    source_key: Literal["slide", "provider"] = "slide"  # what counts as one stain source
    # what D reads: the projector outputs S1, S2 (paper Eq. 5-6), the encoder's pooled features
    # H1, H2 (what the downstream models use; needs a method that returns them), or the
    # per-channel mean/std of every encoder feature level (sassl_core.method.style)
    embedding: Literal["projector", "encoder", "style"] = "projector"


class OptimConfig(Section):
    name: Literal["sgd", "adamw", "lars"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)  # not applied to norms and biases
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)  # linear warm-up, then cosine decay


class PretrainConfig(Section):
    steps: int = Field(60, ge=0)
    batch_size: int = Field(16, ge=2)  # patches per step (global); two views each
    sources_per_batch: int = Field(4, ge=1)  # k sources × (batch_size / k) patches per source
    optim: OptimConfig = Field(default_factory=OptimConfig)


class TaskConfig(Section):
    name: Literal["cls", "reg", "seg"] | str = "cls"
    options: dict[str, Any] = Field(default_factory=dict)
    residual: bool = True  # residual learning with a frozen generic twin (paper §3.3); False = "w/o RL"
    special_init: Literal["pretrained", "scratch"] = "pretrained"
    freeze_special_stages: int = Field(0, ge=0)
    slide_aggregation: Literal["mean", "none"] = "mean"
    # before predicting, re-estimate BatchNorm statistics on each source's evaluated patches (AdaBN)
    adapt_bn: bool = False


class FinetuneConfig(Section):
    steps: int = Field(60, ge=0)
    batch_size: int = Field(16, ge=1)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    pretrained: Path | None = None  # run folder, checkpoint or encoder.safetensors (finetune stage)


class TrainerConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast on CUDA (always fp32 on CPU)
    compile: bool = False
    channels_last: bool = True
    grad_accum: int = Field(1, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)  # progress line every N steps
    max_nonfinite: int = Field(5, ge=1)  # halt after this many non-finite losses in a row
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA/NCCL; torch's SyncBatchNorm has no CPU path)
    seed: int = 0


class OutputConfig(Section):
    dir: Path = Path("runs/latest")
    overwrite: bool = False
    resume: bool = False
    quiet: bool = False
    tensorboard: bool = True


class RunConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    inputs: InputConfig = Field(default_factory=InputConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    ssl: SSLConfig = Field(default_factory=SSLConfig)
    sassl: SasslConfig = Field(default_factory=SasslConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(UserError):
    """Every bad field of a config, one per line, each with its dotted path."""


def deep_merge(base: dict, update: Mapping) -> dict:
    """``update`` merged into a copy of ``base``; nested mappings merge, other values replace."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict:
    """A YAML mapping from ``path``, read with the safe loader."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read config ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: expected UTF-8 text, found byte 0x{err.object[err.start]:02x} at offset {err.start}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config sections, found {type(data).__name__}")
    return data


def parse_override(text: str) -> dict:
    """``'a.b=c'`` → ``{'a': {'b': <c parsed as YAML>}}``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set sassl.lam=0.5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node: Any = value
    for part in reversed(key.strip().split(".")):
        node = {part: node}
    return node


def validate(raw: Mapping) -> RunConfig:
    """Validate the merged mapping once; every error is reported with its path."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            path = ".".join(str(p) for p in e["loc"]) or "(root)"
            found = e.get("input")
            shown = "" if isinstance(found, (dict, list)) else f" (found {found!r})"
            lines.append(f"config field {path}: {e['msg']}{shown}")
        raise ConfigError("\n".join(lines)) from None


def load_config(
    files: Sequence[Path] = (),
    flags: Mapping | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """Merge defaults, YAML ``files``, CLI ``flags`` (nested dict) and ``--set`` ``overrides``."""
    merged: dict = {}
    for path in files:
        merged = deep_merge(merged, read_yaml(path))
    merged = deep_merge(merged, flags or {})
    for text in overrides:
        merged = deep_merge(merged, parse_override(text))
    return validate(merged)
