"""Shared fixtures: small, real slide files written by independent writers.

Every slide is cut from one seeded, tissue-like RGB image (white glass, pink
stroma, purple nuclei, per-pixel noise) so pixel tests can fail. Files are
written once per session (``tmp_path_factory``) and are small (at most
5000 x 3000) to keep the suite fast.

Each slide fixture returns a :class:`SlideFile`: its path, how it was written,
and for lossless files the exact array of every level (``levels[k]`` is
uint8 (rows, cols, 3)). Use ``slide_file(name)`` (or ``request.getfixturevalue``)
to parametrise over slides by name.

Writers: tifffile (generic pyramid, OME-TIFF with SubIFDs, Aperio-like SVS,
TIFFs without a pyramid), libvips through pyvips (JPEG and deflate pyramids),
zarr (OME-Zarr 0.4 on zarr v2, 0.5 on zarr v3, a plain group of levels).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import pytest

from ats_wsi.data.synthetic import aperio_description

BASE_H, BASE_W = 3000, 5000  # rows, cols of the shared image


@dataclass
class SlideFile:
    """A slide written for the tests.

    Attributes:
        name: fixture name.
        path: the file or directory.
        writer: "tifffile", "pyvips" or "zarr".
        format: what ``Slide.format`` must say.
        backend: what ``open_slide(path).backend`` must say.
        lossless: pixels must equal ``levels`` exactly.
        levels: uint8 (rows, cols, 3) arrays of the stored levels (None when
            the writer computed them itself and we cannot know them).
        tile: (width, height) of a tile at level 0.
        mpp: µm/px written into the file, or None.
        openslide: whether openslide reads it (as the same pyramid when
            ``openslide_levels`` is None, else with that many levels).
    """

    name: str
    path: str
    writer: str
    format: str
    backend: str
    lossless: bool
    levels: list
    tile: tuple[int, int]
    mpp: float | None
    openslide: bool = True
    openslide_levels: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return (self.levels[0].shape[1], self.levels[0].shape[0])


def _interp_matrix(n_out: int, n_cells: int) -> np.ndarray:
    """(n_out, n_cells + 1) float32 linear interpolation weights over a coarse grid."""
    pos = np.linspace(0, n_cells, n_out, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), n_cells - 1)
    frac = pos - i0
    m = np.zeros((n_out, n_cells + 1), np.float32)
    m[np.arange(n_out), i0] = 1 - frac
    m[np.arange(n_out), i0 + 1] = frac
    return m


def tissue_image(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded tissue-like image.

    Returns:
        (rgb uint8 (height, width, 3), tissue bool (height, width)).
    """
    rng = np.random.default_rng(seed)

    def smooth(cells_y: int, cells_x: int) -> np.ndarray:
        grid = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
        return _interp_matrix(height, cells_y) @ grid @ _interp_matrix(width, cells_x).T

    blob = (0.65 * smooth(max(2, height // 500), max(2, width // 500))
            + 0.35 * smooth(height // 120 + 2, width // 120 + 2))
    tissue = blob > 0.5
    shade = smooth(height // 40 + 2, width // 40 + 2)
    cell = 6
    nuclei = rng.random((height // cell + 1, width // cell + 1)) > 0.9
    nuclei = np.repeat(np.repeat(nuclei, cell, 0), cell, 1)[:height, :width] & tissue
    rgb = np.empty((height, width, 3), np.uint8)
    glass, eosin, haem = (238, 236, 241), (226, 142, 188), (96, 58, 150)
    for c in range(3):
        stroma = np.clip(eosin[c] * (0.8 + 0.35 * shade), 0, 255)
        chan = np.where(tissue, stroma, np.float32(glass[c]))
        chan = np.where(nuclei, np.float32(haem[c]) * (0.8 + 0.4 * shade), chan)
        chan += rng.integers(-7, 8, (height, width), dtype=np.int8)
        rgb[:, :, c] = np.clip(chan, 0, 255)
    return rgb, tissue


def decimate(img: np.ndarray, factor: int) -> np.ndarray:
    """img[::factor, ::factor] as a contiguous array (how the test pyramids are built)."""
    return np.ascontiguousarray(img[::factor, ::factor])


@pytest.fixture(scope="session")
def base_image():
    """(rgb uint8 (3000, 5000, 3), tissue bool (3000, 5000)): the image every slide is cut from."""
    return tissue_image(BASE_H, BASE_W, seed=20240601)


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("slides")


# ---------------------------------------------------------------- tifffile writers


@pytest.fixture(scope="session")
def tiff_pyramid_deflate(base_image, slide_dir) -> SlideFile:
    """tifffile generic pyramidal TIFF: 2999 x 1999, deflate, 256 tiles, 4 levels
    as reduced-resolution pages, mpp 0.25 from X/YResolution in centimetres."""
    import tifffile

    img = np.ascontiguousarray(base_image[0][:1999, 1000:3999])
    levels = [img] + [decimate(img, 2**k) for k in (1, 2, 3)]
    path = str(slide_dir / "pyramid_deflate.tif")
    with tifffile.TiffWriter(path) as tw:
        for k, lv in enumerate(levels):
            tw.write(lv, tile=(256, 256), compression="deflate", photometric="rgb",
                     subfiletype=1 if k else 0, metadata=None,
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    return SlideFile("tiff_pyramid_deflate", path, "tifffile", "generic-tiff", "tifffile", True,
                     levels, (256, 256), 0.25)


@pytest.fixture(scope="session")
def ome_tiff_lzw(base_image, slide_dir) -> SlideFile:
    """tifffile OME-TIFF with SubIFDs: 2600 x 1800, LZW, 512 tiles, 3 levels,
    PhysicalSizeX/Y 0.5 µm. Openslide reads only its first IFD (one level)."""
    import tifffile

    img = np.ascontiguousarray(base_image[0][500:2300, 1200:3800])
    levels = [img, decimate(img, 2), decimate(img, 4)]
    path = str(slide_dir / "pyramid_lzw.ome.tif")
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(levels[0], tile=(512, 512), compression="lzw", photometric="rgb", subifds=2,
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        for lv in levels[1:]:
            tw.write(lv, tile=(512, 512), compression="lzw", photometric="rgb", subfiletype=1)
    return SlideFile("ome_tiff_lzw", path, "tifffile", "ome-tiff", "tifffile", True, levels,
                     (512, 512), 0.5, openslide_levels=1)


APERIO = dict(mpp=0.499, app_mag=20, tile=240, quality=90)
"""What the tests' Aperio files say about themselves (``aperio_description`` writes the text)."""


@pytest.fixture(scope="session")
def svs_jpeg(base_image, slide_dir) -> SlideFile:
    """tifffile Aperio-like SVS: 4000 x 2400, JPEG Q90, 240 tiles, levels at 1, 4, 16,
    a stripped thumbnail, label and macro; ``MPP = 0.499``, ``AppMag = 20``.
    Openslide reads it as vendor ``aperio``."""
    import tifffile

    img = np.ascontiguousarray(base_image[0][:2400, 1000:5000])
    levels = [img, decimate(img, 4), decimate(img, 16)]
    h, w = img.shape[:2]
    path = str(slide_dir / "aperio.svs")
    jpeg = dict(compression="jpeg", compressionargs={"level": 90}, photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(240, 240), description=aperio_description(w, h, **APERIO), **jpeg)
        thumb = decimate(img, 8)
        tw.write(thumb, description=aperio_description(w, h, page="thumbnail", size=thumb.shape[1::-1]), **jpeg)
        for lv in levels[1:]:
            tw.write(lv, tile=(240, 240), description=aperio_description(w, h, page="level", size=lv.shape[1::-1],
                                                                          **APERIO), **jpeg)
        tw.write(decimate(img, 20)[:100, :100], subfiletype=1, description="Aperio Image Library\r\nlabel 100x100",
                 compression="lzw", photometric="rgb", metadata=None)
        tw.write(decimate(img, 10), subfiletype=9, description="Aperio Image Library\r\nmacro 400x240",
                 **jpeg)
    return SlideFile("svs_jpeg", path, "tifffile", "aperio", "tifffile", False, levels, (240, 240), 0.499)


@pytest.fixture(scope="session")
def tiff_flat(base_image, slide_dir) -> SlideFile:
    """tifffile TIFF without a pyramid: 4001 x 2599 (odd sizes), uncompressed, 256 tiles."""
    import tifffile

    img = np.ascontiguousarray(base_image[0][200:2799, 500:4501])
    path = str(slide_dir / "flat.tif")
    tifffile.imwrite(path, img, tile=(256, 256), compression=None, photometric="rgb", metadata=None)
    return SlideFile("tiff_flat", path, "tifffile", "generic-tiff", "tifffile", True, [img], (256, 256), None)


@pytest.fixture(scope="session")
def tiff_strips(base_image, slide_dir) -> SlideFile:
    """tifffile stripped (untiled) TIFF without a pyramid: 900 x 700, LZW, 64 rows per strip,
    100 dpi. Openslide does not read untiled TIFFs."""
    import tifffile

    img = np.ascontiguousarray(base_image[0][2300:3000, 4100:5000])
    path = str(slide_dir / "strips.tif")
    tifffile.imwrite(path, img, rowsperstrip=64, compression="lzw", photometric="rgb", metadata=None,
                     resolution=(100, 100), resolutionunit="INCH")
    return SlideFile("tiff_strips", path, "tifffile", "generic-tiff", "tifffile", True, [img], (900, 64),
                     254.0, openslide=False)


@pytest.fixture(scope="session")
def svs_jpeg2000(base_image, slide_dir) -> SlideFile:
    """tifffile Aperio SVS with JPEG 2000 (Aperio RGB, compression 33005, reversible) tiles:
    1440 x 960, 240 tiles, one level + thumbnail. ``auto`` leaves it to openslide."""
    import tifffile

    img = np.ascontiguousarray(base_image[0][2000:2960, 3500:4940])
    h, w = img.shape[:2]
    path = str(slide_dir / "aperio_j2k.svs")
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(240, 240), compression=33005, photometric="rgb", metadata=None,
                 description=aperio_description(w, h, **APERIO))
        thumb = decimate(img, 4)
        tw.write(thumb, photometric="rgb", metadata=None,
                 description=aperio_description(w, h, page="thumbnail", size=thumb.shape[1::-1]))
    return SlideFile("svs_jpeg2000", path, "tifffile", "aperio", "openslide", True, [img], (240, 240), 0.499)


# ---------------------------------------------------------------- libvips writers


def _vips_image(img: np.ndarray):
    import pyvips

    return pyvips.Image.new_from_array(img, interpretation="srgb")


def _vips_pages(path: str) -> list[np.ndarray]:
    """Every page of a vips pyramid, decoded by libvips (not by tifffile)."""
    import pyvips

    n = pyvips.Image.new_from_file(path).get("n-pages")
    return [pyvips.Image.tiffload(path, page=k).numpy()[:, :, :3] for k in range(n)]


@pytest.fixture(scope="session")
def vips_jpeg(base_image, slide_dir) -> SlideFile:
    """libvips JPEG pyramid: 5000 x 3000, Q90, 256 tiles, mpp 0.25 (resunit cm)."""
    img = base_image[0]
    path = str(slide_dir / "vips_jpeg.tif")
    _vips_image(img).tiffsave(path, tile=True, pyramid=True, compression="jpeg", Q=90,
                              tile_width=256, tile_height=256, xres=4000.0, yres=4000.0, resunit="cm")
    return SlideFile("vips_jpeg", path, "pyvips", "generic-tiff", "tifffile", False, [img], (256, 256), 0.25)


@pytest.fixture(scope="session")
def vips_deflate(base_image, slide_dir) -> SlideFile:
    """libvips deflate pyramid: 2500 x 1700, 512 tiles, mpp 0.5; ``levels`` are the
    pages as libvips itself decodes them (level 0 is the written array)."""
    img = np.ascontiguousarray(base_image[0][1300:3000, 2500:5000])
    path = str(slide_dir / "vips_deflate.tif")
    _vips_image(img).tiffsave(path, tile=True, pyramid=True, compression="deflate",
                              tile_width=512, tile_height=512, xres=2000.0, yres=2000.0, resunit="cm")
    levels = _vips_pages(path)
    assert np.array_equal(levels[0], img)
    return SlideFile("vips_deflate", path, "pyvips", "generic-tiff", "tifffile", True, levels, (512, 512), 0.5)


# ---------------------------------------------------------------- zarr writers


def _write_zarr_levels(path: str, levels, zarr_format: int, chunks_yx, axes: str, attributes: dict):
    import zarr

    group = zarr.create_group(path, zarr_format=zarr_format, attributes=attributes, overwrite=True)
    for k, lv in enumerate(levels):
        data = lv.transpose(2, 0, 1) if axes == "cyx" else lv
        chunks = (data.shape[0], *chunks_yx) if axes == "cyx" else (*chunks_yx, 3)
        if axes == "cyx" and zarr_format == 2:
            chunks = (1, *chunks_yx)  # channels in separate chunks, as bioformats2raw writes
        kwargs = {"dimension_names": list(axes)} if zarr_format == 3 else {}
        arr = group.create_array(str(k), shape=data.shape, chunks=chunks, dtype="uint8", **kwargs)
        arr[...] = data


def _ngff_multiscales(version: str, n_levels: int, mpp: float) -> list:
    return [{
        "version": version,
        "name": "slide",
        "axes": [{"name": "c", "type": "channel"},
                 {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, mpp * 2**k, mpp * 2**k]}]} for k in range(n_levels)],
    }]


@pytest.fixture(scope="session")
def ome_zarr_v04(base_image, slide_dir) -> SlideFile:
    """OME-Zarr 0.4 (zarr v2): 1800 x 1200, axes (c, y, x), chunks (1, 256, 256), 3 levels, 0.5 µm."""
    img = np.ascontiguousarray(base_image[0][1500:2700, 100:1900])
    levels = [img, decimate(img, 2), decimate(img, 4)]
    path = str(slide_dir / "v04.ome.zarr")
    _write_zarr_levels(path, levels, 2, (256, 256), "cyx", {"multiscales": _ngff_multiscales("0.4", 3, 0.5)})
    return SlideFile("ome_zarr_v04", path, "zarr", "ome-zarr", "zarr", True, levels, (256, 256), 0.5,
                     openslide=False)


@pytest.fixture(scope="session")
def ome_zarr_v05(base_image, slide_dir) -> SlideFile:
    """OME-Zarr 0.5 (zarr v3): 1800 x 1200, axes (c, y, x), chunks (3, 300, 200): tiles 200 wide,
    300 high; 3 levels, 0.5 µm."""
    img = np.ascontiguousarray(base_image[0][1500:2700, 100:1900])
    levels = [img, decimate(img, 2), decimate(img, 4)]
    path = str(slide_dir / "v05.ome.zarr")
    _write_zarr_levels(path, levels, 3, (300, 200), "cyx",
                       {"ome": {"version": "0.5", "multiscales": _ngff_multiscales("0.5", 3, 0.5)}})
    return SlideFile("ome_zarr_v05", path, "zarr", "ome-zarr", "zarr", True, levels, (200, 300), 0.5,
                     openslide=False)


@pytest.fixture(scope="session")
def zarr_levels(base_image, slide_dir) -> SlideFile:
    """A plain zarr v3 group with arrays "0", "1" shaped (y, x, c), chunks (256, 256, 3); no metadata."""
    img = np.ascontiguousarray(base_image[0][:1000, 3000:4500])
    levels = [img, decimate(img, 2)]
    path = str(slide_dir / "levels.zarr")
    _write_zarr_levels(path, levels, 3, (256, 256), "yxc", {})
    return SlideFile("zarr_levels", path, "zarr", "zarr", "zarr", True, levels, (256, 256), None,
                     openslide=False)


# ---------------------------------------------------------------- by name

@pytest.fixture
def slide_file(request):
    """``slide_file(name) -> SlideFile``: a slide fixture by name (for parametrised tests)."""
    return request.getfixturevalue


# ---------------------------------------------------------------- broken inputs


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, tiff_pyramid_deflate, vips_jpeg) -> dict[str, str]:
    """Paths of broken inputs by kind: missing, empty_dir, zero_bytes, garbage_svs,
    garbage_tiff (TIFF magic then junk), truncated_tifffile, truncated_vips (real tiled
    TIFFs cut at half their length), text_file (.txt), png_file, garbled_tile (a
    deflate tile overwritten with junk: fails at read, not at open)."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(7)
    paths = {"missing": str(d / "missing.svs")}
    (d / "empty_dir").mkdir()
    paths["empty_dir"] = str(d / "empty_dir")
    paths["zero_bytes"] = str(d / "zero.svs")
    open(paths["zero_bytes"], "wb").close()
    paths["garbage_svs"] = str(d / "garbage.svs")
    with open(paths["garbage_svs"], "wb") as f:
        f.write(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    paths["garbage_tiff"] = str(d / "garbage.tif")
    with open(paths["garbage_tiff"], "wb") as f:
        f.write(b"II*\x00" + rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    for key, src in (("truncated_tifffile", tiff_pyramid_deflate.path), ("truncated_vips", vips_jpeg.path)):
        data = open(src, "rb").read()
        paths[key] = str(d / f"{key}.tif")
        with open(paths[key], "wb") as f:
            f.write(data[: len(data) // 2])
    paths["text_file"] = str(d / "notes.txt")
    with open(paths["text_file"], "w") as f:
        f.write("not a slide\n" * 100)
    from PIL import Image

    paths["png_file"] = str(d / "picture.png")
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(paths["png_file"])
    paths["garbled_tile"] = _garbled_copy(tiff_pyramid_deflate.path, str(d / "garbled.tif"))
    return paths


def _garbled_copy(src: str, dst: str) -> str:
    """Copy a deflate TIFF and overwrite the middle of level-0 tile 5 with junk."""
    import tifffile

    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    data = bytearray(open(src, "rb").read())
    data[offset + 2: offset + count - 2] = b"\xff\x00" * ((count - 4) // 2) + b"\xff" * ((count - 4) % 2)
    with open(dst, "wb") as f:
        f.write(bytes(data))
    return dst


# ---------------------------------------------------------------- ICC profiles, libvips SVS, single level
# (the openslide-surface tests: tests/slide/test_openslide_compat.py)


def swapped_primaries_icc() -> bytes:
    """An RGB matrix/TRC ICC profile whose red and green primaries are swapped
    (PIL's sRGB profile with its ``rXYZ`` and ``gXYZ`` tags exchanged), so that
    converting it to sRGB visibly changes colours."""
    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", data[128:132])[0]
    tags = {}
    for k in range(count):
        sig, offset, size = struct.unpack(">4sII", data[132 + 12 * k: 144 + 12 * k])
        tags[sig] = (offset, size)
    (ro, rs), (go, gs) = tags[b"rXYZ"], tags[b"gXYZ"]
    red, green = bytes(data[ro:ro + rs]), bytes(data[go:go + gs])
    data[ro:ro + rs], data[go:go + gs] = green, red
    data[84:100] = bytes(16)  # profile ID: "not computed"
    return bytes(data)


@pytest.fixture(scope="session")
def icc_bytes() -> bytes:
    return swapped_primaries_icc()


@pytest.fixture(scope="session")
def svs_icc(base_image, slide_dir, icc_bytes) -> SlideFile:
    """tifffile Aperio SVS with an ICC profile on level 0 and (named the same) on the
    thumbnail: 2000 x 1200, JPEG, 240 tiles, levels 1 and 4, thumbnail, label and macro."""
    import tifffile

    img = np.ascontiguousarray(base_image[0][600:1800, 1500:3500])
    levels = [img, decimate(img, 4)]
    h, w = img.shape[:2]
    path = str(slide_dir / "aperio_icc.svs")
    jpeg = dict(compression="jpeg", compressionargs={"level": 90}, photometric="rgb", metadata=None)
    named = {"ICC Profile": "Swapped RGB"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(240, 240), iccprofile=icc_bytes,
                 description=aperio_description(w, h, fields=named, **APERIO), **jpeg)
        thumb = decimate(img, 8)
        tw.write(thumb, iccprofile=icc_bytes, **jpeg,
                 description=aperio_description(w, h, page="thumbnail", size=thumb.shape[1::-1])
                 + "|ICC Profile = Swapped RGB")
        tw.write(levels[1], tile=(240, 240), **jpeg,
                 description=aperio_description(w, h, page="level", size=levels[1].shape[1::-1], **APERIO))
        tw.write(decimate(img, 12)[:80, :90], subfiletype=1, description="Aperio Image Library\r\nlabel 90x80",
                 compression="lzw", photometric="rgb", metadata=None)
        tw.write(decimate(img, 10), subfiletype=9, description="Aperio Image Library\r\nmacro", **jpeg)
    return SlideFile("svs_icc", path, "tifffile", "aperio", "tifffile", False, levels, (240, 240), 0.499,
                     extra={"icc": icc_bytes})


@pytest.fixture(scope="session")
def tiff_icc(base_image, slide_dir, icc_bytes) -> SlideFile:
    """tifffile generic pyramidal TIFF with an ICC profile: 1500 x 1000, deflate, 256 tiles, 3 levels."""
    import tifffile

    img = np.ascontiguousarray(base_image[0][1000:2000, 500:2000])
    levels = [img, decimate(img, 2), decimate(img, 4)]
    path = str(slide_dir / "pyramid_icc.tif")
    with tifffile.TiffWriter(path) as tw:
        for k, lv in enumerate(levels):
            tw.write(lv, tile=(256, 256), compression="deflate", photometric="rgb", metadata=None,
                     subfiletype=1 if k else 0, iccprofile=icc_bytes if k == 0 else None)
    return SlideFile("tiff_icc", path, "tifffile", "generic-tiff", "tifffile", True, levels, (256, 256), None,
                     extra={"icc": icc_bytes})


@pytest.fixture(scope="session")
def vips_svs(base_image, slide_dir) -> SlideFile:
    """libvips-written Aperio SVS (an Aperio ImageDescription on a libvips JPEG pyramid):
    3000 x 2000, Q90, 240 tiles, MPP 0.499."""
    import pyvips

    img = np.ascontiguousarray(base_image[0][500:2500, 1000:4000])
    h, w = img.shape[:2]
    vimg = pyvips.Image.new_from_array(img, interpretation="srgb").copy()
    vimg.set_type(pyvips.GValue.gstr_type, "image-description", aperio_description(w, h, **APERIO))
    path = str(slide_dir / "vips_aperio.svs")
    vimg.tiffsave(path, tile=True, pyramid=True, compression="jpeg", Q=90, tile_width=240, tile_height=240)
    return SlideFile("vips_svs", path, "pyvips", "aperio", "tifffile", False, [img], (240, 240), 0.499)


@pytest.fixture(scope="session")
def vips_flat_icc(base_image, slide_dir, icc_bytes, tmp_path_factory) -> SlideFile:
    """libvips single-level tiled TIFF (no pyramid) with an ICC profile: 3000 x 1900, deflate, 256 tiles.
    ats-wsi computes levels for it; openslide reports the one stored level."""
    import pyvips

    img = np.ascontiguousarray(base_image[0][1100:3000, 2000:5000])
    icc_file = tmp_path_factory.mktemp("icc") / "swapped.icc"
    icc_file.write_bytes(icc_bytes)
    path = str(slide_dir / "vips_flat_icc.tif")
    pyvips.Image.new_from_array(img, interpretation="srgb").tiffsave(
        path, tile=True, pyramid=False, compression="deflate", tile_width=256, tile_height=256,
        profile=str(icc_file), xres=2000.0, yres=2000.0, resunit="cm")
    return SlideFile("vips_flat_icc", path, "pyvips", "generic-tiff", "tifffile", True, [img], (256, 256), 0.5,
                     extra={"icc": icc_bytes})


@pytest.fixture(scope="session")
def slide_path(tiff_pyramid_deflate) -> str:
    """Path of a small lossless pyramidal TIFF (2999 x 1999, 256 tiles, 4 levels, mpp 0.25),
    for tests in other packages that just need a slide."""
    return tiff_pyramid_deflate.path




# --------------------------------------------------------------------------- the demo, once


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """README command one's job (``ats-wsi demo``) run once through its real
    entry point; its trained checkpoint also serves the napari widget tests.

    Returns ``(out_dir, stdout)``.
    """
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("demo") / "demo"
    exe = Path(sys.executable).with_name("ats-wsi")
    done = subprocess.run([str(exe), "demo", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout
