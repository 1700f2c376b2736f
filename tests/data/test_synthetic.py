"""Synthetic slides: real Aperio-style files that openslide and tifffile read, with known lesions.

Slides here are small (4096 x 3072, lesions 200-500 µm at 0.5 µm/px), written
once per module; the memory test writes a 16k x 16k slide in a subprocess.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

openslide = pytest.importorskip("openslide")
tifffile = pytest.importorskip("tifffile")

from ats_wsi.data.synthetic import (  # noqa: E402
    _render,
    aperio_description,
    load_lesions,
    load_synthetic_slide,
    make_slide_set,
    write_synthetic_slide,
)
from ats_wsi.errors import AtsError, GroundTruthError  # noqa: E402

W, H = 4096, 3072


@pytest.fixture(scope="module")
def positive(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "positive.svs"
    return write_synthetic_slide(path, W, H, n_lesions=2, n_decoys=2, seed=3)


@pytest.fixture(scope="module")
def negative(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "negative.svs"
    return write_synthetic_slide(path, W, H, n_lesions=0, n_decoys=2, seed=4)


def _region(slide, box, level=0, size=None):
    """RGB float (rows, cols, 3) of the centre of a level-0 box (x, y, w, h), read at `level`."""
    x, y, w, h = box
    ds = slide.level_downsamples[level]
    if size is None:
        size = (int(w / 2 / ds), int(h / 2 / ds))
    x0, y0 = int(x + w / 2 - size[0] * ds / 2), int(y + h / 2 - size[1] * ds / 2)
    return np.asarray(slide.read_region((x0, y0), level, size).convert("RGB"), np.float64)


def _benign_tissue(slide, truth, n=8, size=256):
    """RGB float (n * size, size, 3) of level-0 tissue patches far from every spot (found on level 1)."""
    ds = slide.level_downsamples[1]
    low = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"))
    tissue = low.mean(axis=2) < 225
    k = int(size / ds)
    patches = []
    for r in range(0, tissue.shape[0] - k, k):
        for c in range(0, tissue.shape[1] - k, k):
            x, y = int(c * ds), int(r * ds)
            far = all(x + size + 64 < bx or bx + bw + 64 < x or y + size + 64 < by or by + bh + 64 < y
                      for bx, by, bw, bh in truth.lesions + truth.decoys)
            if far and tissue[r:r + k, c:c + k].mean() > 0.9:
                patches.append(np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB"), np.float64))
    assert len(patches) >= 3, "not enough benign tissue"
    pick = np.unique(np.linspace(0, len(patches) - 1, n).astype(int))  # spread over the slide
    return np.concatenate([patches[i] for i in pick])


# --------------------------------------------------------------------------- openslide


def test_openslide_reads_it_as_aperio_with_mpp_and_the_requested_pyramid(positive):
    with openslide.OpenSlide(str(positive.path)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.objective-power"]) == pytest.approx(20)
        assert slide.level_dimensions == ((W, H), (W // 4, H // 4))  # default: down to <= 1024 px
        assert slide.level_downsamples == pytest.approx((1.0, 4.0))
        assert slide.properties["openslide.level[0].tile-width"] == "256"
        assert "thumbnail" in slide.associated_images
        assert max(slide.associated_images["thumbnail"].size) <= 768
    assert positive.level_dimensions == [(W, H), (W // 4, H // 4)]


def test_pyramid_follows_downsample_and_n_levels(tmp_path):
    made = write_synthetic_slide(tmp_path / "s.svs", 2048, 1536, n_levels=4, downsample=2, tile_size=128,
                                 mpp=0.25, lesion_size_um=(50, 80), n_lesions=1, thumbnail=False)
    with openslide.OpenSlide(str(made.path)) as slide:
        assert slide.level_dimensions == ((2048, 1536), (1024, 768), (512, 384), (256, 192))
        assert slide.level_downsamples == pytest.approx((1, 2, 4, 8))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.objective-power"]) == pytest.approx(40)
        assert slide.properties["openslide.level[0].tile-width"] == "128"
        assert "thumbnail" not in slide.associated_images


def test_lesions_are_dark_textured_spots_inside_light_slides(positive):
    """Lesion centres are clearly darker than benign tissue; background (slide borders) is light."""
    with openslide.OpenSlide(str(positive.path)) as slide:
        assert len(positive.lesions) == 2 and positive.label == 1
        benign = _benign_tissue(slide, positive)
        for box in positive.lesions:
            lesion = _region(slide, box)
            # mean grey level: lesions ~170, benign tissue 190-215 (stated margin: 12)
            assert lesion.mean() < benign.mean() - 12, (box, lesion.mean(), benign.mean())
            # more purple than pink: blue over green is higher in haematoxylin-rich tissue
            assert (lesion[..., 2] - lesion[..., 1]).mean() > 30
        corner = np.asarray(slide.read_region((0, 0), 0, (96, 96)).convert("RGB"))
        assert corner.min() >= 215 and corner.mean() > 230


def test_lesion_and_decoy_look_alike_at_low_resolution_but_not_at_level_0(positive):
    """At low resolution a lesion and a decoy have about the same tone; at level 0 their nuclei differ."""
    with openslide.OpenSlide(str(positive.path)) as slide:
        tones = [_region(slide, b, level=1).mean(axis=(0, 1)) for b in positive.lesions + positive.decoys]
        lesion_tone, decoy_tone = np.mean(tones[:2], axis=0), np.mean(tones[2:], axis=0)
        # stated margin: mean RGB within 12 grey levels per channel (they differ from benign tissue by > 12)
        assert np.abs(lesion_tone - decoy_tone).max() < 12, (lesion_tone, decoy_tone)
        # at level 0 the decoy's small nuclei are uniformly dark, the lesion's large nuclei are
        # vesicular (pale centre, dark rim): decoys have >= 1.5x more very dark pixels (seen: 2-3x)
        very_dark = [(_region(slide, b).mean(axis=2) < 110).mean() for b in positive.lesions + positive.decoys]
        assert min(very_dark[2:]) > 1.5 * max(very_dark[:2]), very_dark


def test_lower_levels_look_like_a_downsample_of_level_0(positive):
    """Level 1 is rendered on its own, yet matches level 0 box-averaged by 4 (JPEG and edges aside)."""
    x, y, w, h = positive.lesions[0]
    x0, y0 = (x + w // 2 - 512) // 4 * 4, (y + h // 2 - 512) // 4 * 4  # a lesion and the tissue around it
    with openslide.OpenSlide(str(positive.path)) as slide:
        high = np.asarray(slide.read_region((x0, y0), 0, (1024, 1024)).convert("RGB"), np.float64)
        low = np.asarray(slide.read_region((x0, y0), 1, (256, 256)).convert("RGB"), np.float64)
    reduced = high.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    # per pixel, JPEG alone differs by ~6.5 on average at level 1 (rendered pixels agree to ~0.3)
    assert np.abs(reduced - low).mean() < 10, np.abs(reduced - low).mean()
    # 8 x 8 blocks of level 1 average the JPEG error out: stated margin 3 grey levels
    blocks = np.abs(reduced.reshape(32, 8, 32, 8, 3).mean(axis=(1, 3)) - low.reshape(32, 8, 32, 8, 3).mean(axis=(1, 3)))
    assert blocks.mean() < 3, blocks.mean()


# --------------------------------------------------------------------------- tifffile, files


def test_tifffile_reads_every_tile_of_every_page(positive):
    with tifffile.TiffFile(positive.path) as tif:
        assert tif.is_svs
        pages = list(tif.pages)
        tiled = [p for p in pages if p.is_tiled]
        assert [(p.imagewidth, p.imagelength) for p in tiled] == positive.level_dimensions
        assert len(pages) == len(tiled) + 1 and not pages[1].is_tiled  # Aperio order: level 0, thumbnail, ...
        assert pages[0].description.startswith("Aperio Image Library")
        assert "|MPP = 0.5|" in pages[0].description and "|AppMag = 20|" in pages[0].description
        size = os.path.getsize(positive.path)
        for page in tiled:
            assert all(n > 0 for n in page.databytecounts)
            assert all(o + n <= size for o, n in zip(page.dataoffsets, page.databytecounts))
            image = page.asarray()  # decodes every tile; a missing or broken tile raises
            assert image.shape == (page.imagelength, page.imagewidth, 3)
        level1 = tiled[1].asarray()
    with openslide.OpenSlide(str(positive.path)) as slide:
        same = np.asarray(slide.read_region((0, 0), 1, positive.level_dimensions[1]).convert("RGB"))
    assert np.abs(same.astype(int) - level1).mean() < 1.0  # two JPEG decoders, same tiles


def test_ground_truth_json_is_written_beside_the_slide(positive, negative):
    truth = json.loads(positive.path.with_name("positive.lesions.json").read_text())
    assert truth["label"] == 1 and truth["mpp"] == 0.5 and truth["seed"] == 3
    assert [tuple(b) for b in truth["lesions"]] == positive.lesions
    assert load_lesions(positive.path) == positive.lesions
    assert load_lesions(positive.path.with_name("positive.lesions.json")) == positive.lesions
    assert load_synthetic_slide(positive.path) == positive
    assert load_lesions(negative.path) == [] and negative.label == 0 and len(negative.decoys) == 2
    for x, y, w, h in positive.lesions + positive.decoys:
        assert 0 < x and 0 < y and x + w < W and y + h < H
        assert 0.8 * 400 <= max(w, h) <= 1.3 * 1000 + 12  # 200-500 µm at 0.5 µm/px, irregular outline
    assert 0.25 < positive.tissue_fraction < 0.65


def test_a_failing_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    target = tmp_path / "broken.svs"
    with pytest.raises(ValueError, match="tile_size"):
        write_synthetic_slide(target, 1024, 1024, tile_size=250)
    with pytest.raises(ValueError, match="cannot fit"):
        write_synthetic_slide(target, 1024, 1024, n_lesions=3, lesion_size_um=(400, 500))
    assert list(tmp_path.iterdir()) == []

    calls = {"n": 0}
    render = _render._Renderer.render

    def render_then_fail(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 20:  # midway through level 0
            raise RuntimeError("disk on fire")
        return render(self, *args, **kw)

    monkeypatch.setattr(_render._Renderer, "render", render_then_fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_synthetic_slide(target, 2048, 2048, n_lesions=1, lesion_size_um=(100, 200))
    assert calls["n"] == 20
    assert list(tmp_path.iterdir()) == []

    # a failed rewrite leaves the previous complete file untouched
    monkeypatch.setattr(_render._Renderer, "render", render)
    write_synthetic_slide(target, 2048, 1536, seed=1, lesion_size_um=(50, 100))
    before = target.read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(_render._Renderer, "render", render_then_fail)
    with pytest.raises(RuntimeError):
        write_synthetic_slide(target, 2048, 1536, seed=2, lesion_size_um=(50, 100))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.lesions.json", "broken.svs"]


def test_a_broken_ground_truth_raises_a_typed_error_naming_the_file(tmp_path):
    truth = tmp_path / "s.lesions.json"
    for text in ("{not json", '{"file": "s.svs"}', '{"file": "s.svs", "width": "wide"}'):
        truth.write_text(text)
        with pytest.raises(GroundTruthError, match="s.lesions.json") as err:
            load_synthetic_slide(tmp_path / "s.svs")
        assert isinstance(err.value, AtsError) and isinstance(err.value, ValueError)
        assert err.value.path == str(truth)
    with pytest.raises(FileNotFoundError):
        load_lesions(tmp_path / "other.svs")


def test_aperio_description_is_what_openslide_parses():
    text = aperio_description(4000, 2400, mpp=0.499, tile=240, quality=90, app_mag=20, fields={"User": "x"})
    header, *pairs = text.split("|")
    assert header == "Aperio Image Library v12.0.15 \r\n4000x2400 [0,0 4000x2400] (240x240) JPEG/RGB Q=90"
    fields = dict(p.split(" = ") for p in pairs)
    assert fields["MPP"] == "0.499" and fields["AppMag"] == "20" and fields["User"] == "x"
    assert aperio_description(100, 80, mpp=0.25).count("|AppMag = 40|") == 1
    assert "MPP" not in aperio_description(100, 80) and "AppMag" not in aperio_description(100, 80)
    assert aperio_description(100, 80, tile=16, quality=70, page="level", size=(25, 20)).endswith(
        "(16x16) -> 25x20 JPEG/RGB Q=70")
    assert aperio_description(100, 80, page="thumbnail", size=(10, 8)).endswith("\r\n100x80 -> 10x8 - ")
    with pytest.raises(ValueError, match="size"):
        aperio_description(100, 80, page="level")


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different_lesions(tmp_path):
    kw = dict(n_lesions=2, n_decoys=1, lesion_size_um=(60, 120), seed=11)
    a = write_synthetic_slide(tmp_path / "a.svs", 2048, 1536, **kw)
    b = write_synthetic_slide(tmp_path / "b.svs", 2048, 1536, **kw)
    c = write_synthetic_slide(tmp_path / "c.svs", 2048, 1536, **dict(kw, seed=12))
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.lesions == b.lesions and a.decoys == b.decoys
    assert a.lesions != c.lesions
    assert a.path.read_bytes() != c.path.read_bytes()


# --------------------------------------------------------------------------- slide sets


def test_make_slide_set_writes_a_balanced_split_manifest_and_skips_existing_slides(tmp_path):
    kw = dict(n_slides=8, positive_fraction=0.5, size=((1536, 1024), (2048, 1536)), seed=5,
              val_fraction=0.25, test_fraction=0.25, lesion_size_um=(50, 100))
    manifest = make_slide_set(tmp_path, **kw)
    assert manifest == tmp_path / "manifest.csv"
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "split"]
    assert len(rows) == 8
    labels = [int(r["label"]) for r in rows]
    assert sum(labels) == 4
    for label in (0, 1):  # stratified: 1 val and 1 test of each label
        splits = sorted(r["split"] for r in rows if int(r["label"]) == label)
        assert splits == ["test", "train", "train", "val"]
    for r in rows:
        truth = load_synthetic_slide(r["path"])
        assert Path(r["path"]).is_file() and Path(r["path"]).is_absolute()
        assert truth.label == int(r["label"]) == int(len(truth.lesions) > 0)
        assert 2 <= len(truth.lesions) + len(truth.decoys) <= 4
        assert 1536 <= truth.width <= 2048 and truth.width % 16 == 0

    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("slide_*")}
    text = manifest.read_text()
    assert make_slide_set(tmp_path, **kw) == manifest
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("slide_*")} == mtimes
    assert manifest.read_text() == text

    # a slide whose ground truth records other parameters is written again, and only that one
    first = Path(rows[0]["path"])
    truth_path = first.with_name(first.stem + ".lesions.json")
    truth = json.loads(truth_path.read_text())
    truth["params"]["jpeg_quality"] = 70
    truth_path.write_text(json.dumps(truth))
    make_slide_set(tmp_path, **kw)
    changed = {p for p in tmp_path.glob("slide_*") if p.stat().st_mtime_ns != mtimes[p]}
    assert changed == {first, truth_path}
    assert json.loads(truth_path.read_text())["params"]["jpeg_quality"] == 85


# --------------------------------------------------------------------------- memory


def test_memory_stays_bounded_for_a_16k_slide(tmp_path):
    """Writing 16k x 16k (a level-0 array would be 768 MB) grows RSS by < 300 MB.

    Measured in a fresh process: growth = peak RSS (VmHWM) minus RSS after the
    imports, so it counts the texture bank, layout grids, caches and tifffile's
    buffers, and not what other modules of the package import. (ru_maxrss
    would not do: Linux carries it over from the forking pytest process.)
    Seen: ~215 MB for 16k x 16k, ~320 MB for 80k x 80k.
    """
    code = textwrap.dedent(f"""
        from ats_wsi.data.synthetic import write_synthetic_slide
        def status_mb(key):
            for line in open('/proc/self/status'):
                if line.startswith(key + ':'):
                    return int(line.split()[1]) / 1024
        base = status_mb('VmRSS')
        write_synthetic_slide({str(tmp_path / 'big.svs')!r}, 16384, 16384, n_lesions=3, seed=1)
        print(base, status_mb('VmHWM'))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, peak = map(float, out.stdout.split())
    assert peak - base < 300, (base, peak)
    assert (tmp_path / "big.svs").stat().st_size > 10_000_000
