"""A run's settings and its evaluation metrics as one TensorBoard hparams record
(``tensorboard/hparams``), so runs can be compared side by side in the HPARAMS tab."""

from __future__ import annotations

from pathlib import Path

from sassl_core.config import RunConfig
from sassl_core.train.rundir import TENSORBOARD, flatten


def log_hparams(run_dir: Path, cfg: RunConfig, metrics: dict) -> None:
    """Every scalar setting (``sassl.lam``, ``pretrain.optim.lr``, ...; others as text) against
    every numeric metric of ``metrics["metrics"]`` (as ``metrics/<name>``)."""
    from torch.utils.tensorboard import SummaryWriter

    settings = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in flatten(cfg.model_dump(mode="json", exclude={"output"})).items()
    }
    scores = {f"metrics/{k}": float(v) for k, v in metrics["metrics"].items() if isinstance(v, (int, float))}
    with SummaryWriter(str(Path(run_dir) / TENSORBOARD / "hparams")) as writer:
        writer.add_hparams(settings, scores, run_name=".")
