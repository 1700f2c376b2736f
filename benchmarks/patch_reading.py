"""Random patches from a slide: PatchReader against what a user would otherwise write.

For one slide written by libvips and one written by tifffile (through
``ats_wsi.data.write_synthetic_slide``), both 256 x 256 JPEG tiles, this
reads the same random level-0 patches with:

- ``openslide loop``: ``openslide.OpenSlide.read_region`` per patch, to RGB numpy;
- ``tifffile+zarr``: ``tifffile``'s ``aszarr`` store opened with zarr, one slice per patch;
- ``PatchReader w=1 / w=2``: ``ats_wsi.patches.PatchReader`` with 1 and 2
  decode threads, cold cache (``cache_bytes=0``), ``read(xy)`` per batch;
- ``floor``: decoding exactly the tiles the batch needs, once each, in one
  thread, with ``imagecodecs.jpeg8_decode`` on bytes from ``os.pread``
  (nothing else: no paste, no planning, no output buffer);
- ``tile-aligned PatchReader``: patches on the tile grid, one tile each
  (256 x 256 only), with the openslide loop on those same patches beside it.

The file is read into the page cache first, so every method is timed on
decoding, not on the disk. Each method runs ``--repeats`` times, interleaved
with the others; the table shows the best run (a shared, loaded machine
mostly adds noise upwards). Beside wall-clock rates it shows patches per
CPU-second of this process (all its threads): on a loaded machine that is
the fair measure of overhead against the floor, while the wall-clock columns
show what the 2 worker threads buy when cores are free.

Usage::

    .venv/bin/python benchmarks/patch_reading.py [--batches 4] [--n 64] [--repeats 3]

Slides are written once into ``benchmarks/_data/`` (git-ignored).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parent / "_data"
SIZE_WH = (20_000, 16_000)


# ----------------------------------------------------------------------------- slides


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


def tifffile_slide(path: Path, width: int, height: int) -> Path:
    """An Aperio-style JPEG pyramid written by tifffile (``write_synthetic_slide``)."""
    if not path.exists():
        from ats_wsi.data.synthetic import write_synthetic_slide

        write_synthetic_slide(path, width, height, tile_size=256, seed=7, n_lesions=2)
    return path


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


# ----------------------------------------------------------------------------- methods


class Clock:
    """Wall time and this process's CPU time (all threads) since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def openslide_loop(path, batches, p):
    import openslide

    osr = openslide.OpenSlide(str(path))  # a fresh handle: openslide's tile cache starts cold
    osr.read_region((0, 0), 0, (1, 1))  # warm-up (first-call costs), outside the clock, like for the others
    clock = Clock()
    for xy in batches:
        out = [np.asarray(osr.read_region((int(x), int(y)), 0, (p, p)))[:, :, :3] for x, y in xy]
    seconds = clock.stop()
    osr.close()
    assert out[0].shape == (p, p, 3)
    return seconds


def tifffile_zarr(path, batches, p):
    import tifffile
    import zarr

    store = tifffile.imread(str(path), aszarr=True, level=0)
    z = zarr.open(store, mode="r")
    z[:1, :1]
    clock = Clock()
    for xy in batches:
        out = [z[y:y + p, x:x + p] for x, y in xy.tolist()]
    seconds = clock.stop()
    store.close()
    assert out[0].shape == (p, p, 3)
    return seconds


