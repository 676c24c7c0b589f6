"""Stage 2: downstream migration with residual learning (paper §3.3, Eq. 7-9, Fig. 4).

The frozen generic encoder ``E_g`` (the pretrained one) and a trainable special twin ``E_s``
feed the task head through the fused features ``f_e = f_g ⊙ f_s + σ(f_s)``;
``task.residual = False`` is the "w/o RL" ablation (fine-tune the pretrained encoder alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.interfaces import PreparedData, TaskHead
from sassl_core.method.transfer import DualEncoder, build_dual_encoder
from sassl_core.plugins import PluginSet
from sassl_core.train.backbone import create_backbone
from sassl_core.train.checkpoint import load_encoder_state
from sassl_core.train.data import batch_stream, patch_dataset, shuffled_batches, to_device
from sassl_core.train.inputs import ModelInput, build_model_input
from sassl_core.train.optim import build_optimizer, warmup_cosine
from sassl_core.train.runtime import Runtime, autocast, prepare_model
from sassl_core.train.trainer import Phase, Program, Trainer


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


def build_downstream(
    cfg: RunConfig, plugins: PluginSet, prepared: PreparedData, pretrained: Path | None
) -> DownstreamModel:
    kind = plugins["task"].get(cfg.task.name).target_kind
    assert kind is not None  # every task declares one when it registers
    if kind not in prepared.target_kinds:
        raise UserError(
            f"task.name: '{cfg.task.name}' learns from {kind}s, but dataset '{cfg.data.dataset}' has none "
            f"(it has: {', '.join(map(str, prepared.target_kinds)) or 'no targets'})"
        )

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


def random_dihedral(images: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator):
    """The same random flip / 90° rotation for a batch's images (B,H,W,3) and masks (B,H,W)."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    images = torch.rot90(images, k, dims=(1, 2))
    masks = torch.rot90(masks, k, dims=(1, 2)) if masks is not None else None
    if flip % 2:
        images = images.flip(2)
        masks = masks.flip(2) if masks is not None else None
    return images, masks


@dataclass
class FinetuneResult:
    model: DownstreamModel
    history: list[dict]


def finetune(
    cfg: RunConfig, plugins: PluginSet, prepared: PreparedData, run_dir: Path, rt: Runtime, pretrained: Path | None
) -> FinetuneResult:
    model = prepare_model(build_downstream(cfg, plugins, prepared, pretrained), rt, cfg.trainer.sync_bn, False)
    kind = model.head.target_kind
    table = kind.labelled(prepared.patches.split("train"))
    if len(table) == 0:
        raise UserError(f"dataset '{cfg.data.dataset}': no labelled training patches for task '{cfg.task.name}'")
    dataset = patch_dataset(cfg, table, with_masks=kind.reads_masks, quiet=cfg.output.quiet or not rt.is_main)
    batch_size = cfg.finetune.batch_size
    if batch_size > len(table):
        raise UserError(
            f"finetune.batch_size: expected at most {len(table)} (the labelled training patches), found {batch_size}"
        )
    aug_rng = torch.Generator().manual_seed(cfg.trainer.seed + 17)
    steps = cfg.finetune.steps
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(nn.ParameterList(trainable), cfg.finetune.optim)
    program_model = torch.compile(model) if cfg.trainer.compile else model

    def phases(batch: dict, step: int):
        batch = to_device(batch, rt.device)
        images, masks = random_dihedral(batch["image"], batch.get("mask"), aug_rng)
        if masks is not None:
            batch["mask"] = masks
        with autocast(rt.device, cfg.trainer.amp):
            output = program_model(images)
        loss = model.head.loss(output.float(), model.head.targets(batch))
        yield Phase("task", loss, {"loss": loss.detach()})

    program = Program(
        modules={"model": model},
        optimizers={"task": optimizer},
        schedulers={"task": warmup_cosine(optimizer, cfg.finetune.optim.warmup_steps, steps)},
        phases=phases,
        extra_state=lambda: {"aug_rng": aug_rng.get_state()},
        load_extra_state=lambda state: aug_rng.set_state(state["aug_rng"]) if "aug_rng" in state else None,
    )
    trainer = Trainer("finetune", run_dir, cfg.trainer, cfg.output, rt, steps)
    stream = batch_stream(
        dataset,
        lambda: shuffled_batches(len(table), batch_size, cfg.trainer.seed, rt.rank, rt.world_size),
        cfg.data.num_workers,
    )
    history = trainer.fit(program, stream)
    return FinetuneResult(model, history)
