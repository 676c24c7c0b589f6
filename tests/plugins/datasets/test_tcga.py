"""TCGA: project labels from folders or a CSV, the GDC manifest check, the 70/30 split."""

from __future__ import annotations

from pathlib import Path

import pytest

from sassl_core.errors import UserError
from tests.fixtures.he_images import shared_data_dir
from tests.fixtures.layouts import TCGA_SLIDES, make_tcga

SHARED_SVS = shared_data_dir() / "cmu_small_region.svs"


def _by_slide(table):
    return {table["slide_id"][i]: (int(table["label"][i]), table["split"][i]) for i in range(len(table))}


@pytest.mark.parametrize("folders", [True, False])
def test_projects_label_every_patch(datasets, context, tmp_path, folders):
    root = make_tcga(tmp_path / "tcga", project_folders=folders)
    options = {} if folders else {"labels_csv": "labels.csv"}
    data = datasets.create("tcga", options, context=context(root))
    assert data.class_names == ["TCGA-COAD", "TCGA-READ", "TCGA-STAD"]
    by_slide = _by_slide(data.patches)
    expected = {Path(name).stem: data.class_names.index(project) for project, _, name in TCGA_SLIDES}
    assert {s: label for s, (label, _) in by_slide.items()} == expected
    tested = [s for s, (_, split) in by_slide.items() if split == "test"]
    assert len(tested) == 3 and {expected[s] for s in tested} == {0, 1, 2}  # 30% per project, rounded up
    assert set(data.patches["source"]) == set(expected)


def test_manifest_size_mismatch_and_missing_project(datasets, context, tmp_path):
    root = make_tcga(tmp_path / "tcga")
    manifest = root / "gdc_manifest.txt"
    lines = manifest.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[3] = str(int(fields[3]) + 1)
    manifest.write_text("\n".join([lines[0], "\t".join(fields), *lines[2:]]) + "\n")
    with pytest.raises(UserError, match="gdc_manifest.txt: row 2: .*bytes, the manifest lists"):
        datasets.create("tcga", {}, context=context(root))
    flat = make_tcga(tmp_path / "flat", project_folders=False)
    with pytest.raises(UserError, match="found no project folder"):
        datasets.create("tcga", {}, context=context(flat))


@pytest.mark.skipif(not SHARED_SVS.is_file(), reason="real Aperio slide not available")
def test_real_aperio_slide(datasets, context, tmp_path):
    folder = tmp_path / "TCGA-COAD" / "uuid-1"
    folder.mkdir(parents=True)
    (folder / "real.svs").symlink_to(SHARED_SVS)
    data = datasets.create("tcga", {"test_fraction": 0.0}, context=context(tmp_path, patch_size=224, max_per_slide=10))
    assert len(data.patches) == 10 and set(data.patches["label"]) == {0}