def patch_reader(path, batches, p, workers):
    from ats_wsi.patches import PatchReader
    from ats_wsi.slide import open_slide

    with open_slide(path, backend="tifffile") as slide, \
            PatchReader(slide, 0, p, workers=workers, cache_bytes=0) as reader:
        reader.read([[0, 0], [slide.dimensions[0] // 2, 0]])  # threads started
        clock = Clock()
        for xy in batches:
            out = reader.read(xy)
        seconds = clock.stop()
    assert tuple(out.shape[1:]) == (3, p, p)
    return seconds


class Floor:
    """Decode exactly the needed tiles once, one thread, imagecodecs only."""

    def __init__(self, path):
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
        self.cols = -(-self.level_wh[0] // self.tile_wh[0])
        self.path = path

    def tiles(self, xy, p) -> list[int]:
        """Indices of the tiles under the patches (computed before the clock starts)."""
        from ats_wsi.patches.reader import plan_tiles

        plan = plan_tiles(xy, (p, p), self.tile_wh, self.level_wh)
        return (plan.tiles[:, 1] * self.cols + plan.tiles[:, 0]).tolist()

    def decode(self, index: int, fd: int) -> np.ndarray:
        import imagecodecs

        data = os.pread(fd, int(self.counts[index]), int(self.offsets[index]))
        return imagecodecs.jpeg8_decode(data, tables=self.tables, colorspace=self.colorspace,
                                        outcolorspace=self.outcolorspace)

    def __call__(self, batches, p):
        needed = [self.tiles(xy, p) for xy in batches]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            clock = Clock()
            for tiles in needed:
                for index in tiles:
                    self.decode(index, fd)
            seconds = clock.stop()
        finally:
            os.close(fd)
        return seconds

    def check(self, slide_path) -> None:
        """The floor's decode gives the slide's tile (so it measures the real work)."""
        from ats_wsi.slide import open_slide

        fd = os.open(self.path, os.O_RDONLY)
        try:
            with open_slide(slide_path, backend="tifffile") as slide:
                for index in (0, len(self.offsets) // 2 + 3):
                    col, row = index % self.cols, index // self.cols
                    ours = self.decode(index, fd)[: self.tile_wh[1], : self.tile_wh[0], :3]
                    assert np.array_equal(ours, slide.read_tile(0, col, row)), "floor decodes a different tile"
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- the table


def random_batches(rng, wh, p, n, count):
    w, h = wh
    return [np.stack([rng.integers(0, w - p + 1, n), rng.integers(0, h - p + 1, n)], axis=1) for _ in range(count)]


def aligned_batches(rng, wh, tile, n, count):
    cols, rows = wh[0] // tile, wh[1] // tile  # whole tiles only
    return [np.stack([rng.integers(0, cols, n) * tile, rng.integers(0, rows, n) * tile], axis=1)
            for _ in range(count)]


def measure(methods: dict, repeats: int) -> dict:
    """{name: (best wall seconds, best CPU seconds)} over ``repeats`` interleaved runs."""
    best = {name: (float("inf"), float("inf")) for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            wall, cpu = run()
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def table_rows(slide_name, path, p, args, rng, floor):
    import openslide

    wh = openslide.OpenSlide(str(path)).dimensions
    batches = random_batches(rng, wh, p, args.n, args.batches)
    methods = {
        "openslide loop": lambda: openslide_loop(path, batches, p),
        "tifffile+zarr": lambda: tifffile_zarr(path, batches, p),
        "PatchReader w=1": lambda: patch_reader(path, batches, p, 1),
        "PatchReader w=2": lambda: patch_reader(path, batches, p, 2),
        "floor (decode needed tiles once)": lambda: floor(batches, p),
    }
    aligned_names = []
    if p == floor.tile_wh[0]:
        aligned = aligned_batches(rng, wh, p, args.n, args.batches)
        aligned_names = ["openslide loop, tile-aligned", "tile-aligned PatchReader w=1",
                         "tile-aligned PatchReader w=2", "floor, tile-aligned"]
        methods.update(zip(aligned_names, [
            lambda: openslide_loop(path, aligned, p),
            lambda: patch_reader(path, aligned, p, 1),
            lambda: patch_reader(path, aligned, p, 2),
            lambda: floor(aligned, p),
        ]))
    seconds = measure(methods, args.repeats)
    n_total = args.n * args.batches
    ref_openslide = seconds["openslide loop"][0]
    tiles_per_patch = sum(len(floor.tiles(xy, p)) for xy in batches) / n_total
    rows = []
    for name, (wall, cpu) in seconds.items():
        floor_name = "floor, tile-aligned" if name in aligned_names else "floor (decode needed tiles once)"
        ref_wall, ref_cpu = seconds[floor_name]
        rate = n_total / wall
        rows.append((slide_name, f"{p}²", name, f"{rate:,.0f}", f"{rate * p * p * 3 / 1e6:,.1f}",
                     f"{ref_openslide / wall:.2f}", f"{ref_wall / wall:.2f}", f"{n_total / cpu:,.0f}",
                     f"{ref_cpu / cpu:.2f}"))
    return rows, tiles_per_patch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="patches per batch")
    parser.add_argument("--batches", type=int, default=4, help="batches per run (fresh random positions)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the best is shown")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 32], help="patch sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    DATA.mkdir(parents=True, exist_ok=True)
    w, h = SIZE_WH
    slides = {
        f"libvips {w}x{h}": vips_slide(DATA / f"vips_{w}x{h}.tif", w, h),
        f"tifffile {w}x{h}": tifffile_slide(DATA / f"synthetic_{w}x{h}.svs", w, h),
    }
    rng = np.random.default_rng(args.seed)
    rows, notes = [], []
    for name, path in slides.items():
        warm_page_cache(path)
        floor = Floor(path)
        floor.check(path)
        for p in args.sizes:
            r, tpp = table_rows(name, path, p, args, rng, floor)
            rows += r
            notes.append(f"{name}, {p}²: {tpp:.2f} tiles decoded per random patch")
    header = ("slide", "patch", "method", "patches/s", "MB/s", "× openslide loop", "× floor",
              "patches per CPU-s", "× floor (CPU)")
    print(f"{args.batches} batches x {args.n} random level-0 patches per run, best of {args.repeats}; "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("- × openslide loop: against the openslide loop on random patches of the same size and slide; "
          "× floor: against the floor of the same patches (random or tile-aligned); "
          "CPU-s: this process's CPU time, all threads (robust to a loaded machine; "
          "with 2 workers it counts both threads' work, not the speed-up).")
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
