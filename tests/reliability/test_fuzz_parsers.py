"""Property-based tests of everything that parses user files: the config loader and the dataset
CSV / XML parsers, on random and mutated inputs. Each either loads or raises the project's own
error type (:class:`UserError`) — never anything else."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sassl_core.config import RunConfig, load_config, parse_override
from sassl_core.errors import UserError
from sassl_plugins.datasets.breastpathq import _rows as breastpathq_rows
from sassl_plugins.datasets.camelyon16 import Lesions, parse_asap, read_reference
from sassl_plugins.datasets.common import read_table
from sassl_plugins.datasets.panda import read_labels
from sassl_plugins.datasets.tcga import check_manifest
from tests.fixtures.layouts import CAMELYON_LESION, PANDA_SLIDES, asap_xml

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

PANDA_CSV = "image_id,data_provider,isup_grade,gleason_score\n" + "".join(
    f"{i},{p},{g},{s}\n" for i, p, g, s in PANDA_SLIDES
)
BREASTPATHQ_CSV = "slide,rid,y\n99188,1,0.0\n99188,2,0.35\n"
MANIFEST = "id\tfilename\tmd5\tsize\tstate\nu1\ta.svs\t0\t4\treleased\n"
REFERENCE = "Test_001,Tumor,Macro,Primary\nTest_002,Normal\n"
ASAP = asap_xml(CAMELYON_LESION)


def _mutations(seed: str) -> st.SearchStrategy[bytes]:
    """``seed`` with random byte edits: deletions, insertions, replacements, truncation."""
    data = seed.encode()

    @st.composite
    def mutate(draw) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            op = draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
            at = draw(st.integers(0, max(len(out) - 1, 0)))
            if op == "delete" and out:
                del out[at : at + draw(st.integers(1, 16))]
            elif op == "insert":
                out[at:at] = draw(
                    st.binary(min_size=1, max_size=8) | st.sampled_from([b",", b"\n", b'"', b"\t", b"<", b">"])
                )
            elif op == "replace" and out:
                out[at] = draw(st.integers(0, 255))
            elif op == "truncate":
                del out[at:]
        return bytes(out)

    return mutate()


def _inputs(seed: str) -> st.SearchStrategy[bytes]:
    return st.one_of(_mutations(seed), st.binary(max_size=300), st.text(max_size=300).map(str.encode))


class Folder:
    """A scratch folder reused across examples (hypothesis runs many per test)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sassl-fuzz-"))

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


SCRATCH = Folder()
for image_id, *_ in PANDA_SLIDES:  # read_labels checks that each listed slide exists
    SCRATCH.write(f"panda/train_images/{image_id}.tiff", b"")


# --- config --------------------------------------------------------------------------------

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=12,
)
SECTIONS = list(RunConfig.model_fields)
FIELDS = [f"{s}.{f}" for s in SECTIONS for f in type(getattr(RunConfig(), s)).model_fields]


@FUZZ
@given(
    data=_inputs(RunConfig().to_yaml()).map(lambda b: b.decode("utf-8", "replace").encode())
)  # see below for non-UTF-8
@example(data=b"trainer: !!python/object/apply:os.system ['true']\n")
@example(data=b"a: &x [*x]\n")
def test_config_file_loads_or_raises_user_error(data):
    path = SCRATCH.write("config.yaml", data)
    try:
        assert isinstance(load_config([path]), RunConfig)
    except UserError:
        pass


def test_config_file_that_is_not_utf8():
    path = SCRATCH.write("latin1.yaml", "trainer: {seed: 1}  # réglage\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.yaml"):
        load_config([path])


@FUZZ
@given(tree=st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=8), yaml_values, max_size=4))
def test_config_mapping_loads_or_raises_user_error(tree):
    path = SCRATCH.write("tree.yaml", yaml.safe_dump(tree).encode())
    try:
        load_config([path])
    except UserError:
        pass


@FUZZ
@given(key=st.sampled_from(FIELDS) | st.text(max_size=20), value=st.text(max_size=30))
def test_override_loads_or_raises_user_error(key, value):
    try:
        load_config([], {}, [f"{key}={value}"])
    except UserError:
        pass
    try:
        parse_override(value)
    except UserError:
        pass


# --- dataset label files -----------------------------------------------------------------------


@FUZZ
@given(data=_inputs(PANDA_CSV))
def test_panda_train_csv(data):
    SCRATCH.write("panda/train.csv", data)
    try:
        rows = read_labels(SCRATCH.root / "panda")
    except UserError:
        return
    assert all(0 <= int(r["isup_grade"]) <= 5 and r["data_provider"] in ("karolinska", "radboud") for r in rows)


@FUZZ
@given(data=_inputs(BREASTPATHQ_CSV))
def test_breastpathq_labels(data):
    labels = SCRATCH.write("bpq/train_labels.csv", data)
    try:
        rows = breastpathq_rows(labels, SCRATCH.root / "bpq" / "train", "train")
    except UserError:
        return
    assert all(0.0 <= r["target"] <= 1.0 for r in rows)


@FUZZ
@given(data=_inputs(MANIFEST))
def test_tcga_manifest(data):
    SCRATCH.write("tcga/gdc_manifest.txt", data)
    slide = SCRATCH.write("tcga/u1/a.svs", b"1234")
    try:
        check_manifest(SCRATCH.root / "tcga", {"a.svs": slide}, verify_md5=False)
    except UserError:
        pass


@FUZZ
@given(data=_inputs(REFERENCE))
def test_camelyon16_reference_csv(data):
    try:
        classes = read_reference(SCRATCH.write("reference.csv", data))
    except UserError:
        return
    assert set(classes.values()) <= {"tumor", "normal"}


@FUZZ
@given(data=_inputs("a,b\n1,2\n"), delimiter=st.sampled_from([",", "\t"]))
def test_read_table(data, delimiter):
    try:
        rows = read_table(SCRATCH.write("table.csv", data), ("a", "b"), delimiter=delimiter)
    except UserError:
        return
    assert all({"a", "b", "_line"} <= set(r) for r in rows)


# --- ASAP annotations ------------------------------------------------------------------------


@FUZZ
@given(data=_inputs(ASAP))
def test_asap_xml(data):
    try:
        lesions = parse_asap(SCRATCH.write("lesions.xml", data))
    except UserError:
        return
    assert isinstance(lesions, Lesions)
    assert all(p.ndim == 2 and p.shape[1] == 2 and len(p) >= 3 for p in lesions.tumour + lesions.exclusion)


@FUZZ
@given(
    group=st.sampled_from(["_0", "_1", "_2", "Tumor", "Exclusion", "None"]) | st.text(max_size=6),
    points=st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True)), max_size=6),
)
def test_asap_polygons(group, points):
    xml = asap_xml([(group, points)]).replace('PartOfGroup="', 'PartOfGroup="', 1)
    try:
        lesions = parse_asap(SCRATCH.write("polygons.xml", xml.encode("utf-8", "surrogatepass")))
    except UserError:
        return
    for polygon in lesions.tumour + lesions.exclusion:
        lesions.rasterise(0, 0, 8, 8, 1.0)  # whatever parsed also rasterises
        assert len(polygon) >= 3
