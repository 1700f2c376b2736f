"""DICOM WSI, which openslide reads: ats-wsi's ``open_slide`` against ``openslide.OpenSlide`` (issue 18).

A small DICOM VL Whole Slide Microscopy Image series is written with pydicom
(one instance per level, TILED_FULL, JPEG baseline 256² tiles, plus LABEL and
OVERVIEW instances) and opened by one of its .dcm files, as openslide does.
``open_slide(backend="auto")`` hands it to openslide (no TIFF header, and
openslide detects "dicom"), so everything must agree exactly: the same library
decodes the same tiles.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", minversion="3.0")  # save_as(enforce_file_format=)
openslide = pytest.importorskip("openslide")
if int(openslide.__library_version__.split(".")[0]) < 4:
    pytest.skip("openslide < 4 does not read DICOM WSI", allow_module_level=True)

from PIL import Image  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import JPEGBaseline8Bit, generate_uid  # noqa: E402

from ats_wsi import open_slide  # noqa: E402
from ats_wsi.slide import detect_format  # noqa: E402

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
MM_PER_PX = 0.00025  # 0.25 µm/px at level 0


def _instance(image: Image.Image, kind: str, tile: tuple[int, int] | None, spacing: float,
              uids: dict, number: int) -> Dataset:
    """One WSI instance of ``image``: TILED_FULL JPEG frames of ``tile`` (None: the whole image, one frame)."""
    w, h = image.size
    tw, th = tile or (w, h)
    frames = []
    for r in range(-(-h // th)):
        for c in range(-(-w // tw)):
            t = Image.new("RGB", (tw, th), (255, 255, 255))
            t.paste(image.crop((c * tw, r * th, min(w, (c + 1) * tw), min(h, (r + 1) * th))), (0, 0))
            buf = io.BytesIO()
            t.save(buf, "JPEG", quality=90)
            frames.append(buf.getvalue())
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = WSI_SOP_CLASS, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality, ds.ImageType = "SM", ["ORIGINAL", "PRIMARY", kind, "NONE"]
    ds.InstanceNumber, ds.SeriesNumber = number, 1
    ds.PatientName, ds.PatientID, ds.ContainerIdentifier = "Test", "1", "1"
    ds.Manufacturer = "ats-wsi tests"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = w, h, 1
    ds.Columns, ds.Rows, ds.NumberOfFrames = tw, th, len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = uids["width_mm"], uids["height_mm"], 0.001
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [spacing, spacing], 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 0.0, 0.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return ds


def write_dicom_wsi(folder, image: np.ndarray, downsamples=(1, 4), tile=256, associated=None) -> list:
    """A DICOM WSI series of ``image`` in ``folder``: ``level{i}.dcm`` per downsample, then
    ``{kind}.dcm`` per associated image (kind LABEL / OVERVIEW / THUMBNAIL). Returns the paths."""
    h0, w0 = image.shape[:2]
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid(),
            "width_mm": w0 * MM_PER_PX, "height_mm": h0 * MM_PER_PX}
    paths, number = [], 0
    base = Image.fromarray(image)
    for i, ds in enumerate(downsamples):
        level = base if ds == 1 else base.resize((w0 // ds, h0 // ds), Image.Resampling.BOX)
        number += 1
        paths.append(folder / f"level{i}.dcm")
        _instance(level, "VOLUME", (tile, tile), MM_PER_PX * ds, uids, number).save_as(
            paths[-1], enforce_file_format=True)
    for kind, arr in (associated or {}).items():
        number += 1
        paths.append(folder / f"{kind.lower()}.dcm")
        _instance(Image.fromarray(arr), kind, None, MM_PER_PX, uids, number).save_as(
            paths[-1], enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def dicom_wsi(tmp_path_factory):
    """(level-0 .dcm path, every path): 1024 x 768 level 0, a 4x level, a label and an overview."""
    yy, xx = np.mgrid[0:768, 0:1024]
    image = np.stack([(xx // 4) % 256, (yy // 3) % 256, ((xx + yy) // 7) % 256], -1).astype(np.uint8)
    folder = tmp_path_factory.mktemp("dicom_wsi")
    paths = write_dicom_wsi(folder, image, associated={"LABEL": np.full((100, 120, 3), 200, np.uint8),
                                                       "OVERVIEW": image[::8, ::8]})
    return paths[0], paths


@pytest.fixture(params=["level0.dcm", "level1.dcm", "label.dcm"])
def pair(request, dicom_wsi):
    """(openslide.OpenSlide, ats_wsi Slide), both opened by the same .dcm file of the series."""
    path = str(dicom_wsi[0].parent / request.param)
    osr = openslide.OpenSlide(path)
    slide = open_slide(path)
    yield osr, slide
    slide.close()
    osr.close()


def test_openslide_reads_the_written_series(dicom_wsi):
    path = str(dicom_wsi[0])
    assert openslide.OpenSlide.detect_format(path) == "dicom"
    with openslide.OpenSlide(path) as osr:
        assert osr.level_dimensions == ((1024, 768), (256, 192))


def test_detect_format_matches_openslide(dicom_wsi):
    for path in map(str, dicom_wsi[1]):
        assert detect_format(path) == openslide.OpenSlide.detect_format(path) == "dicom"


def test_auto_backend_hands_dicom_to_openslide(pair):
    osr, slide = pair
    assert slide.backend == "openslide"
    assert slide.format == osr.properties["openslide.vendor"] == "dicom"
    assert slide.detect_format(slide.path) == "dicom"


def test_levels_match_openslide(pair):
    osr, slide = pair
    assert slide.dimensions == osr.dimensions
    assert slide.level_count == osr.level_count == 2
    assert slide.level_dimensions == osr.level_dimensions
    assert slide.level_downsamples == osr.level_downsamples
    for ds in [0.5, 1, 2, 3.99, 4, 5, 100]:
        assert slide.get_best_level_for_downsample(ds) == osr.get_best_level_for_downsample(ds), ds


def test_properties_match_openslide(pair):
    """Every key openslide reports (openslide.* and dicom.*), with its value, and no other."""
    osr, slide = pair
    theirs = dict(osr.properties)
    assert any(k.startswith("dicom.") for k in theirs)
    assert slide.properties == theirs
    assert slide.mpp_xy == pytest.approx((float(theirs["openslide.mpp-x"]), float(theirs["openslide.mpp-y"])))
    assert math.isclose(slide.mpp, 0.25, rel_tol=1e-9)


@pytest.mark.parametrize("location, level, size", [
    ((0, 0), 0, (300, 200)), ((500, 300), 0, (400, 400)), ((1000, 700), 0, (64, 128)),
    ((-10, -10), 0, (50, 50)), ((100, 100), 1, (200, 150)), ((0, 0), 1, (300, 300)), ((4, 12), 1, (17, 9)),
    pytest.param((2, 3), 1, (17, 9), marks=pytest.mark.xfail(strict=True, reason=(
        "not DICOM-specific: a level-0 location that is no multiple of the level's downsample is snapped "
        "to the level pixel floor(x / downsample + 0.5) by ats-wsi (Slide.read_region's documented "
        "contract), while openslide resamples at the fractional position"))),
])
def test_read_region_matches_openslide(pair, location, level, size):
    """Same decoder, same tiles: exact; outside the slide openslide's transparent black is FILL_VALUE 0."""
    osr, slide = pair
    got = slide.read_region(location, level, size)
    ref = np.asarray(osr.read_region(location, level, size))[:, :, :3]
    assert got.dtype == np.uint8 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("size", [(200, 200), (100, 300), (1024, 768)])
def test_thumbnail_matches_openslide(pair, size):
    osr, slide = pair
    ours, theirs = slide.get_thumbnail(size), osr.get_thumbnail(size)
    assert ours.size == theirs.size
    np.testing.assert_array_equal(np.asarray(ours.convert("RGB")), np.asarray(theirs.convert("RGB")))


def test_associated_images_match_openslide(pair):
    osr, slide = pair
    assert set(slide.associated_images) == set(osr.associated_images) == {"label", "macro"}
    for name, theirs in osr.associated_images.items():
        ours = slide.associated_images[name]
        assert ours.size == theirs.size, name
        np.testing.assert_array_equal(np.asarray(ours.convert("RGBA")), np.asarray(theirs.convert("RGBA")))


def test_color_profile_matches_openslide(pair):
    osr, slide = pair
    assert slide.color_profile is None and osr.color_profile is None
