"""Fine-tuning augmentation: image and mask move together, the stain jitter touches the image alone,
and each draw is fixed by the run's seed and the sample's place in the stream."""

import numpy as np
import torch
from torch.utils.data import Dataset

from sassl_core.train.augment import AugmentedDataset, HEDJitter, build_augmentation, numbered


class Patches(Dataset):
    """Asymmetric patches whose mask is where the red channel is bright."""

    def __init__(self, n: int = 3, size: int = 16) -> None:
        rng = np.random.default_rng(0)
        self.images = []
        for _ in range(n):
            image = np.full((size, size, 3), 40, np.uint8)
            image[: size // 4, : size // 2, 0] = 220  # an L-shaped bright-red block: no symmetry
            image[: size // 2 + 2, : size // 8, 0] = 220
            image[..., 1:] += rng.integers(0, 20, (size, size, 2), dtype=np.uint8)
            self.images.append(image)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        return {
            "image": torch.from_numpy(image.copy()),
            "mask": torch.from_numpy((image[..., 0] > 128).astype(np.uint8)),
            "index": i,
        }


def test_image_and_mask_get_the_same_flip_and_rotation():
    data = AugmentedDataset(Patches(), build_augmentation(stain=False), seed=0)
    seen = set()
    for key in range(40):
        sample = data[key]
        assert np.array_equal(sample["mask"].numpy(), (sample["image"][..., 0] > 128).numpy().astype(np.uint8))
        seen.add(sample["mask"].numpy().tobytes())
    assert len(seen) == 8  # every flip/rotation of the square turns up


def test_stain_jitter_changes_the_image_only():
    base = Patches()
    sample = base[0]
    jitter = HEDJitter(p=1.0)
    out = jitter(image=sample["image"].numpy(), mask=sample["mask"].numpy())
    assert out["image"].dtype == np.uint8 and not np.array_equal(out["image"], sample["image"].numpy())
    assert np.array_equal(out["mask"], sample["mask"].numpy())
    data = AugmentedDataset(base, build_augmentation(stain=True), seed=0)
    stained = [k for k in range(20) if not np.isin(data[k]["image"].numpy(), [40 + v for v in range(20)] + [220]).all()]
    assert stained  # some draws were stain-jittered ...
    for key in range(20):  # ... and every mask is still the bright block, moved with the image
        mask = data[key]["mask"].numpy()
        assert mask.sum() == base[0]["mask"].numpy().sum()


def test_draws_fixed_by_seed_and_position():
    a = AugmentedDataset(Patches(), build_augmentation(), seed=1)
    b = AugmentedDataset(Patches(), build_augmentation(), seed=1)
    keys = [k for batch in numbered([[0, 1], [2, 0], [1, 2]], 3) for k in batch]
    assert keys == [0, 1, 5, 3, 7, 8]
    first = a.__getitems__(keys)
    again = [b[k] for k in reversed(keys)][::-1]  # another order, another instance: the same draws
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"]) for x, y in zip(first, again))
    assert [s["index"] for s in first] == [0, 1, 2, 0, 1, 2]


def test_workers_draw_what_the_main_process_draws():
    from sassl_core.wsi.dataset import make_loader

    data = AugmentedDataset(Patches(), build_augmentation(), seed=2)
    order = [[0, 1], [2, 0], [1, 2]]
    batches = [
        [
            b["image"]
            for b in make_loader(data, batch_sampler=list(numbered(order, 3)), num_workers=workers, pin_memory=False)
        ]
        for workers in (0, 2)
    ]
    assert all(torch.equal(a, b) for a, b in zip(*batches))
