"""Stage 1: stain-adaptive self-supervised pretraining (paper §3.1-3.2, Fig. 1).

Each step draws a slide-balanced batch, makes two views on the device, runs the SSL method
(any registered one), then alternates GAN-style: a stain-discriminator step on detached
embeddings (``L_D``, Eq. 6), then a generator step on ``L_G = L_ssl − λ(a_same + a_diff)``
(Eq. 5) with the discriminator frozen. ``sassl.enabled = False`` is the plain SSL baseline with
everything else identical.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from sassl_core.config import RunConfig
from sassl_core.errors import UserError
from sassl_core.interfaces import PreparedData, SSLMethod, SSLOutput
from sassl_core.method.adversary import StainAdversary
from sassl_core.method.sampler import SourceBalancedBatchSampler
from sassl_core.method.style import StyleTap
from sassl_core.plugins import PluginSet
from sassl_core.train.backbone import create_backbone, pooled_dim
from sassl_core.train.checkpoint import export_encoder
from sassl_core.train.data import batch_stream, patch_dataset, source_ids, to_device
from sassl_core.train.inference_meta import describe_run, encoder_metadata, write_inference_record
from sassl_core.train.inputs import build_model_input
from sassl_core.train.optim import build_optimizer, warmup_cosine
from sassl_core.train.rundir import ENCODER_FILE
from sassl_core.train.runtime import Runtime, autocast, in_turn, prepare_model, replicate
from sassl_core.train.trainer import Phase, Program, Trainer
from sassl_core.train.views import ViewGenerator, ViewOptions


@dataclass
class PretrainResult:
    encoder_path: Path
    history: list[dict]


def build_ssl_model(cfg: RunConfig, plugins: PluginSet) -> SSLMethod:
    encoder = create_backbone(plugins, cfg.backbone.name, cfg.backbone.options, cfg.data.image_size)
    return plugins["ssl"].create(cfg.ssl.method, cfg.ssl.options, encoder=encoder, feature_dim=pooled_dim(encoder))


def adversary_inputs(out: SSLOutput, cfg: RunConfig, tap: StyleTap | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views' embeddings the stain discriminator reads (``sassl.embedding``): the
    projector outputs, the encoder's pooled features, or the style statistics ``tap`` recorded."""
    if tap is not None:
        s1, s2 = tap.views(2)
        return s1, s2
    if cfg.sassl.embedding == "projector":
        return out.s1, out.s2
    if out.h1 is None or out.h2 is None:
        raise UserError(
            f"sassl.embedding: ssl method '{cfg.ssl.method}' does not return its encoder features "
            "(SSLOutput.h1/h2); expected 'projector' for it"
        )
    return out.h1, out.h2


def style_tap(cfg: RunConfig, model: SSLMethod) -> StyleTap | None:
    """Hooks recording the encoder's feature levels when D reads their style (``sassl.embedding = 'style'``)."""
    return StyleTap(model.encoder, cfg.data.image_size) if cfg.sassl.embedding == "style" else None


def _embedding_dim(cfg: RunConfig, model: SSLMethod, device: torch.device) -> int:
    probe = torch.zeros(2, 3, cfg.data.image_size, cfg.data.image_size, device=device)
    was_training = model.training
    model.eval()
    tap = style_tap(cfg, model)
    with torch.no_grad(), tap or contextlib.nullcontext():
        out = model(probe, probe)
    model.train(was_training)
    return int(adversary_inputs(out, cfg, tap)[0].shape[1])


def balanced_sampler(cfg: RunConfig, ids, rt: Runtime) -> SourceBalancedBatchSampler:
    if cfg.pretrain.batch_size > len(ids):
        raise UserError(
            f"pretrain.batch_size: expected at most {len(ids)} (the training patches), found {cfg.pretrain.batch_size}"
        )
    k = min(cfg.pretrain.sources_per_batch, int(ids.max()) + 1)
    m = cfg.pretrain.batch_size // k
    if m < 2:
        raise UserError(
            f"pretrain.batch_size {cfg.pretrain.batch_size} with {k} sources per batch leaves fewer than "
            "2 patches per source; raise the batch size or lower pretrain.sources_per_batch"
        )
    return SourceBalancedBatchSampler(
        ids, sources_per_batch=k, patches_per_source=m, seed=cfg.trainer.seed, rank=rt.rank, world_size=rt.world_size
    )


