"""Random patches from a slide: PatchReader against the readers a user could pick instead.

One slide, written once by libvips (20000 x 16000, 256 x 256 JPEG tiles, Q85,
a tissue-like texture), read in three ways: random 256² level-0 patches,
tile-aligned 256² patches (one tile each), and 224² patches at 0.5 µm/px from
level 0 at 0.25 µm/px (the µm/px path: a 448² region, 2 x 2 block mean).
Every method reads the same patches; each run draws fresh random positions
(the same for all methods), methods run interleaved in rotating order, and
the table shows the median of ``--repeats`` runs. Page cache warm, every
method's own tile cache off.

- ``openslide loop``: ``OpenSlide.read_region`` per patch, RGBA -> RGB numpy.
- ``tiffslide loop``: ``TiffSlide.read_region(..., as_array=True)`` per patch.
- ``fastslide loop``: ``FastSlide.read_region(...).numpy()`` per patch (copied);
  fastslide decodes on more than one core by itself.
- ``cuCIM loop``: ``CuImage.read_region(loc, size, 0)`` per patch (CPU, one thread).
- ``cuCIM batched``: ``CuImage.read_region(locations, size, 0, num_workers=2)``,
  each patch copied (its iterator reuses buffers).
- ``PatchReader (whole tiles)``: the previous path, ``crop=False``: each needed
  tile decoded whole (simplejpeg, strict) and pasted.
- ``PatchReader w=1 / w=2``: the new path: each needed tile decoded once, only
  the box the batch needs (``ats_wsi_jpeg``: libjpeg-turbo cropped decode,
  strict, rest of the tile entropy-checked), straight into the batch; cold:
  no tile checked before the run (the checks of earlier runs forgotten).
- ``PatchReader w=1, tiles checked before``: the same, every needed tile read
  once before the clock (the rest of a tile is checked once per open slide:
  what later epochs over the same slides get).
- ``floor``: the cheapest decode of exactly the pixels needed: for each needed
  tile, ``os.pread`` + ``ats_wsi_jpeg.decode_into(..., verify=False)`` of the
  union box of its patches (cropped columns, rows above skipped, stops after
  the last needed row, no check of the rest), one thread, into one reused
  buffer; plans made before the clock.
- ``floor, whole tiles (old floor)``: the needed tiles decoded whole once
  with ``imagecodecs.jpeg8_decode``, output discarded.

For the µm/px rows the other readers read the 448² region and reduce it with
the same exact 2 x 2 block mean PatchReader uses (inside the clock).

Columns: patches/s (wall), × openslide loop and × floor (wall, same kind of
patch), CPU-s per wall-s (this process, all threads), mean absolute
difference to openslide's pixels (first batch of the first run).

Usage::

    .venv/bin/pip install -r benchmarks/requirements.txt   # tiffslide, fastslide, cucim-cu12 (optional)
    .venv/bin/python benchmarks/patch_reading.py --n 200 --batches 2 --repeats 5

Readers not installed are left out of the table. Slides are written once into
``benchmarks/_data/`` (git-ignored).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parent / "_data"
SIZE_WH = (20_000, 16_000)
SLIDE_MPP = 0.25  # given to every reader that needs it (the libvips file says 5 µm/px)
MPP_WH = (24_000, 20_000)  # the µm/px slide


def vips_slide(path: Path, width: int, height: int) -> Path:
    """A tissue-like JPEG pyramid written by libvips (perlin blobs, worley nuclei, noise)."""
    if path.exists():
        return path
    import pyvips

    tissue = pyvips.Image.perlin(width // 32, height // 32, cell_size=40, seed=1).resize(32, kernel="linear") > 0
    nuclei = pyvips.Image.worley(width, height, cell_size=16, seed=2) < 2.5
    shade = pyvips.Image.perlin(width // 8, height // 8, cell_size=16, seed=4).resize(8, kernel="linear")
    noise = pyvips.Image.gaussnoise(width, height, sigma=8, mean=0, seed=3)
    black = pyvips.Image.black(width, height, bands=3)
    glass = black + [238, 236, 241]
    stroma = (shade * 0.3 + 0.9) * black.new_from_image([226, 142, 188])
    haem = black.new_from_image([96, 58, 150])
    img = (tissue.ifthenelse(nuclei.ifthenelse(haem, stroma), glass) + noise).cast("uchar")
    tmp = path.with_suffix(".tmp.tif")
    img.copy(interpretation="srgb").tiffsave(
        str(tmp), tile=True, pyramid=True, compression="jpeg", Q=85, tile_width=256, tile_height=256,
        xres=2000.0, yres=2000.0, resunit="cm", bigtiff=True)
    tmp.rename(path)
    return path


def mpp_slide(width: int, height: int) -> Path:
    """A 40x-style slide: 0.25 µm/px, levels 1, 4, 16 (no 0.5 µm/px level), Aperio-style JPEG Q85,
    256² tiles, written by ``write_synthetic_slide`` (the slide of ``benchmarks/mpp_patches.py``)."""
    from mpp_patches import slide_path

    return slide_path(width, height)


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


# ----------------------------------------------------------------------------- methods
# Each method: made (files opened) before the clock; ``read(xy)`` returns uint8 [n, p, p, 3].


class Kind:
    """What is read: patch size ``p`` out of a ``region`` of level 0 (``factor`` = region / p)."""

    def __init__(self, name: str, p: int, factor: int = 1, path: Path | None = None, wh=SIZE_WH):
        self.name, self.p, self.factor, self.region = name, p, factor, p * factor
        self.path, self.wh = path, wh

    def finish(self, regions: list) -> np.ndarray:
        """Stack the regions read; reduce them by the exact block mean PatchReader uses."""
        from ats_wsi.patches._resample import block_mean

        stack = np.stack(regions)
        if self.factor == 1:
            return stack
        out = np.empty((len(stack), self.p, self.p, 3), np.uint8)
        block_mean(stack, self.factor, out)
        return out


class OpenslideLoop:
    def __init__(self, path, kind):
        import openslide

        self.osr, self.kind = openslide.OpenSlide(str(path)), kind
        self.osr.set_cache(openslide.OpenSlideCache(0))
        self.osr.read_region((0, 0), 0, (1, 1))

    def read(self, xy):
        s = self.kind.region
        return self.kind.finish([np.asarray(self.osr.read_region((x, y), 0, (s, s)))[:, :, :3] for x, y in xy])


class TiffslideLoop:
    def __init__(self, path, kind):
        import tiffslide

        self.ts, self.kind = tiffslide.TiffSlide(str(path)), kind
        self.ts.read_region((0, 0), 0, (1, 1), as_array=True)

    def read(self, xy):
        s = self.kind.region
        return self.kind.finish([self.ts.read_region((x, y), 0, (s, s), as_array=True)[:, :, :3] for x, y in xy])


class FastslideLoop:
    def __init__(self, path, kind):
        import fastslide

        self.fs, self.kind = fastslide.FastSlide.from_file_path(str(path), cache=None), kind
        self.fs.read_region((0, 0), 0, (1, 1)).numpy()

    def read(self, xy):
        s = self.kind.region
        return self.kind.finish([np.array(self.fs.read_region((x, y), 0, (s, s)).numpy()[:, :, :3]) for x, y in xy])


class CucimLoop:
    def __init__(self, path, kind):
        from cucim import CuImage

        CuImage.cache("nocache")
        self.img, self.kind = CuImage(str(path)), kind
        np.asarray(self.img.read_region((0, 0), (1, 1), 0))

    def read(self, xy):
        s = self.kind.region
        return self.kind.finish([np.asarray(self.img.read_region((x, y), (s, s), 0))[:, :, :3] for x, y in xy])


class CucimBatched(CucimLoop):
    workers = 2

    def read(self, xy):
        s = self.kind.region
        it = self.img.read_region(xy, (s, s), 0, num_workers=self.workers)
        return self.kind.finish([np.array(patch)[:, :, :3] for patch in it])  # np.array copies


class Reader:
    """PatchReader. Cold (default): every run starts with no tile checked to its end (the marks of
    ``TiffTiles.forget_verified`` before the clock), as on a slide opened for this read.
    ``warm``: the run's batches were read once before the clock, so every needed tile is checked."""

    def __init__(self, path, kind, workers, crop=True, warm=False):
        self.warm = warm
        from ats_wsi.patches import PatchReader
        from ats_wsi.slide import open_slide

        self.slide = open_slide(path, backend="tifffile", mpp=SLIDE_MPP)
        mpp = None if kind.factor == 1 else SLIDE_MPP * kind.factor
        self.reader = PatchReader(self.slide, None if mpp else 0, kind.p, mpp=mpp, workers=workers,
                                  cache_bytes=0, crop=crop)
        assert self.reader.crop == crop, "the ats_wsi_jpeg extension is not installed"
        self.reader.read([[0, 0], [kind.wh[0] // 2, 0]])  # threads started

    def prepare(self, xy) -> None:
        if self.warm:
            self.reader.read(xy)
        else:
            for tiles in self.slide.tiff_levels:
                tiles.forget_verified()

    def read(self, xy):
        return self.reader.read(xy).permute(0, 2, 3, 1).numpy()


class Floor:
    """Cropped decode of each needed tile's union box once (ats_wsi_jpeg, no check past the last row)."""

    whole = False

    def __init__(self, path, kind):
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            page = tif.series[0].levels[0].pages[0]
            self.offsets = np.asarray(page.dataoffsets, np.int64)
            self.counts = np.asarray(page.databytecounts, np.int64)
            self.tables = page.jpegtables
            self.colorspace, self.outcolorspace = tifffile.tifffile.jpeg_decode_colorspace(
                page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
            self.tile_wh = (page.tilewidth, page.tilelength)
            self.level_wh = (page.imagewidth, page.imagelength)
            self.rgb = page.photometric == 2 and page.samplesperpixel == 3 and not page.is_jfif
        self.cols = -(-self.level_wh[0] // self.tile_wh[0])
        self.kind, self.fd, self.plans = kind, os.open(path, os.O_RDONLY), {}
        self.out = np.empty((1, kind.region, kind.region, 3), np.uint8)

    def prepare(self, xy) -> None:
        """The plan (outside the clock): which tiles, which boxes."""
        from ats_wsi.patches.reader import plan_tiles

        plan = plan_tiles(xy, (self.kind.region,) * 2, self.tile_wh, self.level_wh)
        index = (plan.tiles[:, 1] * self.cols + plan.tiles[:, 0]).tolist()
        pairs, starts = plan.pairs.tolist(), plan.starts.tolist()
        jobs = [(int(self.offsets[t]), int(self.counts[t]), pairs[starts[k]:starts[k + 1]]) for k, t in enumerate(index)]
        if len(self.out) < len(xy):
            self.out = np.empty((len(xy), self.kind.region, self.kind.region, 3), np.uint8)
        self.plans[id(xy)] = jobs

    def tiles(self, xy) -> int:
        return len(self.plans[id(xy)])

    def read(self, xy):
        import ats_wsi_jpeg

        fd, tables, out = self.fd, self.tables, self.out
        for offset, count, pairs in self.plans[id(xy)]:
            ats_wsi_jpeg.decode_into(os.pread(fd, count, offset), tables, self.rgb, out, pairs, verify=False)
        return None


class WholeFloor(Floor):
    """The previous floor: each needed tile decoded whole once with imagecodecs, output discarded."""

    def read(self, xy):
        import imagecodecs

        fd = self.fd
        for offset, count, _ in self.plans[id(xy)]:
            imagecodecs.jpeg8_decode(os.pread(fd, count, offset), tables=self.tables, colorspace=self.colorspace,
                                     outcolorspace=self.outcolorspace)
        return None


def methods_for(path, kind):
    """name -> factory, for the readers installed."""
    import importlib.util

    have = {m: importlib.util.find_spec(m) is not None for m in ("tiffslide", "fastslide", "cucim", "ats_wsi_jpeg")}
    out = {"openslide loop": lambda: OpenslideLoop(path, kind)}
    if have["tiffslide"]:
        out["tiffslide loop"] = lambda: TiffslideLoop(path, kind)
    if have["fastslide"]:
        out["fastslide loop"] = lambda: FastslideLoop(path, kind)
    if have["cucim"]:
        out["cuCIM loop (1 thread)"] = lambda: CucimLoop(path, kind)
        out["cuCIM batched (num_workers=2)"] = lambda: CucimBatched(path, kind)
    out["PatchReader, whole tiles (old), w=1"] = lambda: Reader(path, kind, 1, crop=False)
    if have["ats_wsi_jpeg"]:
        out["PatchReader w=1"] = lambda: Reader(path, kind, 1)
        out["PatchReader w=2"] = lambda: Reader(path, kind, 2)
        out["PatchReader w=1, tiles checked before"] = lambda: Reader(path, kind, 1, warm=True)
        out["floor (cropped decode of the needed boxes)"] = lambda: Floor(path, kind)
    out["floor, whole tiles (old floor)"] = lambda: WholeFloor(path, kind)
    return out


# ----------------------------------------------------------------------------- the table


def positions(rng, kind, n, aligned: bool) -> np.ndarray:
    w, h = kind.wh
    if aligned:
        return np.stack([rng.integers(0, w // 256, n) * 256, rng.integers(0, h // 256, n) * 256], axis=1)
    return np.stack([rng.integers(0, w - kind.region + 1, n), rng.integers(0, h - kind.region + 1, n)], axis=1)


def run_kind(kind, aligned, args, rng):
    path = kind.path
    factories = methods_for(path, kind)
    made = {name: make() for name, make in factories.items()}
    names = list(made)
    walls = {name: [] for name in names}
    cpus = {name: [] for name in names}
    first, tiles = {}, 0
    for rep in range(args.repeats):
        batches = [positions(rng, kind, args.n, aligned) for _ in range(args.batches)]
        for m in made.values():
            if isinstance(m, (Floor, Reader)):
                for xy in batches:
                    m.prepare(xy)
        tiles += sum(made[names[-1]].tiles(xy) for xy in batches)
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            m = made[name]
            wall, cpu = time.perf_counter(), time.process_time()
            for b, xy in enumerate(batches):
                got = m.read(xy.tolist() if not isinstance(m, (Reader, Floor)) else xy)
                if rep == 0 and b == 0:
                    first[name] = got
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    n_total = args.n * args.batches
    ref = first["openslide loop"].astype(np.int16)
    wall = {name: statistics.median(walls[name]) for name in names}
    floor = "floor (cropped decode of the needed boxes)" if "floor (cropped decode of the needed boxes)" in wall \
        else "floor, whole tiles (old floor)"
    rows = []
    for name in names:
        load = statistics.median(c / w for c, w in zip(cpus[name], walls[name]))
        diff = "" if first[name] is None else f"{np.abs(first[name].astype(np.int16) - ref).mean():.3f}"
        rows.append((kind.name, name, f"{n_total / wall[name]:,.0f}", f"{wall['openslide loop'] / wall[name]:.2f}",
                     f"{wall[floor] / wall[name]:.2f}", f"{load:.2f}", diff))
    return rows, tiles / (args.repeats * n_total)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="patches per batch")
    parser.add_argument("--batches", type=int, default=2, help="batches per run (fresh random positions)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per method; the median is shown")
    parser.add_argument("--kinds", nargs="+", default=["random", "aligned", "mpp"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    DATA.mkdir(parents=True, exist_ok=True)
    w, h = SIZE_WH
    path = vips_slide(DATA / f"vips_{w}x{h}.tif", w, h)
    mpp_path = mpp_slide(*MPP_WH)
    warm_page_cache(path)
    warm_page_cache(mpp_path)
    rng = np.random.default_rng(args.seed)
    kinds = {"random": (Kind("random 256²", 256, path=path), False),
             "aligned": (Kind("tile-aligned 256²", 256, path=path), True),
             "mpp": (Kind("224² at 0.5 µm/px (448² at 0.25), µm/px slide", 224, 2, mpp_path, MPP_WH), False)}
    load0 = os.getloadavg()[0]
    rows, notes = [], []
    for key in args.kinds:
        kind, aligned = kinds[key]
        r, tpp = run_kind(kind, aligned, args, rng)
        rows += r
        notes.append(f"{kind.name}: {tpp:.2f} tiles per patch")
    header = ("patches", "method", "patches/s", "× openslide", "× floor", "CPU-s per wall-s",
              "mean abs diff to openslide")
    print(f"libvips {w}x{h} JPEG (256² tiles, Q85; the µm/px rows: write_synthetic_slide {MPP_WH[0]}x{MPP_WH[1]}, "
          f"0.25 µm/px, levels 1/4/16); {args.batches} batches x {args.n} patches per run, median of "
          f"{args.repeats} interleaved runs; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
