"""Stage 2: downstream migration with residual learning (paper §3.3, Eq. 7-9, Fig. 4).

The frozen generic encoder ``E_g`` (the pretrained one) and a trainable special twin ``E_s``
feed the task head through the fused features ``f_e = f_g ⊙ f_s + σ(f_s)``;
``task.residual = False`` is the "w/o RL" ablation (fine-tune the pretrained encoder alone).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.interfaces import PreparedData, TargetKind, TaskHead
from sassl_core.method.transfer import DualEncoder, build_dual_encoder
from sassl_core.plugins import PluginSet
from sassl_core.train.augment import AugmentedDataset, build_augmentation, numbered
from sassl_core.train.backbone import create_backbone
from sassl_core.train.checkpoint import load_encoder_state
from sassl_core.train.data import batch_stream, patch_dataset, shuffled_batches, to_device
from sassl_core.train.inference_meta import describe_run, write_inference_record
from sassl_core.train.inputs import ModelInput, build_model_input
from sassl_core.train.optim import build_optimizer, warmup_cosine
from sassl_core.train.runtime import Runtime, autocast, in_turn, prepare_model, replicate
from sassl_core.train.trainer import Phase, Program, Trainer
from sassl_core.train.validation import BestModel, validation_split
from sassl_core.wsi.dataset import PatchDataset


class DownstreamModel(nn.Module):
    """Dual encoder + task head; ``forward`` takes uint8 ``(B, H, W, 3)`` patches and prepares
    them with the run's :class:`ModelInput` (stain transform, scaling), so fine-tuning,
    evaluation and heatmaps feed the encoder alike."""

    def __init__(self, encoder: DualEncoder, head: TaskHead, image_size: int, inputs: ModelInput) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.image_size = image_size
        self.inputs = inputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.inputs(images)), self.image_size)


def resolve_pretrained(path: Path | None) -> Path | None:
    """A run folder, a pretraining checkpoint or an ``encoder.safetensors`` → the weights file."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        candidate = path / "encoder.safetensors"
        if not candidate.is_file():
            raise UserError(f"finetune.pretrained: {path} holds no encoder.safetensors (pretrain first)")
        return candidate
    if not path.is_file():
        raise UserError(f"finetune.pretrained: {path} does not exist")
    return path


def task_target_kind(cfg: RunConfig, plugins: PluginSet, prepared: PreparedData) -> TargetKind:
    """The kind of target the run's task learns from, refused when the dataset carries none."""
    kind = plugins["task"].get(cfg.task.name).target_kind
    assert kind is not None  # every task declares one when it registers
    if kind not in prepared.target_kinds:
        raise UserError(
            f"task.name: '{cfg.task.name}' learns from {kind}s, but dataset '{cfg.data.dataset}' has none "
            f"(it has: {', '.join(map(str, prepared.target_kinds)) or 'no targets'})"
        )
    return kind


def build_downstream(
    cfg: RunConfig, plugins: PluginSet, prepared: PreparedData, pretrained: Path | None
) -> DownstreamModel:
    kind = task_target_kind(cfg, plugins, prepared)
    if kind is TargetKind.LABEL:
        check_labels(cfg, prepared)

    def make_backbone() -> nn.Module:
        return create_backbone(plugins, cfg.backbone.name, cfg.backbone.options, cfg.data.image_size)

    state = load_encoder_state(pretrained) if pretrained is not None else None
    encoder = build_dual_encoder(
        make_backbone,
        state,
        residual=cfg.task.residual,
        special_init=cfg.task.special_init,
        freeze_special_stages=cfg.task.freeze_special_stages,
        source=str(pretrained),
    )
    head = plugins["task"].create(
        cfg.task.name,
        cfg.task.options,
        feature_channels=encoder.feature_channels,
        num_outputs=kind.num_outputs(prepared, cfg.task.name),
    )
    return DownstreamModel(encoder, head, cfg.data.image_size, build_model_input(cfg, plugins))


def check_labels(cfg: RunConfig, prepared: PreparedData) -> None:
    """Refuse class labels outside ``0..K-1`` other than ``-1`` (unknown)."""
    labels = prepared.patches["label"].astype(np.int64)
    bad = labels[(labels < -1) | (labels >= prepared.num_classes)]
    if len(bad):
        raise UserError(
            f"data.dataset: '{cfg.data.dataset}' expected labels 0..{prepared.num_classes - 1} "
            f"(or -1: unknown), found {int(bad[0])}"
        )


@dataclass
class FinetuneResult:
    model: DownstreamModel
    history: list[dict]
    best: dict = field(default_factory=dict)  # {"best_step", "val_<metric>"} of the weights kept


def finetune(
    cfg: RunConfig, plugins: PluginSet, prepared: PreparedData, run_dir: Path, rt: Runtime, pretrained: Path | None
) -> FinetuneResult:
    model = prepare_model(build_downstream(cfg, plugins, prepared, pretrained), rt, cfg.trainer.sync_bn, False)
    kind = model.head.target_kind
    fraction, batch_size = cfg.finetune.val_fraction, cfg.finetune.batch_size
    table, val_table = validation_split(kind.labelled(prepared.patches), fraction, cfg.trainer.seed, batch_size)
    if len(table) == 0:
        raise UserError(f"dataset '{cfg.data.dataset}': no labelled training patches for task '{cfg.task.name}'")
    if fraction > 0 and len(val_table) == 0 and rt.is_main:
        print(
            f"warning: finetune.val_fraction: {len(table)} training patches leave none to validate on "
            "beside a batch; the last step's weights are kept",
            file=sys.stderr,
        )
    with in_turn(rt):  # rank 0 builds the patch cache, the others open it
        base = patch_dataset(cfg, table, with_masks=kind.reads_masks, quiet=cfg.output.quiet or not rt.is_main)
    dataset = AugmentedDataset(base, build_augmentation(), cfg.trainer.seed) if cfg.finetune.augment else base
    if batch_size > len(table):
        raise UserError(
            f"finetune.batch_size: expected at most {len(table)} (the labelled training patches), found {batch_size}"
        )
    steps = cfg.finetune.steps
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(nn.ParameterList(trainable), cfg.finetune.optim)
    # validation on the main process, every ``val_every`` steps and after the last
    best = BestModel(cfg, model, val_table, run_dir, rt) if len(val_table) and rt.is_main else None

    def after_step(step: int) -> None:
        if best is not None and ((step + 1) % cfg.finetune.val_every == 0 or step + 1 == steps):
            best.validate(step + 1)

    # DistributedDataParallel under torchrun (frozen E_g takes no part); the feature levels may
    # leave a backbone's last layers unused (a ViT's final norm)
    replica = replicate(model, rt, find_unused=True)
    program_model = torch.compile(replica) if cfg.trainer.compile else replica

    def phases(batch: dict, step: int):
        batch = to_device(batch, rt.device)
        with autocast(rt.device, cfg.trainer.amp):
            output = program_model(batch["image"])
        loss = model.head.loss(output.float(), model.head.targets(batch))
        yield Phase("task", loss, {"loss": loss.detach()})

    program = Program(
        modules={"model": model},
        optimizers={"task": optimizer},
        schedulers={"task": warmup_cosine(optimizer, cfg.finetune.optim.warmup_steps, steps)},
        phases=phases,
        after_step=after_step,
        extra_state=lambda: {"best": best.record} if best is not None else {},
        load_extra_state=lambda state: setattr(best, "record", state.get("best")) if best is not None else None,
        replicas=[replica],
    )
    trainer = Trainer("finetune", run_dir, cfg.trainer, cfg.output, rt, steps)
    if best is not None and not (cfg.output.resume and trainer.last_path.exists()):
        best.start()

    def index_batches():
        batches = shuffled_batches(len(table), batch_size, cfg.trainer.seed, rt.rank, rt.world_size)
        return numbered(batches, len(table)) if cfg.finetune.augment else batches

    stream = batch_stream(cast(PatchDataset, dataset), index_batches, cfg.data.num_workers)  # either reads alike
    history = trainer.fit(program, stream)
    if best is not None:
        best.restore()
    if rt.is_main:
        record = describe_run(cfg, plugins, run_dir, model.encoder.special, prepared, kind, pretrained)
        write_inference_record(run_dir, record)
    return FinetuneResult(model, history, (best.record or {}) if best is not None else {})
