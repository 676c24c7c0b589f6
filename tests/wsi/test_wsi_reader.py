from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from sassl_core.errors import UserError
from sassl_core.wsi.reader import get_reader, open_slide, write_pyramid_tiff
from tests.wsi.conftest import SLIDE_MPP


def test_pyramidal_tiff_opens_through_openslide(blob_slide):
    with open_slide(blob_slide.path) as reader:
        assert reader.dimensions == (blob_slide.width, blob_slide.height)
        assert reader.level_count == 3
        assert reader.level_dimensions[1] == (blob_slide.width // 2, blob_slide.height // 2)
        assert reader.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert reader.mpp == pytest.approx(blob_slide.mpp)
        assert reader.mpp_source == "file"


def test_read_matches_pixels_and_pads_white_outside(blob_slide):
    image, width, height = blob_slide.image, blob_slide.width, blob_slide.height
    with open_slide(blob_slide.path) as reader:
        patch = reader.read(300, 350, 0, 64)
        assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8
        # JPEG-compressed: close to, not equal to, the written pixels
        assert np.abs(patch.astype(int) - image[350:414, 300:364]).mean() < 12
        corner = reader.read(width - 16, height - 16, 0, 32)
        assert (corner[16:, :] == 255).all() and (corner[:, 16:] == 255).all()
        assert corner[:16, :16].mean() < 250  # the image's own (noisy) glass
        assert (reader.read(0, 0, 1, 16, fill=0) > 0).any()


def test_level_read_covers_the_same_area(blob_slide):
    with open_slide(blob_slide.path) as reader:
        fine = reader.read(200, 200, 0, 128).astype(float)
        coarse = reader.read(200, 200, 1, 64).astype(float)
        shrunk = fine.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
        assert np.abs(coarse - shrunk).mean() < 12


def test_thumbnail_keeps_aspect(blob_slide):
    with open_slide(blob_slide.path) as reader:
        thumb = reader.thumbnail(256)
        assert thumb.shape == (192, 256, 3)


def test_no_resolution_is_an_error_unless_fallback(no_mpp_slide):
    with pytest.raises(UserError, match=r"nompp\.tiff: no resolution .*; pass --fallback-mpp$"):
        open_slide(no_mpp_slide)
    reader = open_slide(no_mpp_slide, fallback_mpp=0.5)
    assert reader.mpp == 0.5 and reader.mpp_source == "fallback"
    lazy = open_slide(no_mpp_slide, require_mpp=False)
    with pytest.raises(UserError, match="no resolution"):
        lazy.mpp


def test_objective_power_gives_an_estimate(cmu_slide, monkeypatch):
    import openslide

    real = openslide.OpenSlide

    class PowerOnly(real):
        @property
        def properties(self):
            props = dict(super().properties)
            props.pop("openslide.mpp-x"), props.pop("openslide.mpp-y")
            return props

    monkeypatch.setattr(openslide, "OpenSlide", PowerOnly)
    reader = open_slide(cmu_slide)
    assert reader.mpp == pytest.approx(0.5) and reader.mpp_source == "objective-power"


def test_plain_images(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "patch.png")
    with pytest.raises(UserError, match="patch.png: no resolution"):
        open_slide(tmp_path / "patch.png")
    png = open_slide(tmp_path / "patch.png", fallback_mpp=0.25)
    assert png.dimensions == (50, 40) and png.level_count == 1
    assert np.array_equal(png.read(0, 0, 0, 40)[:, :40], pixels[:, :40])
    assert (png.read(0, 0, 0, 64)[40:] == 255).all()
    # an untiled TIFF with a centimetre resolution tag (4 px/µm^-1 -> 0.25 µm/px)
    tifffile.imwrite(
        tmp_path / "patch.tif", pixels, photometric="rgb", resolution=(40000, 40000), resolutionunit="CENTIMETER"
    )
    tif = open_slide(tmp_path / "patch.tif")
    assert tif.mpp == pytest.approx(0.25) and np.array_equal(tif.read(10, 5, 0, 8), pixels[5:13, 10:18])
    # a 72 dpi default is not a microscope resolution
    tifffile.imwrite(tmp_path / "dpi.tif", pixels, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(UserError, match="no resolution"):
        open_slide(tmp_path / "dpi.tif")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.svs", None, "missing.svs: file not found"),
        ("notes.txt", b"hello", "notes.txt: unsupported format"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "broken.png: unreadable image"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        open_slide(tmp_path / name, fallback_mpp=0.5)


def test_truncated_tiff_is_a_user_error(tmp_path, blob_slide):
    data = blob_slide.path.read_bytes()
    (tmp_path / "cut.tiff").write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="cut.tiff"):
        reader = open_slide(tmp_path / "cut.tiff")
        reader.read(0, 0, 0, blob_slide.width)  # some decoders fail only on reading the lost tiles


def test_get_reader_reuses_one_handle_per_process(blob_slide):
    assert get_reader(blob_slide.path) is get_reader(str(blob_slide.path))


def test_get_reader_per_process_and_least_recently_used(tmp_path, blob_slide, monkeypatch):
    import sassl_core.wsi.reader as reader_module

    first = get_reader(blob_slide.path)
    monkeypatch.setattr(reader_module.os, "getpid", lambda: -1)  # as if in a forked worker
    child = get_reader(blob_slide.path)
    assert child is not first and get_reader(blob_slide.path) is child
    assert all(pid == -1 for pid, _ in reader_module._READERS)  # the parent's handles are dropped

    monkeypatch.setattr(reader_module, "MAX_OPEN_READERS", 2)
    for name in "abc":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{name}.png")
    a = get_reader(tmp_path / "a.png", fallback_mpp=0.5)
    get_reader(tmp_path / "b.png")
    assert get_reader(tmp_path / "a.png") is a and a.mpp == 0.5  # a is now the most recent
    get_reader(tmp_path / "c.png")  # evicts b
    assert [Path(p).name for _, p in reader_module._READERS] == ["a.png", "c.png"]


def test_thumbnail_of_a_slide_without_pyramid_is_built_from_bounded_reads(blob_slide, tmp_path, monkeypatch):
    """A single-level slide: OpenSlide's own thumbnail would read the whole level at once."""
    from sassl_core.wsi import reader as reader_module

    flat = write_pyramid_tiff(tmp_path / "flat.tiff", blob_slide.image, SLIDE_MPP, levels=1)
    with open_slide(flat) as reader:
        assert reader.level_count == 1
        whole = reader.thumbnail(128)  # 1024 x 768 is under the default block: OpenSlide's path
        monkeypatch.setattr(reader_module, "THUMBNAIL_BLOCK", 300)
        sizes = []
        real_read = reader.read
        monkeypatch.setattr(reader, "read", lambda *args: sizes.append(args[3]) or real_read(*args))
        blocks = reader.thumbnail(128)
    assert blocks.shape == whole.shape == (96, 128, 3)
    assert len(sizes) == 4 * 3 and set(sizes) == {300}  # 1024 x 768 in 300-pixel squares
    assert np.abs(blocks.astype(int) - whole).mean() < 3


def test_an_unreadable_file_is_permission_denied_not_corrupt(tmp_path, cmu_slide, monkeypatch):
    import builtins

    import sassl_core.wsi.reader as reader_module

    locked = tmp_path / "locked.svs"
    locked.write_bytes(cmu_slide.read_bytes())
    real_open = builtins.open

    def refusing_open(path, *args, **kwargs):  # what a file of another user without read access gives
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(reader_module, "open", refusing_open, raising=False)
    with pytest.raises(UserError, match=r"locked.svs: permission denied"):
        open_slide(locked)


def test_an_unreadable_file_by_mode_bits_is_permission_denied(tmp_path, blob_slide):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file whatever its mode")
    locked = tmp_path / "locked.tiff"
    locked.write_bytes(blob_slide.path.read_bytes())
    locked.chmod(0)
    with pytest.raises(UserError, match=r"locked.tiff: permission denied"):
        open_slide(locked)


def tiff_declaring(path: Path, width: int, height: int) -> Path:
    """A few-hundred-byte deflate TIFF whose header declares ``width`` x ``height`` RGB pixels."""
    import struct

    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        offsets = {name: (tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")}
    data = bytearray(path.read_bytes())
    for name, value in (("ImageWidth", width), ("ImageLength", height)):
        offset, dtype = offsets[name]
        struct.pack_into("<H" if dtype == 3 else "<I", data, offset, value)
    path.write_bytes(bytes(data))
    return path


def test_a_plain_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = tiff_declaring(tmp_path / "bomb.tif", 20000, 20000)
    assert bomb.stat().st_size < 2000
    with tifffile.TiffFile(bomb) as tif:
        assert tif.pages[0].shape[:2] == (20000, 20000)  # what a decoder would allocate: 1.2 GB
    with pytest.raises(UserError, match=r"bomb.tif: image declares 20000x20000 = 400000000 pixels, more than"):
        open_slide(bomb, fallback_mpp=0.5)
    Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(tmp_path / "wide.png")
    monkeypatch.setenv("SASSL_MAX_IMAGE_PIXELS", "2999")
    with pytest.raises(UserError, match=r"wide.png: image declares 50x60 = 3000 pixels, more than the limit 2999"):
        open_slide(tmp_path / "wide.png", fallback_mpp=0.5)
    monkeypatch.setenv("SASSL_MAX_IMAGE_PIXELS", "3000")  # raised: the image is read
    assert open_slide(tmp_path / "wide.png", fallback_mpp=0.5).dimensions == (50, 60)
    monkeypatch.setenv("SASSL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(UserError, match=r"SASSL_MAX_IMAGE_PIXELS: expected a positive whole number .*'lots'"):
        open_slide(tmp_path / "wide.png", fallback_mpp=0.5)


def test_overview_of_an_svs_is_its_stored_thumbnail(cmu_slide, monkeypatch):
    """No pyramid level is decoded: on this single-level slide that would be the whole scan."""
    from sassl_core.wsi.reader import OpenSlideReader

    def decode_level(*args):
        raise LookupError("decoded a level")

    with open_slide(cmu_slide) as reader:
        monkeypatch.setattr(OpenSlideReader, "thumbnail", decode_level)
        view = reader.overview(1024)
        assert view.shape == (768, 574, 3)
        assert reader.overview(1536).shape == (768, 574, 3)  # within 2x of the size asked for
        assert max(reader.overview(256).shape) == 256  # a smaller view is the stored one shrunk
        with pytest.raises(LookupError, match="decoded a level"):
            reader.overview(2048)  # too coarse for this request: read from the pyramid


def test_overview_without_a_stored_thumbnail_is_the_thumbnail(blob_slide):
    with open_slide(blob_slide.path) as reader:
        assert np.array_equal(reader.overview(256), reader.thumbnail(256))
