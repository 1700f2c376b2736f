"""Cropped JPEG decoding (the optional ``ats_wsi_jpeg`` extension): the same pixels
as whole tiles and as openslide, strict on broken data, and the fallback without it."""
from __future__ import annotations

import numpy as np
import pytest

from ats_wsi import open_slide
from ats_wsi.errors import CorruptSlideError
from ats_wsi.patches import PatchReader
from ats_wsi.slide import _jpegcrop

pytest.importorskip("ats_wsi_jpeg", reason="the ats_wsi_jpeg extension (native/) is not installed")


def _abbreviate(jpeg: bytes) -> tuple[bytes, bytes]:
    """A complete JPEG -> (tables-only stream, abbreviated tile without tables or APPn)."""
    segs, i = [], 2
    while i < len(jpeg):
        marker = jpeg[i + 1]
        if marker == 0xDA:
            segs.append((marker, jpeg[i:]))
            break
        n = int.from_bytes(jpeg[i + 2:i + 4], "big")
        segs.append((marker, jpeg[i:i + 2 + n]))
        i += 2 + n
    tables = b"".join(s for m, s in segs if m in (0xDB, 0xC4))
    rest = b"".join(s for m, s in segs if m not in (0xDB, 0xC4) and not 0xE0 <= m <= 0xEF)
    return b"\xff\xd8" + tables + b"\xff\xd9", b"\xff\xd8" + rest


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 3 + y) % 256, (y * 2 + x // 7) % 256, (x + 2 * y) % 256], -1).astype(np.int16)
    img += rng.integers(-20, 20, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_aperio_rgb(path, img, tile=128, damage_tile: int | None = None, damage: str = "zeroed"):
    """Aperio-like: photometric RGB, abbreviated tiles in RGB colour space (no JFIF), JPEGTables."""
    import imagecodecs
    import tifffile

    tables, tiles = None, []
    for r in range(0, img.shape[0], tile):
        for c in range(0, img.shape[1], tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = img[r:r + tile, c:c + tile]
            block[:part.shape[0], :part.shape[1]] = part
            t, body = _abbreviate(imagecodecs.jpeg8_encode(block, level=90, colorspace="RGB", outcolorspace="RGB"))
            tables = tables or t
            tiles.append(body)
    if damage_tile is not None:
        body = tiles[damage_tile]
        sos = body.index(b"\xff\xda")
        start = sos + 2 + int.from_bytes(body[sos + 2:sos + 4], "big")
        if damage == "zeroed":  # the bottom half of the entropy data zeroed: the top rows decode fine
            half = start + (len(body) - start) // 2
            tiles[damage_tile] = body[:half] + bytes(len(body) - half - 2) + body[-2:]
        else:  # early EOI
            tiles[damage_tile] = body[:start + (len(body) - start) * 3 // 4] + b"\xff\xd9"
    h, w = img.shape[:2]
    with tifffile.TiffWriter(path) as tif:
        tif.write(iter(tiles), shape=img.shape, dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                  compression="jpeg", extratags=[(347, 7, len(tables), tables, True)],
                  description=f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) "
                              "JPEG/RGB Q=90|AppMag = 20|MPP = 0.5")


@pytest.fixture(scope="module")
def crop_slides(tmp_path_factory, vips_jpeg, svs_jpeg):
    """name -> path: libvips YCbCr 4:2:0 with tables, tifffile JFIF YCbCr (240 tiles),
    Aperio RGB abbreviated without JFIF, grey JPEG."""
    import tifffile

    root = tmp_path_factory.mktemp("crop")
    img = _image(700, 900)
    _write_aperio_rgb(str(root / "aperio_rgb.svs"), img)
    tifffile.imwrite(root / "grey.tif", img[:, :, 1], tile=(128, 128), photometric="minisblack",
                     compression="jpeg", compressionargs={"level": 85})
    tifffile.imwrite(root / "ycbcr422.tif", img, tile=(128, 128), photometric="ycbcr", subsampling=(2, 1),
                     compression="jpeg")
    return {"vips_jpeg": vips_jpeg.path, "svs_jpeg": svs_jpeg.path, "aperio_rgb": str(root / "aperio_rgb.svs"),
            "grey": str(root / "grey.tif"), "ycbcr422": str(root / "ycbcr422.tif")}


NAMES = ["vips_jpeg", "svs_jpeg", "aperio_rgb", "grey", "ycbcr422"]


@pytest.mark.parametrize("name", NAMES)
def test_any_box_of_any_tile_decodes_to_the_whole_tiles_pixels(crop_slides, name):
    """Boxes of every size (1 px to whole), at the tile's corners, edges and inside, on edge tiles too."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    with open_slide(crop_slides[name], backend="tifffile") as slide:
        assert slide.can_decode_into(0)
        cols, rows = slide.tile_grid(0)
        picks = [(0, 0), (cols - 1, rows - 1), (cols - 1, 0), (0, rows - 1)]
        picks += [(int(rng.integers(cols)), int(rng.integers(rows))) for _ in range(8)]
        for col, row in picks:
            whole = slide.read_tile(0, col, row)
            h, w = whole.shape[:2]
            boxes = [(0, h, 0, w), (0, 1, 0, 1), (h - 1, h, w - 1, w), (0, h, w - 1, w), (h - 1, h, 0, w),
                     (min(16, h - 1), h, min(16, w - 1), w), (0, min(17, h), 0, min(33, w))]
            for _ in range(30):
                y0, x0 = int(rng.integers(h)), int(rng.integers(w))
                y1 = int(rng.integers(y0 + 1, min(h, y0 + int(rng.choice([2, 9, 40, h]))) + 1))
                x1 = int(rng.integers(x0 + 1, min(w, x0 + int(rng.choice([2, 9, 40, w]))) + 1))
                boxes.append((y0, y1, x0, x1))
            for y0, y1, x0, x1 in boxes:
                out = np.full((1, h, w, 3), 7, np.uint8)
                slide.decode_tile_into(0, col, row, out, [(0, y0, y1, x0, x1, y0, x0)])
                np.testing.assert_array_equal(out[0, y0:y1, x0:x1], whole[y0:y1, x0:x1],
                                              err_msg=f"{name} tile ({col}, {row}) box {(y0, y1, x0, x1)}")
                out[0, y0:y1, x0:x1] = 7
                assert (out == 7).all(), "pixels written outside the box"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_patch_reader_gives_the_same_pixels_with_and_without_the_extension(crop_slides, patch_helpers,
                                                                           name, workers, monkeypatch):
    rng = np.random.default_rng(11)
    with open_slide(crop_slides[name], backend="tifffile") as slide:
        wh, tile = slide.dimensions, slide.tile_size(0)
        for patch in [(300, 170), (32, 32), tile]:
            xy = patch_helpers.edge_boxes(rng, wh, tile, patch, n_random=40)  # overlapping patches too
            with PatchReader(slide, 0, patch, workers=workers, cache_bytes=0) as fast:
                assert fast.crop
                got = fast.read(xy)
                assert fast.stats.tiles_decoded == len(patch_helpers.tiles_under(xy, patch, tile, wh))
            with PatchReader(slide, 0, patch, workers=workers, cache_bytes=0, crop=False) as whole:
                assert not whole.crop
                ref = whole.read(xy)
            with monkeypatch.context() as m:  # the extension missing: the whole-tile path
                m.setattr(_jpegcrop, "_native", None)
                with PatchReader(slide, 0, patch, workers=workers, cache_bytes=0) as missing:
                    assert not missing.crop
                    again = missing.read(xy)
            np.testing.assert_array_equal(got.numpy(), ref.numpy())
            np.testing.assert_array_equal(again.numpy(), ref.numpy())


@pytest.mark.parametrize("name", ["vips_jpeg", "svs_jpeg"])
def test_level0_patches_equal_openslides_pixels(crop_slides, name):
    """(The RGB-without-JFIF test slide is left out: openslide reads its tiles as
    YCbCr, the tifffile backend as RGB, as tifffile does; crop and whole agree.)"""
    import openslide

    rng = np.random.default_rng(5)
    path = crop_slides[name]
    osr = openslide.OpenSlide(path)
    try:
        w, h = osr.dimensions
        xy = np.stack([rng.integers(-20, w - 100, 24), rng.integers(-20, h - 100, 24)], axis=1)
        with open_slide(path, backend="tifffile") as slide, PatchReader(slide, 0, 200, workers=2, cache_bytes=0) as r:
            assert r.crop
            got = r.read(xy).permute(0, 2, 3, 1).numpy()
        for i, (x, y) in enumerate(xy.tolist()):
            ref = np.asarray(osr.read_region((x, y), 0, (200, 200)))
            inside = ref[:, :, 3] == 255  # openslide: transparent outside the slide
            np.testing.assert_array_equal(got[i][inside], ref[:, :, :3][inside], err_msg=f"{name} patch {i}")
    finally:
        osr.close()


def test_the_cache_keeps_whole_tiles(vips_jpeg):
    with open_slide(vips_jpeg.path) as slide:
        assert PatchReader(slide, 0, 256, cache_bytes=2**20).crop is False
        assert PatchReader(slide, 0, 256, cache_bytes=0).crop is True


@pytest.mark.parametrize("damage", ["zeroed", "early-eoi"])
def test_a_broken_tile_raises_even_when_only_its_intact_top_rows_are_needed(tmp_path, damage):
    path = str(tmp_path / f"broken-{damage}.svs")
    _write_aperio_rgb(path, _image(256, 256), damage_tile=0, damage=damage)
    with open_slide(path, backend="tifffile") as slide:
        with pytest.raises(CorruptSlideError, match=r"level 0 tile \(0, 0\)") as caught:
            slide.read_tile(0, 0, 0)
        assert path in str(caught.value)
        for workers in (1, 2):
            with PatchReader(slide, 0, (64, 8), workers=workers, cache_bytes=0) as reader:
                assert reader.crop
                with pytest.raises(CorruptSlideError, match=r"level 0 tile \(0, 0\)"):
                    reader.read([[0, 0]])  # rows 0..8 of tile (0, 0): before the damage
                reader.read([[130, 130]])  # another tile is fine


def test_bad_arguments_are_refused_without_crashing():
    import ats_wsi_jpeg

    out = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        ats_wsi_jpeg.decode_into(b"\xff\xd8", None, False, out, [(1, 0, 8, 0, 8, 0, 0)])  # patch index out
    with pytest.raises(ValueError):
        ats_wsi_jpeg.decode_into(b"\xff\xd8", None, False, np.zeros((1, 8, 8, 4), np.uint8), [(0, 0, 8, 0, 8, 0, 0)])
    with pytest.raises(ats_wsi_jpeg.JpegError):
        ats_wsi_jpeg.decode_into(b"not a jpeg", None, False, out, [(0, 0, 8, 0, 8, 0, 0)])
    with pytest.raises(ats_wsi_jpeg.JpegError):
        ats_wsi_jpeg.decode_into(b"\xff\xd8\xff\xd9", b"\xff\xd8\xff\xd9", False, out, [(0, 0, 8, 0, 8, 0, 0)])


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_the_native_block_mean_equals_numpys(factor):
    import ats_wsi_jpeg

    from ats_wsi.patches._resample import block_mean

    rng = np.random.default_rng(factor)
    region = rng.integers(0, 256, (3, 20 * factor, 17 * factor, 3), dtype=np.uint8)
    region[0] = 255  # the largest sums
    want, got = np.empty((2, 3, 20, 17, 3), np.uint8)
    block_mean(region, factor, want)
    ats_wsi_jpeg.block_mean(region, factor, got)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", NAMES)
def test_whole_width_rows_decoded_straight_into_a_patch_land_where_the_pair_says(crop_slides, name):
    """One pair taking every column of a tile (the tile-aligned case, decoded without a
    scratch row): its rows land at (py0, px0) of a larger patch, nothing else is touched."""
    with open_slide(crop_slides[name], backend="tifffile") as slide:
        whole = slide.read_tile(0, 1, 1)
        h, w = whole.shape[:2]
        for y0, y1 in [(0, h), (0, 1), (h - 1, h), (17, h - 5)]:
            out = np.full((2, h + 9, w + 11, 3), 7, np.uint8)
            slide.decode_tile_into(0, 1, 1, out, [(1, 3, 3 + y1 - y0, 5, 5 + w, y0, 0)])
            np.testing.assert_array_equal(out[1, 3:3 + y1 - y0, 5:5 + w], whole[y0:y1],
                                          err_msg=f"{name} rows {y0}:{y1}")
            out[1, 3:3 + y1 - y0, 5:5 + w] = 7
            assert (out == 7).all(), f"{name} rows {y0}:{y1}: pixels written outside the pair"


class _RecordVerify:
    """The real extension, recording the ``verify`` flag of each decode."""

    def __init__(self, real):
        self.real, self.JpegError, self.flags = real, real.JpegError, []

    def decode_into(self, *args, verify=True):
        self.flags.append(verify)
        return self.real.decode_into(*args, verify=verify)


def test_the_rest_of_a_tile_is_checked_once_per_open_slide(crop_slides, monkeypatch):
    """The first read of a tile decodes it to its EOI; later reads of that tile (same open
    slide) stop after their rows, with the same pixels; another open slide checks again."""
    spy = _RecordVerify(_jpegcrop._native)
    monkeypatch.setattr(_jpegcrop, "_native", spy)
    for _ in range(2):
        with open_slide(crop_slides["vips_jpeg"], backend="tifffile") as slide:
            first = np.zeros((1, 8, 40, 3), np.uint8)
            slide.decode_tile_into(0, 1, 0, first, [(0, 0, 8, 0, 40, 3, 5)])
            again = np.zeros_like(first)
            slide.decode_tile_into(0, 1, 0, again, [(0, 0, 8, 0, 40, 3, 5)])
            other = np.zeros_like(first)
            slide.decode_tile_into(0, 0, 1, other, [(0, 0, 8, 0, 40, 3, 5)])
            np.testing.assert_array_equal(again, first)
            np.testing.assert_array_equal(first[0], slide.read_tile(0, 1, 0)[3:11, 5:45])
            assert slide.tiff_levels[0].verified_count() == 2
    assert spy.flags == [True, False, True] * 2


def test_forgotten_marks_make_the_next_decode_check_the_tile_again(crop_slides, monkeypatch):
    """TiffTiles.forget_verified (what the benchmark's cold runs do): as on a slide just opened."""
    spy = _RecordVerify(_jpegcrop._native)
    monkeypatch.setattr(_jpegcrop, "_native", spy)
    with open_slide(crop_slides["vips_jpeg"], backend="tifffile") as slide:
        out = np.zeros((1, 8, 40, 3), np.uint8)
        tiles = slide.tiff_levels[0]
        for _ in range(2):
            slide.decode_tile_into(0, 1, 0, out, [(0, 0, 8, 0, 40, 3, 5)])
        assert tiles.verified_count() == 1
        tiles.forget_verified()
        assert tiles.verified_count() == 0
        slide.decode_tile_into(0, 1, 0, out, [(0, 0, 8, 0, 40, 3, 5)])
        assert tiles.verified_count() == 1
    assert spy.flags == [True, False, True]
