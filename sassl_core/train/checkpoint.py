"""Checkpoints: atomic writes (:mod:`sassl_core.files`), safe reads, and the encoder exported
alone as safetensors. Reads use ``torch.load(weights_only=True)``: a checkpoint
cannot run code on the reader's machine.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sassl_core.errors import UserError
from sassl_core.files import atomic_write
from sassl_core.method.transfer import check_encoder_state


def save_checkpoint(state: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely; a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).splitlines()[0][:160]
        raise UserError(f"{path}: refused to load: not a plain-weights checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a checkpoint dictionary, found {type(state).__name__}")
    return state


def export_encoder(encoder: torch.nn.Module, path: Path, backbone: str) -> None:
    """Write the encoder's weights alone (loadable into ``timm.create_model(name, num_classes=0)``)."""
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"backbone": backbone}))


def load_encoder_state(path: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Encoder weights from ``encoder.safetensors`` or a torch checkpoint (key ``encoder``).

    Torch files are read with ``weights_only=True``. A ``module.`` prefix (DDP) is stripped.
    With ``model``, the keys and shapes are checked against it (:func:`check_encoder_state`).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: encoder weights file not found")
    state: object  # checked below: a torch file may hold anything
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except SafetensorError as err:
            raise UserError(f"{path}: not a readable safetensors file ({err})") from None
    else:
        state = load_checkpoint(path)
        state = state.get("encoder", state)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors (or a checkpoint with key 'encoder')")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if model is not None:
        check_encoder_state(state, model, str(path))
    return state
