"""Checkpoints: atomic writes (:mod:`sassl_core.files`), safe reads, and the encoder exported
alone as safetensors. Reads use ``torch.load(weights_only=True)``: a checkpoint
cannot run code on the reader's machine.

Every checkpoint carries a SHA-256 digest of its content (:func:`state_digest`), checked when it
is loaded. A new checkpoint is read back and verified before it replaces ``<name>.pt``; the one it
replaces is kept as ``<name>.previous.pt``, so a checkpoint corrupted on disk later still leaves
one good checkpoint to resume from (:func:`load_latest`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sassl_core.errors import UserError
from sassl_core.files import atomic_write
from sassl_core.method.transfer import check_encoder_state

DIGEST_KEY = "sha256"  # the checkpoint's digest of the rest of its content


class CorruptCheckpoint(UserError):
    """A checkpoint that cannot be read back, or whose content no longer matches its digest."""


def _feed(digest: hashlib._Hash, value: object) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            digest.update(repr(key).encode())
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"V{value!r}".encode())


def state_digest(state: dict) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every other value's repr."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def previous_path(path: Path) -> Path:
    """Where the checkpoint that ``path`` replaced is kept."""
    return Path(path).with_suffix(".previous.pt")


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` with its digest, verify the written file, then keep the checkpoint it
    replaces as :func:`previous_path` (each step an atomic rename)."""
    path = Path(path)
    stamped = {**state, DIGEST_KEY: state_digest(state)}

    def write(tmp: Path) -> None:
        torch.save(stamped, tmp)
        load_checkpoint(tmp)  # read back and verified before it replaces anything
        if path.is_file() and not path.is_symlink():
            os.replace(path, previous_path(path))

    atomic_write(path, write)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely; a pickle that would run code is refused, and one whose content
    does not match its digest is :class:`CorruptCheckpoint` (files without a digest load as they are)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).splitlines()[0][:160]
        raise UserError(f"{path}: refused to load: not a plain-weights checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a checkpoint dictionary, found {type(state).__name__}")
    if DIGEST_KEY in state:
        stored = state.pop(DIGEST_KEY)
        if stored != state_digest(state):
            raise CorruptCheckpoint(f"{path}: corrupt checkpoint (content does not match its sha256 digest)")
    return state


def load_latest(path: Path) -> tuple[dict, Path]:
    """The checkpoint at ``path``, or, when that one is corrupt, the one it replaced (with a
    warning); returns the state and the file it came from."""
    path = Path(path)
    if not path.is_file() and previous_path(path).is_file():  # killed between the two renames
        return load_checkpoint(previous_path(path)), previous_path(path)
    try:
        return load_checkpoint(path), path
    except CorruptCheckpoint as err:
        previous = previous_path(path)
        if not previous.is_file():
            raise CorruptCheckpoint(f"{err}; no previous checkpoint to resume from") from None
        try:
            state = load_checkpoint(previous)
        except CorruptCheckpoint as err_previous:
            raise CorruptCheckpoint(f"{err}; the previous one too: {err_previous}") from None
        print(
            f"warning: {err}; resuming from the previous checkpoint {previous} (step {state.get('step')})",
            file=sys.stderr,
        )
        return state, previous


def export_encoder(encoder: torch.nn.Module, path: Path, metadata: str | dict[str, str]) -> None:
    """Write the encoder's weights alone (loadable into ``timm.create_model(name, num_classes=0)``).

    ``metadata``: the safetensors header's strings, e.g. timm model name, input size, mean/std and
    stain normaliser (:func:`sassl_core.train.inference_meta.encoder_metadata`), or just the
    backbone's sassl name.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    header = {"backbone": metadata} if isinstance(metadata, str) else dict(metadata)
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=header))


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
