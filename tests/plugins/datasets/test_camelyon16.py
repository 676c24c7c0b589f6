"""CAMELYON16: ASAP XML parsing, rasterised masks aligned with the slides, splits, errors."""

from __future__ import annotations

import pytest

from sassl_core.errors import UserError
from sassl_core.interfaces import TargetKind
from sassl_core.wsi.cache import read_mask, table_row
from sassl_plugins.datasets.camelyon16 import parse_asap
from tests.fixtures.layouts import CAMELYON_LESION, asap_xml, make_camelyon16


@pytest.fixture(scope="module")
def camelyon_root(tmp_path_factory):
    return make_camelyon16(tmp_path_factory.mktemp("camelyon16"))


def test_parse_asap_groups(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(asap_xml(CAMELYON_LESION))
    lesions = parse_asap(path)
    assert len(lesions.tumour) == 1 and len(lesions.exclusion) == 1
    raster = lesions.rasterise(0, 0, 384, 384, 1.0)
    assert raster[120, 120] == 1 and raster[190, 190] == 0 and raster[50, 50] == 0
    assert int(raster.sum()) == pytest.approx(160 * 160 - 48 * 48, rel=0.05)


def test_tumour_slides_masks_and_splits(datasets, context, camelyon_root):
    data = datasets.create("camelyon16", {"mask_downsample": 2}, context=context(camelyon_root))
    table = data.patches
    assert data.target_kinds == (TargetKind.MASK, TargetKind.LABEL) and data.seg_classes == 2
    assert set(table["slide_id"]) == {"tumor_001", "tumor_002", "tumor_003", "test_001"}  # paper: tumour only
    assert set(table["split"][table["slide_id"] == "test_001"]) == {"test"}
    assert set(table["label"]) == {0, 1}
    for i in range(len(table)):  # the mask the data layer reads agrees with the row's labels
        row = table_row(table, i)
        share = read_mask(row, 64).mean()
        assert share == pytest.approx(row["target"], abs=0.08)
        assert row["label"] == int(row["target"] >= 0.01)
    everything = datasets.create("camelyon16", {"tumour_slides_only": False}, context=context(camelyon_root))
    normals = everything.patches["slide_id"] == "normal_001"
    assert normals.any() and (everything.patches["label"][normals] == 0).all()
    assert "test_002" in set(everything.patches["slide_id"])


@pytest.mark.parametrize(
    "content, expected",
    [
        ("<ASAP_Annotations><Annotations>", "malformed annotation XML"),
        (asap_xml([("_0", [(1, 1), (5, 1)])]), "at least 3 coordinates"),
        (asap_xml([("Stroma", [(1, 1), (5, 1), (5, 5)])]), "PartOfGroup: expected one of"),
        (asap_xml([("_0", [(1, 1), (5, 1), (5, 5)])]).replace('X="5"', 'X="five"', 1), "numeric X, Y"),
    ],
)
def test_malformed_xml_names_the_file(datasets, context, tmp_path, content, expected):
    root = make_camelyon16(tmp_path / "c16")
    (root / "training" / "lesion_annotations" / "tumor_002.xml").write_text(content)
    with pytest.raises(UserError, match="tumor_002.xml") as err:
        datasets.create("camelyon16", {}, context=context(root))
    assert expected in str(err.value)
