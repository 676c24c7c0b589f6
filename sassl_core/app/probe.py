"""How much scanning-centre information a pretrained encoder's features still carry.

SASSL's adversary (paper Eq. 5-6) pushes the embeddings of patches from different sources
together so that the encoder forgets the stain. This probe measures that outcome directly,
without any downstream task: a linear classifier (multinomial logistic regression) is fitted on
the frozen, pooled features of the patches of half the slides of every centre and predicts the
centre of the other half's patches. Slides, not patches, are split, so the probe cannot win by
recognising a slide's tissue. Lower held-out accuracy means a more stain-invariant encoder; the
floor is the share of the most common centre among the held-out patches.

Three figures, each from the same split, so they can be compared:

* ``accuracy`` — the encoder's features as the fine-tuned model would see them;
* ``adabn_accuracy`` — the same after re-estimating the encoder's BatchNorm statistics on each
  centre's own patches (AdaBN, Li et al. 2016, "Revisiting batch normalization for practical
  domain adaptation"): a centre's global colour cast largely travels in those statistics, which
  per-centre re-estimation removes, so this figure tells what the *weights* still encode;
* ``colour_accuracy`` — the probe on the per-channel mean and standard deviation of the encoder's
  input pixels (RGB and optical density): what is detectable from colour alone, with no
  encoder. A figure near it means the features carry about as much stain as raw colour does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sassl_core.color import rgb_to_od
from sassl_core.config import InputConfig, RunConfig
from sassl_core.plugins import PluginSet
from sassl_core.train.backbone import create_backbone
from sassl_core.train.batchnorm import adapted_copy
from sassl_core.train.checkpoint import load_encoder_state
from sassl_core.train.data import inference_batches, patch_dataset, sequential_batches
from sassl_core.train.inputs import build_model_input
from sassl_core.train.runtime import Runtime, autocast
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
def load_inputs(cfg: RunConfig, plugins: PluginSet, table: PatchTable, rt: Runtime) -> torch.Tensor:
    """Every patch of ``table`` as the encoder reads it (stain transform, scaling), ``(N, 3, H, W)``."""
    inputs = build_model_input(cfg, plugins).to(rt.device)
    dataset = patch_dataset(cfg, table, with_masks=False, quiet=True)
    order = sequential_batches(len(table), cfg.finetune.batch_size)
    return torch.cat([inputs(batch["image"]) for batch in inference_batches(cfg, dataset, order, rt.device)])


@torch.no_grad()
def embed(encoder: nn.Module, x: torch.Tensor, batch_size: int, amp: bool) -> torch.Tensor:
    """Pooled features ``(N, D)`` of the encoder in eval mode."""
    encoder.eval()
    out = []
    for start in range(0, len(x), batch_size):
        with autocast(x.device, amp):
            out.append(encoder(x[start : start + batch_size]).float())
    return torch.cat(out)


@torch.no_grad()
def embed_adabn(encoder: nn.Module, x: torch.Tensor, centres: np.ndarray, batch_size: int, amp: bool) -> torch.Tensor:
    """Features of each centre's patches with BatchNorm statistics re-estimated on that centre alone."""
    features = torch.empty(0)
    for centre in sorted(set(centres)):
        own = torch.as_tensor(np.flatnonzero(centres == centre), device=x.device)
        adapted = adapted_copy(encoder, x[own].split(batch_size))
        part = embed(adapted, x[own], batch_size, amp)
        if features.numel() == 0:
            features = part.new_zeros(len(x), part.shape[1])
        features[own] = part
    return features


def colour_statistics(x: torch.Tensor, stats: InputConfig) -> torch.Tensor:
    """Per image: mean and standard deviation of each RGB and optical-density channel ``(N, 12)``."""
    mean, std = torch.tensor(stats.mean, device=x.device), torch.tensor(stats.std, device=x.device)
    rgb = (x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(0, 1)
    both = torch.cat([rgb, rgb_to_od(rgb)], dim=1).flatten(2)
    return torch.cat([both.mean(-1), both.std(-1)], dim=1)


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
    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, fit: torch.Tensor, classes: int) -> float:
    """Held-out accuracy of a linear probe fitted on the ``fit`` rows."""
    probe = fit_linear_probe(features[fit], labels[fit], classes)
    with torch.no_grad():
        return float((probe(features[~fit]).argmax(1) == labels[~fit]).float().mean())


def centre_probe(
    cfg: RunConfig, plugins: PluginSet, table: PatchTable, encoder_path: Path | None, rt: Runtime
) -> dict | None:
    """Held-out accuracy of predicting each patch's centre (column ``source``) from the features
    of the encoder in ``encoder_path`` (a randomly initialised one when ``None``: the reference a
    trained encoder is compared with), with and without AdaBN, and from colour alone; ``None``
    where :func:`probe_split` finds too few centres or slides."""
    slides, centres = table["slide_id"].astype(str), table["source"].astype(str)
    fit = probe_split(slides, centres, cfg.trainer.seed)
    if fit is None:
        return None
    torch.manual_seed(cfg.trainer.seed)
    encoder = create_backbone(plugins, cfg.backbone.name, cfg.backbone.options, cfg.data.image_size).to(rt.device)
    if encoder_path is not None:
        encoder.load_state_dict(load_encoder_state(encoder_path, encoder))
    x = load_inputs(cfg, plugins, table, rt)
    names = sorted(set(centres))
    labels = torch.as_tensor(np.searchsorted(names, centres), device=rt.device)
    fit_t = torch.as_tensor(fit, device=rt.device)
    size, amp = cfg.finetune.batch_size, cfg.trainer.amp
    held_out = labels[~fit_t]
    return {
        "accuracy": probe_accuracy(embed(encoder, x, size, amp), labels, fit_t, len(names)),
        "adabn_accuracy": probe_accuracy(embed_adabn(encoder, x, centres, size, amp), labels, fit_t, len(names)),
        "colour_accuracy": probe_accuracy(colour_statistics(x, cfg.inputs), labels, fit_t, len(names)),
        "majority": float(held_out.bincount().max() / len(held_out)),
        "centres": len(names),
        "fit_patches": int(fit.sum()),
        "test_patches": int((~fit).sum()),
    }
