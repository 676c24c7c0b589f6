"""Downstream migration: generic/special dual encoder with residual learning and fusion (§3.3).

``E_g`` is the SASSL-pretrained encoder, frozen; ``E_s`` is a trainable encoder of the same
architecture. At every feature level ``l`` (see :func:`sassl_core.method.features.feature_levels`):

* Eq. 7: ``f_g^l = E_g^l(f_g^{l-1})``
* Eq. 8: ``f_s^l = E_s^l(f_s^{l-1}) + f_g^l`` — the sum is what ``E_s``'s next stage receives
  (added by a forward hook on ``E_s``'s stage module, in the stage's native layout, so token
  outputs of transformers are summed as tokens);
* Eq. 9: ``f_e^l = f_g^l * f_s^l + sigmoid(f_s^l)`` — the fused map handed to the task head.

``residual=False`` is the paper's "w/o RL" ablation: ``E_s`` alone, fine-tuned from the
pretrained weights, returning its own level maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from sassl_core.errors import UserError
from sassl_core.method.features import (
    LevelHooks,
    LevelSpec,
    feature_levels,
    model_layout,
    run_features,
    to_map,
)


def fuse(f_g: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
    """Attention-style fusion of generic and special features (paper Eq. 9).

    >>> fuse(torch.tensor([2.0]), torch.tensor([0.0]))
    tensor([0.5000])
    """
    return f_g * f_s + torch.sigmoid(f_s)


class DualEncoder(nn.Module):
    """Frozen generic encoder ``E_g`` + trainable special encoder ``E_s`` (paper Eq. 7-9).

    ``forward(x)`` returns the fused maps of every level, shallow to deep, each
    ``(B, C_l, H_l, W_l)``; with ``residual=False`` it returns ``E_s``'s own level maps.
    """

    def __init__(
        self,
        generic: nn.Module | None,
        special: nn.Module,
        residual: bool = True,
        frozen_special_modules: tuple[str, ...] = (),
    ):
        super().__init__()
        if residual and generic is None:
            raise ValueError("residual learning needs a generic encoder")
        self.residual = residual
        self.special = special
        self.generic = generic if residual else None
        self.levels: list[LevelSpec] = feature_levels(special)
        self.frozen_special_modules = tuple(frozen_special_modules)
        self._layout = model_layout(special)
        self._prefix = int(getattr(special, "num_prefix_tokens", 0) or 0)
        if self.generic is not None:
            self.generic.requires_grad_(False)
            self.generic.eval()

    @property
    def feature_channels(self) -> list[int]:
        return [s.channels for s in self.levels]

    @property
    def reductions(self) -> list[int]:
        return [s.reduction for s in self.levels]

    def train(self, mode: bool = True) -> DualEncoder:
        """``E_g`` and any frozen ``E_s`` stages stay in eval mode (fixed normalisation statistics)."""
        super().train(mode)
        if self.generic is not None:
            self.generic.eval()
        modules = dict(self.special.named_modules())
        for name in self.frozen_special_modules:
            modules[name].eval()
        return self

    def _maps(self, outputs: list[torch.Tensor], hw: tuple[int, int]) -> list[torch.Tensor]:
        return [to_map(o, s, hw, self._layout, self._prefix) for o, s in zip(outputs, self.levels)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        hw = (x.shape[-2], x.shape[-1])
        if self.generic is None:
            with LevelHooks(self.special, self.levels) as special_hooks:
                run_features(self.special, x)
            return self._maps(special_hooks.captured(), hw)
        with torch.no_grad(), LevelHooks(self.generic, self.levels) as generic_hooks:
            run_features(self.generic, x)
        generic_out = generic_hooks.captured()

        def add_generic(index: int, out: torch.Tensor) -> torch.Tensor:  # Eq. 8
            return out + generic_out[index]

        with LevelHooks(self.special, self.levels, add_generic) as special_hooks:
            run_features(self.special, x)
        return [fuse(g, s) for g, s in zip(self._maps(generic_out, hw), self._maps(special_hooks.captured(), hw))]


def _modules_through_level(model: nn.Module, levels: list[LevelSpec], count: int) -> list[str]:
    """Top-down names of the modules that run up to and including level ``count - 1``.

    Registration order of timm models follows execution order (stem, stages, head), so every
    module listed before the end of that level's subtree belongs to the frozen prefix.
    """
    if count <= 0:
        return []
    last = levels[min(count, len(levels)) - 1].module_name
    prefix: list[str] = []
    reached = False
    for name, _ in model.named_modules():
        within = name == last or name.startswith(last + ".")
        if reached and not within:
            break
        reached = reached or within
        if name and not last.startswith(name + "."):  # ancestors of the level also hold later stages
            prefix.append(name)
    return [n for n in prefix if not any(n.startswith(p + ".") for p in prefix)]


def check_encoder_state(state: dict, model: nn.Module, source: str) -> None:
    """Raise :class:`UserError` naming ``source`` unless ``state`` fits ``model`` exactly."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            found = tuple(state[k].shape)
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: expected {expected[k]}, found {found})")
        raise UserError(f"{source}: expected encoder weights of backbone '{arch}', found {'; '.join(parts)}")


def build_dual_encoder(
    make_backbone: Callable[[], nn.Module],
    pretrained_state: dict | None,
    residual: bool = True,
    special_init: Literal["pretrained", "scratch"] = "pretrained",
    freeze_special_stages: int = 0,
    source: str = "pretrained encoder",
) -> DualEncoder:
    """A :class:`DualEncoder` whose ``E_g`` (and, by default, ``E_s``) start from ``pretrained_state``.

    ``special_init='scratch'`` leaves ``E_s`` freshly initialised; ``freeze_special_stages=k``
    freezes ``E_s`` from its stem through its ``k``-th feature level. ``source`` names the
    weights in error messages (e.g. the file they came from).
    """
    special = make_backbone()
    if pretrained_state is not None:
        check_encoder_state(pretrained_state, special, source)
    if special_init == "pretrained" and pretrained_state is not None:
        special.load_state_dict(pretrained_state)
    generic = None
    if residual:
        generic = make_backbone()
        if pretrained_state is not None:
            generic.load_state_dict(pretrained_state)
    frozen = _modules_through_level(special, feature_levels(special), freeze_special_stages)
    if frozen:
        modules = dict(special.named_modules())
        for name in frozen:
            modules[name].requires_grad_(False)
        for p in special.parameters(recurse=False):  # root-level embeddings (cls token, positions)
            p.requires_grad_(False)
    return DualEncoder(generic, special, residual=residual, frozen_special_modules=tuple(frozen))