def build_pretrain_program(
    cfg: RunConfig, plugins: PluginSet, rt: Runtime, source_of: torch.Tensor
) -> tuple[Program, SSLMethod]:
    """The pretraining step as a trainer :class:`Program` (also what the benchmarks time).

    ``source_of`` maps a batch's ``index`` (patch-table row) to its stain-source id.

    Under torchrun the SSL model and D are each wrapped in DistributedDataParallel
    (:func:`replicate`); a step backpropagates once through each: D's loss reads detached
    embeddings, and the generator term runs D with detached weights. D reads the gathered global
    batch, so its gradients already agree across processes; DDP averages them anyway (rounding on
    different devices could otherwise drift D apart). That is one bucket (0.75 MiB at the default
    widths) overlapped with D's backward, measured no slower than one all-reduce after it
    (docs/benchmarks.md), and it keeps a single gradient-sync path.
    """
    model = prepare_model(build_ssl_model(cfg, plugins), rt, cfg.trainer.sync_bn, cfg.trainer.channels_last)
    inputs = build_model_input(cfg, plugins).to(rt.device)
    views = ViewGenerator(ViewOptions.model_validate(cfg.ssl.views), scale=inputs.scale)
    view_rng = torch.Generator(device=rt.device).manual_seed(cfg.trainer.seed * 1000 + rt.rank)
    replica = replicate(model, rt)
    forward = torch.compile(replica) if cfg.trainer.compile else replica
    replicas = [replica]
    tap = style_tap(cfg, model) if cfg.sassl.enabled else None

    steps = cfg.pretrain.steps
    optimizers = {"ssl": build_optimizer(model, cfg.pretrain.optim)}
    schedulers = {"ssl": warmup_cosine(optimizers["ssl"], cfg.pretrain.optim.warmup_steps, steps)}
    modules: dict[str, torch.nn.Module] = {"ssl": model}
    adversary = None
    if cfg.sassl.enabled:
        s = cfg.sassl
        adversary = StainAdversary(
            _embedding_dim(cfg, model, rt.device),
            hidden_dim=s.hidden_dim,
            layers=s.layers,
            temperature=s.temperature,
            squash=s.squash,
            cosine=s.cosine,
            generator=s.generator,
            normalize=s.normalize,
            lam=s.lam,
            warmup_steps=s.warmup_steps,
        ).to(rt.device)
        modules["discriminator"] = adversary
        d_replica = replicate(adversary.discriminator, rt)
        replicas.append(d_replica)
        optimizers["discriminator"] = torch.optim.Adam(adversary.parameters(), lr=s.lr, betas=(0.5, 0.999))

    def phases(batch: dict, step: int):
        batch = to_device(batch, rt.device)
        images = inputs.stain_normalise(batch["image"])
        x1, x2 = views.two_views(images, cfg.data.image_size, generator=view_rng)
        if cfg.trainer.channels_last:
            x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
        with autocast(rt.device, cfg.trainer.amp), tap or contextlib.nullcontext():
            out = forward(x1, x2)
        logs = {"L_ssl": out.loss.detach()}
        if adversary is None:
            yield Phase("ssl", out.loss, logs)
            return
        src = source_of[batch["index"]]
        s1, s2 = (s.float() for s in adversary_inputs(out, cfg, tap))
        d_loss, d_stats = adversary.discriminator_loss(s1, s2, src, d_replica)
        yield Phase("discriminator", d_loss, {"L_D": d_loss.detach()})
        g_term, g_stats = adversary.generator_term(s1, s2, src, step)
        logs.update(a_same=g_stats["a_same"], a_diff=g_stats["a_diff"], lam=adversary.lam_at(step))
        yield Phase("ssl", out.loss + g_term, logs)

    program = Program(
        modules=modules,
        optimizers=optimizers,
        schedulers=schedulers,
        phases=phases,
        after_step=lambda step: model.after_step((step + 1) / max(1, steps)),
        extra_state=lambda: {"view_rng": view_rng.get_state()},
        load_extra_state=lambda state: view_rng.set_state(state["view_rng"]) if "view_rng" in state else None,
        replicas=replicas,
    )
    return program, model


def pretrain(cfg: RunConfig, plugins: PluginSet, prepared: PreparedData, run_dir: Path, rt: Runtime) -> PretrainResult:
    """Pretrain an encoder on the dataset's training patches; export ``encoder.safetensors``."""
    table = prepared.patches.split("train")
    ids = source_ids(table, cfg.sassl.source_key)
    with in_turn(rt):  # rank 0 builds the patch cache, the others open it
        dataset = patch_dataset(cfg, table, with_masks=False, quiet=cfg.output.quiet or not rt.is_main)
    sampler = balanced_sampler(cfg, ids, rt)

    def index_batches():
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from sampler

    program, model = build_pretrain_program(cfg, plugins, rt, torch.as_tensor(ids, device=rt.device))
    trainer = Trainer("pretrain", run_dir, cfg.trainer, cfg.output, rt, cfg.pretrain.steps)
    history = trainer.fit(program, batch_stream(dataset, index_batches, cfg.data.num_workers))
    encoder_path = Path(run_dir) / ENCODER_FILE
    if rt.is_main:
        record = describe_run(cfg, plugins, run_dir, model.encoder)
        export_encoder(model.encoder, encoder_path, encoder_metadata(record))
        write_inference_record(run_dir, record)
    if rt.distributed:
        torch.distributed.barrier()
    return PretrainResult(encoder_path, history)
