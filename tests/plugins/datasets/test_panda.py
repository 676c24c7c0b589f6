"""PANDA: labels, sources, splits, mask-picked patches and every validation error."""

from __future__ import annotations

import numpy as np
import pytest

from sassl_core.errors import UserError
from sassl_core.interfaces import TargetKind
from tests.fixtures.layouts import PANDA_SLIDES, make_panda, write_label_tiff


@pytest.fixture(scope="module")
def panda_root(tmp_path_factory):
    return make_panda(tmp_path_factory.mktemp("panda"))


def test_every_patch_carries_its_slides_isup_grade(datasets, context, panda_root):
    data = datasets.create("panda", {}, context=context(panda_root))
    table = data.patches
    assert data.target_kinds == (TargetKind.LABEL,) and data.num_classes == 6
    grades = {image_id: isup for image_id, _, isup, _ in PANDA_SLIDES}
    assert {table["slide_id"][i]: table["label"][i] for i in range(len(table))} == grades
    assert set(table["source"]) == {"karolinska", "radboud"}  # source = data provider
    assert set(table["split"]) == {"train", "test"}
    for image_id in grades:  # a slide lies in one split only
        assert len(set(table["split"][table["slide_id"] == image_id])) == 1


def test_provider_source_and_deterministic_split(datasets, context, panda_root):
    a = datasets.create("panda", {}, context=context(panda_root)).patches
    b = datasets.create("panda", {}, context=context(panda_root)).patches
    assert set(a["source"]) == {"karolinska", "radboud"}
    assert np.array_equal(a["split"], b["split"]) and np.array_equal(a["x"], b["x"])
    providers = {i: p for i, p, _, _ in PANDA_SLIDES}
    tested = {providers[s] for s in a["slide_id"][a["split"] == "test"]}
    assert tested == {"karolinska", "radboud"}  # stratified by provider


def test_graded_slides_keep_cancer_patches_only(datasets, context, panda_root):
    with_masks = datasets.create("panda", {}, context=context(panda_root, max_per_slide=None)).patches
    without = datasets.create("panda", {"use_masks": False}, context=context(panda_root, max_per_slide=None)).patches
    graded = PANDA_SLIDES[1][0]  # radboud, ISUP 4, with a mask
    assert 0 < (with_masks["slide_id"] == graded).sum() < (without["slide_id"] == graded).sum()


def _edit_csv(root, old, new):
    path = root / "train.csv"
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("isup_grade", "isup", "expected columns isup_grade"),
        (",radboud,4,", ",radboud,7,", "isup_grade: expected an integer 0-5, found '7'"),
        (",karolinska,1,", ",sheffield,1,", "data_provider: expected one of karolinska, radboud, found 'sheffield'"),
    ],
)
def test_bad_train_csv_names_file_and_column(datasets, context, tmp_path, old, new, expected):
    root = make_panda(tmp_path / "p")
    _edit_csv(root, old, new)
    with pytest.raises(UserError, match="train.csv") as err:
        datasets.create("panda", {}, context=context(root))
    assert expected in str(err.value)


def test_missing_slide_and_mask_size_mismatch(datasets, context, tmp_path):
    root = make_panda(tmp_path / "p")
    first = PANDA_SLIDES[0][0]
    write_label_tiff(root / "train_label_masks" / f"{first}_mask.tiff", np.zeros((200, 300), np.uint8))
    with pytest.raises(UserError, match=f"{first}_mask.tiff: mask size 300x200 differs"):
        datasets.create("panda", {}, context=context(root))
    (root / "train_images" / f"{first}.tiff").unlink()
    with pytest.raises(UserError, match=f"row 2: image_id {first}: slide .* not found"):
        datasets.create("panda", {}, context=context(root))


@pytest.mark.parametrize("image_id", ["../x", "a/b", "/etc/passwd", "..", "a\\b", ""])
def test_an_image_id_cannot_leave_the_root(datasets, context, tmp_path, image_id):
    root = make_panda(tmp_path / "p")
    slide = (root / "train_images" / f"{PANDA_SLIDES[0][0]}.tiff").read_bytes()
    (root / "x.tiff").write_bytes(slide)  # what '../x' would name, joined to train_images/
    (root / "train_images" / "a").mkdir()
    (root / "train_images" / "a" / "b.tiff").write_bytes(slide)  # and 'a/b'
    _edit_csv(root, PANDA_SLIDES[2][0], image_id)
    with pytest.raises(UserError) as err:
        datasets.create("panda", {}, context=context(root))
    expected = f"train.csv: row 4: image_id: expected a slide id (a plain file name), found {image_id!r}"
    assert str(err.value).endswith(expected) and "\n" not in str(err.value)


def test_duplicate_rows(datasets, context, tmp_path):
    root = make_panda(tmp_path / "p")
    image_id, provider, isup, gleason = PANDA_SLIDES[1]
    with open(root / "train.csv", "a") as fh:
        fh.write(f"{image_id},{provider},{isup},{gleason}\n")  # listed twice, alike: read once
    once = datasets.create("panda", {}, context=context(root)).patches
    assert (once["slide_id"] == image_id).sum() > 0 and len(set(once["slide_id"])) == len(PANDA_SLIDES)
    with open(root / "train.csv", "a") as fh:
        fh.write(f"{image_id},{provider},5,5+5\n")
    with pytest.raises(UserError) as err:
        datasets.create("panda", {}, context=context(root))
    assert str(err.value).endswith(
        f"train.csv: row 8: image_id {image_id}: expected one grade per slide, found radboud ISUP 5 here "
        "and radboud ISUP 4 in row 3"
    )


@pytest.mark.parametrize("broken", ["slide", "mask"])
def test_an_unreadable_slide_or_mask_is_skipped_unless_strict(datasets, context, tmp_path, broken):
    root = make_panda(tmp_path / "p")
    image_id = PANDA_SLIDES[1][0]  # has a mask
    path = root / ("train_images" if broken == "slide" else "train_label_masks")
    path = path / (f"{image_id}.tiff" if broken == "slide" else f"{image_id}_mask.tiff")
    path.write_bytes(path.read_bytes()[:300])  # cut off mid-file
    data = datasets.create("panda", {}, context=context(root))
    assert image_id not in set(data.patches["slide_id"])
    assert len(set(data.patches["slide_id"])) == len(PANDA_SLIDES) - 1
    [skipped] = data.skipped
    assert skipped.startswith(str(path))
    with pytest.raises(UserError, match=str(path)):
        datasets.create("panda", {}, context=context(root, strict=True))
