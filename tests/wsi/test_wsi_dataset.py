import numpy as np
import pytest
import torch

from sassl_core.errors import UserError
from sassl_core.wsi.cache import PatchCache
from sassl_core.wsi.dataset import PatchDataset, make_loader
from sassl_core.wsi.patches import PatchTable
from sassl_core.wsi.reader import open_slide
from sassl_core.wsi.tiling import tile_slide


@pytest.fixture(scope="module")
def table(blob_slide, blob_mask_slide) -> PatchTable:
    with open_slide(blob_slide.path) as reader:
        rows = tile_slide(reader, 32, target_mpp=0.5, max_patches=16)
    for i, r in enumerate(rows):
        r.update(source="centre_b" if i % 2 else "centre_a", label=i % 3, target=i / 10, mask=str(blob_mask_slide))
    return PatchTable.from_rows(rows, 32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, table) -> PatchCache:
    return PatchCache.build(table, tmp_path_factory.mktemp("cache") / "c", with_masks=True)


def test_sample_fields(table):
    sample = PatchDataset(table, with_masks=True)[5]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (32, 32, 3)
    assert sample["mask"].dtype == torch.uint8 and sample["mask"].shape == (32, 32)
    assert (sample["index"], sample["source"], sample["label"]) == (5, 1, 2)
    assert sample["target"] == pytest.approx(0.5)
    assert "mask" not in PatchDataset(table)[0]


def test_from_slides_equals_from_cache(table, cache):
    slides, cached = PatchDataset(table, with_masks=True), PatchDataset(table, cache, with_masks=True)
    for i in range(len(table)):
        a, b = slides[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert {k: a[k] for k in ("index", "source", "label")} == {k: b[k] for k in ("index", "source", "label")}


def test_batched_fetch_keeps_request_order(table, cache):
    dataset = PatchDataset(table, cache, with_masks=True)
    indices = [7, 2, 7, 0, 15]
    batch = dataset.__getitems__(indices)
    assert [s["index"] for s in batch] == indices
    for s in batch:
        assert torch.equal(s["image"], dataset[s["index"]]["image"]) and torch.equal(
            s["mask"], dataset[s["index"]]["mask"]
        )


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_uint8(table, cache, workers):
    loader = make_loader(PatchDataset(table, cache), batch_size=4, num_workers=workers, shuffle=True, seed=1)
    assert loader.pin_memory == torch.cuda.is_available()
    assert (loader.persistent_workers, loader.num_workers) == (workers > 0, workers)
    batches = list(loader)
    assert len(batches) == 4
    assert batches[0]["image"].shape == (4, 32, 32, 3) and batches[0]["image"].dtype == torch.uint8
    indices = torch.cat([b["index"] for b in batches])
    assert sorted(indices.tolist()) == list(range(16)) and indices.tolist() != list(range(16))
    slide_batches = list(make_loader(PatchDataset(table), batch_size=4, num_workers=workers))
    assert torch.equal(torch.cat([b["image"] for b in slide_batches]), torch.from_numpy(np.array(cache.images)))


def test_loader_with_batch_sampler(table, cache):
    loader = make_loader(PatchDataset(table, cache), batch_sampler=[[0, 1], [2, 3, 4]])
    assert [b["index"].tolist() for b in loader] == [[0, 1], [2, 3, 4]]
    with pytest.raises(ValueError, match="exactly one"):
        make_loader(PatchDataset(table), batch_size=2, batch_sampler=[[0]])


def test_mismatches_are_user_errors(table, tmp_path):
    plain = PatchCache.build(table, tmp_path / "plain")
    with pytest.raises(UserError, match="built without masks"):
        PatchDataset(table, plain, with_masks=True)
    with pytest.raises(UserError, match="cache holds 16 patches of 32 px, the patch table 4"):
        PatchDataset(table.select(np.arange(4)), plain)
    unmasked = PatchTable.from_rows([{k: table[k][0] for k in ("slide", "x", "y", "level", "read_size", "source")}], 32)
    with pytest.raises(UserError, match="mask: some patches have no label mask"):
        PatchDataset(unmasked, with_masks=True)
