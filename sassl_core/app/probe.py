"""How much scanning-centre information a pretrained encoder's features still carry.

SASSL's adversary (paper Eq. 5-6) pushes the embeddings of patches from different sources
together so that the encoder forgets the stain. This probe measures that outcome directly,
without any downstream task: a linear classifier (multinomial logistic regression) is fitted on
the frozen, pooled features of the patches of half the slides of every centre and predicts the
centre of the other half's patches. Slides, not patches, are split, so the probe cannot win by
recognising a slide's tissue. Lower held-out accuracy means a more stain-invariant encoder; the
floor is the share of the most common centre among the held-out patches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sassl_core.config import RunConfig
from sassl_core.plugins import PluginSet
from sassl_core.train.backbone import create_backbone
from sassl_core.train.checkpoint import load_encoder_state
from sassl_core.train.data import patch_dataset, sequential_batches, to_device
from sassl_core.train.inputs import build_model_input
from sassl_core.train.runtime import Runtime, autocast
from sassl_core.wsi.dataset import make_loader
from sassl_core.wsi.patches import PatchTable


def probe_split(slides: np.ndarray, centres: np.ndarray, seed: int) -> np.ndarray | None:
    """Per patch, whether it is in the probe's fitting half: half the slides of each centre
    (rounded down, at least one). ``None`` unless there are two centres with two slides each."""
    rng = np.random.default_rng(seed)
    fit_slides: set[str] = set()
    names = sorted(set(centres))
    for centre in names:
        own = sorted(set(slides[centres == centre]))
        if len(own) < 2:
            return None
        fit_slides.update(rng.permutation(own)[: len(own) // 2].tolist())
    return np.isin(slides, sorted(fit_slides)) if len(names) >= 2 else None


@torch.no_grad()
def embed_patches(
    cfg: RunConfig, plugins: PluginSet, encoder: nn.Module, table: PatchTable, rt: Runtime
) -> torch.Tensor:
    """Pooled features ``(N, D)`` of ``table``'s patches, with the stain normalisation and input
    scaling the encoder was pretrained with."""
    inputs = build_model_input(cfg, plugins).to(rt.device)
    dataset = patch_dataset(cfg, table, with_masks=False, quiet=True)
    encoder.eval()
    features = []
    order = sequential_batches(len(table), cfg.finetune.batch_size)
    for batch in make_loader(dataset, batch_sampler=order, num_workers=cfg.data.num_workers):
        x = inputs(to_device(batch, rt.device)["image"])
        with autocast(rt.device, cfg.trainer.amp):
            features.append(encoder(x).float())
    return torch.cat(features)


def fit_linear_probe(
    x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float = 1e-2, iterations: int = 200
) -> nn.Module:
    """Multinomial logistic regression on standardised features, fitted to convergence with L-BFGS."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    linear = nn.Linear(x.shape[1], classes).to(x.device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")
    z = (x - mean) / std

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(z), y) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return nn.Sequential(_Standardise(mean, std), linear).eval()


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def centre_probe(cfg: RunConfig, plugins: PluginSet, table: PatchTable, encoder_path: Path, rt: Runtime) -> dict | None:
    """Held-out accuracy of predicting each patch's centre (column ``source``) from the
    features of the encoder in ``encoder_path``; ``None`` where :func:`probe_split` finds too few
    centres or slides."""
    slides, centres = table["slide_id"].astype(str), table["source"].astype(str)
    fit = probe_split(slides, centres, cfg.trainer.seed)
    if fit is None:
        return None
    encoder = create_backbone(plugins, cfg.backbone.name, cfg.backbone.options, cfg.data.image_size).to(rt.device)
    encoder.load_state_dict(load_encoder_state(encoder_path, encoder))
    features = embed_patches(cfg, plugins, encoder, table, rt)
    names = sorted(set(centres))
    labels = torch.as_tensor(np.searchsorted(names, centres), device=rt.device)
    fit_t = torch.as_tensor(fit, device=rt.device)
    probe = fit_linear_probe(features[fit_t], labels[fit_t], len(names))
    with torch.no_grad():
        predicted = probe(features[~fit_t]).argmax(1)
    held_out = labels[~fit_t]
    return {
        "accuracy": float((predicted == held_out).float().mean()),
        "majority": float(held_out.bincount().max() / len(held_out)),
        "centres": len(names),
        "fit_patches": int(fit.sum()),
        "test_patches": int((~fit).sum()),
    }
