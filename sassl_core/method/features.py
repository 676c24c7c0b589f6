"""Feature levels of any timm backbone, captured with forward hooks (paper §3.3).

A backbone (a timm model built with ``num_classes=0``) names its stage modules in
``model.feature_info``. :func:`feature_levels` turns that into :class:`LevelSpec` entries and
:class:`LevelHooks` captures (and optionally rewrites) those modules' outputs during an ordinary
``forward``. Outputs come in the model's native layout — ``(B, C, H, W)`` for CNNs,
``(B, H, W, C)`` for Swin, tokens ``(B, prefix + h*w, C)`` for ViT — and :func:`to_map` turns
each into a ``(B, C, h, w)`` map.

Plain (non-hierarchical) transformers list every block at one reduction; for them
:func:`feature_levels` keeps ``max_uniform_levels`` evenly spaced blocks ending with the last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# hook(level_index, native_output) -> replacement output, or None to keep it
OutputHook = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class LevelSpec:
    """One feature level: the module whose output it is, its channels and its stride."""

    module_name: str
    channels: int
    reduction: int


def _info_dicts(model: nn.Module) -> list[dict]:
    info = getattr(model, "feature_info", None)
    if info is None:
        raise TypeError(f"{type(model).__name__} has no feature_info; build it with timm.create_model")
    return list(info.get_dicts()) if hasattr(info, "get_dicts") else [dict(d) for d in info]


def feature_levels(model: nn.Module, max_uniform_levels: int = 4) -> list[LevelSpec]:
    """The feature levels of ``model``, shallow to deep.

    >>> import timm
    >>> [s.reduction for s in feature_levels(timm.create_model("resnet18", num_classes=0))]
    [2, 4, 8, 16, 32]
    """
    specs = [LevelSpec(d["module"], int(d["num_chs"]), int(d["reduction"])) for d in _info_dicts(model)]
    uniform = len({s.reduction for s in specs}) == 1
    if uniform and len(specs) > max_uniform_levels:
        n = len(specs)
        picks = sorted({-(-(k + 1) * n // max_uniform_levels) - 1 for k in range(max_uniform_levels)})
        specs = [specs[i] for i in picks]
    return specs


def model_layout(model: nn.Module) -> str:
    """``'NHWC'`` for models whose 4-d stage outputs are channels-last (timm Swin), else ``'NCHW'``."""
    fmt = getattr(model, "output_fmt", "NCHW")
    return str(getattr(fmt, "value", fmt)).upper()


def to_map(
    output: torch.Tensor,
    spec: LevelSpec,
    image_hw: tuple[int, int],
    layout: str = "NCHW",
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """A stage output in native layout -> ``(B, C, h, w)``.

    Tokens ``(B, N, C)`` lose their ``num_prefix_tokens`` (class/register tokens) and are laid
    out on the patch grid ``image_hw // reduction``; ``NHWC`` maps are permuted to ``NCHW``.
    """
    if output.ndim == 3:
        tokens = output[:, num_prefix_tokens:, :]
        h = max(image_hw[0] // spec.reduction, 1)
        w = tokens.shape[1] // h
        if h * w != tokens.shape[1]:
            raise ValueError(f"level {spec.module_name}: {tokens.shape[1]} tokens do not fit a grid of height {h}")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
    if output.ndim == 4:
        return output.permute(0, 3, 1, 2) if layout == "NHWC" else output
    raise ValueError(f"level {spec.module_name}: unsupported output of shape {tuple(output.shape)}")


class LevelHooks:
    """Forward hooks on a model's level modules: capture each output, optionally rewrite it.

    ``on_output(i, out)`` may return a replacement for level ``i``'s output (the replacement is
    what the next stage receives and what is captured). Use as a context manager; hooks are
    removed on exit.
    """

    def __init__(self, model: nn.Module, levels: list[LevelSpec], on_output: OutputHook | None = None):
        self.model = model
        self.levels = levels
        self.on_output = on_output
        self.outputs: list[torch.Tensor | None] = [None] * len(levels)
        self._handles: list = []

    def _hook(self, index: int):
        def hook(module: nn.Module, args, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"level {self.levels[index].module_name} returned {type(output).__name__}")
            if self.on_output is not None:
                replaced = self.on_output(index, output)
                output = output if replaced is None else replaced
            self.outputs[index] = output
            return output

        return hook

    def captured(self) -> list[torch.Tensor]:
        """Every level's output, shallow to deep; a level that did not run is an error naming it."""
        missing = [spec.module_name for spec, out in zip(self.levels, self.outputs) if out is None]
        if missing:
            raise RuntimeError(f"levels {missing} did not run in the forward pass")
        return [out for out in self.outputs if out is not None]

    def __enter__(self) -> LevelHooks:
        modules = dict(self.model.named_modules())
        for i, spec in enumerate(self.levels):
            self._handles.append(modules[spec.module_name].register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def run_features(model: nn.Module, x: torch.Tensor) -> None:
    """Run ``model`` far enough to execute every stage (``forward_features`` when timm has it)."""
    forward = getattr(model, "forward_features", None) or model
    forward(x)


def extract_levels(model: nn.Module, x: torch.Tensor, levels: list[LevelSpec] | None = None) -> list[torch.Tensor]:
    """The level maps of ``model`` on ``x``, each ``(B, C, h, w)``, shallow to deep."""
    levels = levels if levels is not None else feature_levels(model)
    with LevelHooks(model, levels) as hooks:
        run_features(model, x)
    hw = (x.shape[-2], x.shape[-1])
    layout, prefix = model_layout(model), int(getattr(model, "num_prefix_tokens", 0) or 0)
    return [to_map(out, spec, hw, layout, prefix) for out, spec in zip(hooks.captured(), levels)]
