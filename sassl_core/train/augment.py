"""Fine-tuning augmentation of each training patch, on the CPU in the data-loading workers.

An albumentations pipeline draws, per sample, a horizontal flip and a 90° rotation applied alike
to the image and its mask (the dihedral group of the square, which histology has no preferred
orientation in), and an HED stain jitter of the image alone (Tellez et al. 2018, the colour
augmentation of the paper's baselines, :func:`sassl_core.color.hed_jitter`).

Each draw is seeded by the run's seed and the sample's position in the batch stream, so a
resumed run sees the same augmented patches as an uninterrupted one, whatever the workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import albumentations as A  # type: ignore[import-untyped]
import numpy as np
import torch
from torch.utils.data import Dataset

from sassl_core.color import HED_SCALE, HED_SHIFT, hed_jitter


class HEDJitter(A.ImageOnlyTransform):
    """HED stain jitter of a uint8 RGB image: H, E and DAB concentrations scaled by a factor
    drawn from ``scale`` and shifted by an offset drawn from ``shift``, each stain its own."""

    def __init__(
        self, scale: tuple[float, float] = HED_SCALE, shift: tuple[float, float] = HED_SHIFT, p: float = 0.5
    ) -> None:
        super().__init__(p=p)
        self.scale, self.shift = scale, shift

    def get_params(self) -> dict[str, Any]:
        return {
            "scales": self.random_generator.uniform(*self.scale, size=3),
            "shifts": self.random_generator.uniform(*self.shift, size=3),
        }

    def apply(self, img: np.ndarray, scales: np.ndarray, shifts: np.ndarray, **params: Any) -> np.ndarray:
        rgb = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
        out = hed_jitter(
            rgb, torch.tensor(scales[None], dtype=torch.float32), torch.tensor(shifts[None], dtype=torch.float32)
        )
        return (out[0].permute(1, 2, 0) * 255.0).round_().to(torch.uint8).numpy()

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "shift")


def build_augmentation(stain: bool = True) -> A.Compose:
    """Flip and 90° rotation of image and mask together, then (``stain``) HED jitter of the image."""
    return A.Compose([A.HorizontalFlip(p=0.5), A.RandomRotate90(p=1.0), *([HEDJitter()] if stain else [])])


def numbered(batches: Iterable[list[int]], n: int) -> Iterator[list[int]]:
    """Index batches of a dataset of ``n`` rows as draw keys ``draw * n + row`` (``draw``: the
    batch's position in the stream), for :class:`AugmentedDataset`."""
    for draw, batch in enumerate(batches):
        yield [draw * n + int(row) for row in batch]


class AugmentedDataset(Dataset):
    """``base`` with every sample augmented by ``transform``: key ``draw * len(base) + row``
    (:func:`numbered`) is row ``row``, augmented with a draw seeded by ``(seed, key)``."""

    def __init__(self, base: Dataset, transform: A.Compose, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self.n = len(base)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> dict:
        return self._augment(self.base[int(key) % self.n], int(key))

    def __getitems__(self, keys: list[int]) -> list[dict]:
        rows = [int(k) % self.n for k in keys]
        fetch = getattr(self.base, "__getitems__", None)
        samples = fetch(rows) if fetch is not None else [self.base[r] for r in rows]
        return [self._augment(sample, int(k)) for sample, k in zip(samples, keys)]

    def _augment(self, sample: dict, key: int) -> dict:
        self.transform.set_random_seed(int(np.random.SeedSequence([self.seed, key]).generate_state(1)[0]))
        data = {"image": sample["image"].numpy()}
        if "mask" in sample:
            data["mask"] = sample["mask"].numpy()
        out = self.transform(**data)
        sample = dict(sample, image=torch.from_numpy(np.ascontiguousarray(out["image"])))
        if "mask" in out:
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(out["mask"]))
        return sample
