"""Run configuration: pydantic models, merged once from four sources and validated once.

Merge order (later wins): model defaults → YAML files (``--config``, repeatable, deep-merged in
the order given) → CLI flags → ``--set a.b=c`` overrides. Every section forbids unknown keys, so
a typo is an error naming its path. The resolved config is written to ``<run>/config.yaml`` and
can be fed back with ``--config`` to repeat the run.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from sassl_core.errors import UserError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
#: Largest magnitude of any integer setting: a signed 64-bit integer, what torch and numpy take.
MAX_INT = 2**63 - 1
#: Deepest nesting of mappings and lists a config (file or ``--set`` value) may have.
MAX_DEPTH = 32
#: What ``trainer.device`` accepts.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


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
    image_size: int = Field(64, ge=16, le=8192)  # patch side fed to the model (the paper: 224 / 512)
    target_mpp: float = Field(0.5, gt=0)  # µm per pixel of the patches (20x ≈ 0.5)
    mpp: float | None = Field(None, gt=0)  # fallback for slides that carry no resolution
    max_per_slide: int = Field(100, ge=1)  # the paper samples 100 tissue patches per slide
    tissue_threshold: float = Field(0.5, ge=0, le=1)
    cache: bool = True  # extract patches once into a memory-mapped store
    cache_dir: Path | None = None  # default: $SASSL_CACHE or ~/.cache/sassl
    num_workers: int = Field(0, ge=0, le=1024)
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
    hidden_dim: int = Field(256, ge=1, le=65536)  # beyond, the discriminator's weights overflow memory
    layers: int = Field(3, ge=1, le=64)
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
    # share of the training data held out for validation when the dataset has no 'val' split
    # (whole slides where there are several); 0: no validation, the last step's model is kept
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    val_every: int = Field(20, ge=1)  # validate every N steps (and after the last); keep the best
    augment: bool = True  # flips, 90° rotations and HED stain jitter of each training patch


class TrainerConfig(Section):
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    amp: bool = True  # bf16 autocast on CUDA (always fp32 on CPU)
    compile: bool = False
    channels_last: bool = True
    grad_accum: int = Field(1, ge=1, le=65536)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)  # progress line every N steps
    max_nonfinite: int = Field(5, ge=1)  # halt after this many non-finite losses in a row
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA/NCCL; torch's SyncBatchNorm has no CPU path)
    seed: int = Field(0, ge=0, le=2**63 - 1)  # torch and the samplers take no negative seed

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not DEVICE_PATTERN.fullmatch(device):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, found {device!r}")
        return device


class OutputConfig(Section):
    dir: Path = Path("runs/latest")
    overwrite: bool = False
    resume: bool = False
    resume_with_changes: bool = False  # --resume may change settings other than steps and output
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
    data = _load_yaml(text, str(path))
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
    where = f"--set {key.strip() if len(key.strip()) <= 60 else key.strip()[:57] + '...'}"
    try:
        value = _load_yaml(raw, where) if raw.strip() else None
    except _NotYaml:
        value = raw
    node: Any = value
    for part in reversed(key.strip().split(".")):
        node = {part: node}
    _check_depth(node, where)
    return node


class _NotYaml(UserError):
    """Text the YAML parser rejects (``--set`` then takes it as a plain string)."""


def _load_yaml(text: str, where: str) -> Any:
    """``text`` parsed with the safe loader; every failure is a :class:`UserError` naming ``where``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _NotYaml(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise UserError(f"{where}: expected nesting at most {MAX_DEPTH} deep, found deeper") from None
    except ValueError:  # an integer past Python's digit limit for int()
        raise UserError(
            f"{where}: expected integers of at most {sys.get_int_max_str_digits()} digits, found a longer one"
        ) from None
    _check_depth(data, where)
    return data


def _check_depth(data: Any, where: str) -> None:
    """Refuse mappings and lists nested deeper than :data:`MAX_DEPTH` (checked without recursion)."""
    level = [data]
    for _ in range(MAX_DEPTH + 1):
        level = [
            v
            for node in level
            if isinstance(node, (dict, list))
            for v in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return
    raise UserError(f"{where}: expected nesting at most {MAX_DEPTH} deep, found deeper")


def validate(raw: Mapping) -> RunConfig:
    """Validate the merged mapping once; every error is reported with its path."""
    unusable = [f"config field {path}: {problem}" for path, problem in _unusable_values(raw)]
    if unusable:
        raise ConfigError("\n".join(unusable))
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            path = ".".join(str(p) for p in e["loc"]) or "(root)"
            shown = "" if "found" in e["msg"] else _shown(e.get("input"))
            message = e["msg"].removeprefix("Value error, ")  # the project's own validators say it all
            lines.append(f"config field {path}: {message}{shown}")
        raise ConfigError("\n".join(lines)) from None


def _unusable_values(raw: Mapping) -> list[tuple[str, str]]:
    """``(dotted path, problem)`` of every value in ``raw`` (plugin options included) that no
    setting can hold: an integer beyond 64 bits overflows torch and numpy wherever it goes, and
    text with a NUL character is no file name the system accepts."""
    found, stack = [], [(str(k), v) for k, v in raw.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Mapping):
            stack += [(f"{path}.{k}", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            stack += [(f"{path}.{i}", v) for i, v in enumerate(value)]
        elif isinstance(value, int) and abs(value) > MAX_INT:
            found.append((path, f"expected an integer within ±{MAX_INT}, found a larger one"))
        elif isinstance(value, str) and "\x00" in value:
            found.append((path, f"expected text without NUL characters, found {_brief(value)}"))
    return sorted(found)


def _shown(found: Any) -> str:
    """`` (found <value>)`` for an error line: short, one line, never a container."""
    if isinstance(found, (dict, list)):
        return ""
    if isinstance(found, int) and abs(found) > MAX_INT:
        return ""  # its digits may exceed what str() converts; the message says it is too large
    return f" (found {_brief(found)})"


def _brief(value: Any) -> str:
    """``repr(value)``, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
