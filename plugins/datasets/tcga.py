"""``tcga``: TCGA diagnostic slides — tumour-type classification (TCGA-COAD / READ / STAD).

Layout (``root``), as the GDC data-transfer client downloads a manifest::

    gdc_manifest*.txt           id  filename  md5  size  state   (tab-separated; optional)
    [<project>/]<uuid>/<file>.svs

The label is the project: from the folder above ``<uuid>`` (``TCGA-COAD/<uuid>/<file>.svs``),
or from a CSV given as ``labels_csv`` (columns ``filename``, ``project``). With a manifest,
every listed file must be present with the listed size (a cut-off download is an error);
``verify_md5`` also checks the checksums. Split: the paper's 70/30 train/test by slide
(seeded, stratified by project). ``source`` is the slide.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

import sassl_core
from sassl_core.errors import UserError
from sassl_core.interfaces import DatasetContext, PreparedData, TargetKind
from sassl_plugins.datasets.common import prepare, read_table, require_root, split_groups, tile_slides

MANIFEST_COLUMNS = ("id", "filename", "md5", "size")


class TcgaOptions(BaseModel):
    """Options of the TCGA dataset."""

    model_config = ConfigDict(extra="forbid")

    labels_csv: str | None = Field(None, description="CSV of filename, project (relative to the root or absolute)")
    projects: list[str] | None = Field(None, description="projects to keep, in class order (default: all found)")
    test_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="share of slides in the test split (paper: 0.3)")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    verify_md5: bool = Field(False, description="check every file's md5 against the manifest (reads whole files)")
    fallback_mpp: float | None = Field(None, gt=0, description="µm/px for slides without a resolution")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_manifest(root: Path, slides: dict[str, Path], verify_md5: bool) -> None:
    """Every manifest entry must be downloaded whole (size, optionally md5)."""
    for manifest in sorted(root.glob("gdc_manifest*.txt")):
        for entry in read_table(manifest, MANIFEST_COLUMNS, delimiter="\t"):
            where = f"{manifest}: row {entry['_line']}"
            path = slides.get(entry["filename"])
            if path is None:
                raise UserError(f"{where}: {entry['id']}/{entry['filename']} not found under {root}")
            if entry["size"].isdigit() and path.stat().st_size != int(entry["size"]):
                raise UserError(f"{where}: {path} has {path.stat().st_size} bytes, the manifest lists {entry['size']}")
            if verify_md5 and _md5(path) != entry["md5"].lower():
                raise UserError(f"{where}: {path}: md5 differs from the manifest's {entry['md5']}")


def _projects(root: Path, slides: dict[str, Path], labels_csv: str | None) -> dict[str, str]:
    """filename -> project, from the CSV when given, else from the folder layout."""
    if labels_csv is not None:
        table = Path(labels_csv) if Path(labels_csv).is_absolute() else root / labels_csv
        projects = {}
        for row in read_table(table, ("filename", "project")):
            if row["filename"] not in slides:
                raise UserError(f"{table}: row {row['_line']}: filename {row['filename']} not found under {root}")
            projects[row["filename"]] = row["project"]
        return projects
    projects = {}
    for name, path in slides.items():
        rel = path.relative_to(root).parts
        if len(rel) < 3:
            raise UserError(
                f"{path}: expected <project>/<uuid>/{name} (or a labels_csv with filename, project), "
                f"found no project folder"
            )
        projects[name] = rel[-3]
    return projects


def build(options: TcgaOptions, context: DatasetContext) -> PreparedData:
    """Tile every labelled slide; label = the index of its project."""
    root = require_root(context, "tcga", "the GDC download folder")
    slides: dict[str, Path] = {}
    for path in sorted(root.rglob("*.svs")):
        if path.name in slides:
            raise UserError(f"{path}: slide file name also found at {slides[path.name]}")
        slides[path.name] = path
    if not slides:
        raise UserError(f"{root}: expected .svs slides (<uuid>/<file>.svs), found none")
    check_manifest(root, slides, options.verify_md5)
    projects = _projects(root, slides, options.labels_csv)
    class_names = options.projects or sorted(set(projects.values()))
    unknown = sorted(set(options.projects or []) - set(projects.values()))
    if unknown:
        raise UserError(f"projects: expected projects found in the data, found {', '.join(unknown)} without slides")
    kept = {name: p for name, p in projects.items() if p in class_names}
    fractions = {"val": options.val_fraction, "test": options.test_fraction}
    splits = split_groups(kept, fractions, context.seed, strata=kept)
    items = [
        (
            slides[name],
            {
                "slide_id": Path(name).stem,
                "source": Path(name).stem,
                "label": class_names.index(project),
                "split": splits[name],
            },
        )  # fmt: skip
        for name, project in sorted(kept.items())
    ]
    rows, skipped = tile_slides(items, context, fallback_mpp=options.fallback_mpp)
    return prepare(rows, context, (TargetKind.LABEL,), skipped, str(root), class_names=class_names)


@sassl_core.hookimpl
def sassl_register_datasets(register):
    register("tcga", build, TcgaOptions)
