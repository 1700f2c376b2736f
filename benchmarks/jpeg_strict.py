"""What strict JPEG decoding costs: tiles per second, strict against not.

Since issue 19 the tifffile backend decodes JPEG tiles with simplejpeg in
strict mode (libjpeg's corrupt-data warnings raise, as openslide does), where
it used tifffile's decoder (imagecodecs, warnings ignored). This decodes the
same tiles of one Aperio-style slide (256 x 256 tiles, RGB JPEG with
JPEGTables, like ``ats_wsi.data.write_synthetic_slide`` writes) three ways:

- ``imagecodecs``: ``TiffPage.decode`` (the old path, not strict);
- ``simplejpeg``: :func:`ats_wsi.slide._jpeg.decode_tile` with ``strict=False``;
- ``simplejpeg strict``: the same with ``strict=True`` (what reads do now);

in one thread, in interleaved rounds (one pass of each per round, the order
rotating), and prints the median tiles/s of each and its ratio to the old
path. A fourth row, ``read_tile``, is the whole new path (pread, strict
decode, crop) through ``Slide.read_tile``.

Usage::

    .venv/bin/python benchmarks/jpeg_strict.py [--tiles 256] [--rounds 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def _slide(path: str, tiles: int) -> None:
    from ats_wsi.data import write_synthetic_slide

    side = int(np.ceil(np.sqrt(tiles))) * 256
    write_synthetic_slide(path, side, side, seed=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    import tifffile

    from ats_wsi.slide import open_slide
    from ats_wsi.slide._jpeg import decode_tile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.svs")
        _slide(path, args.tiles)
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            fh = tif.filehandle
            data = []
            for off, cnt in zip(page.dataoffsets, page.databytecounts):
                fh.seek(off)
                data.append(fh.read(cnt))
            data = data[:args.tiles]
            tables, photometric, jfif = page.jpegtables, int(page.photometric), bool(page.is_jfif)
            decode = page.decode
            ref = decode(data[0], 0, jpegtables=tables)[0][0]
            assert np.array_equal(decode_tile(data[0], tables, photometric=photometric, samples=3, jfif=jfif), ref)
            slide = open_slide(path, backend="tifffile")
            cols, _ = slide.tile_grid(0)
            ways = {
                "imagecodecs (old, not strict)": lambda: [decode(d, i, jpegtables=tables) for i, d in enumerate(data)],
                "simplejpeg, not strict": lambda: [decode_tile(d, tables, photometric=photometric, samples=3,
                                                               jfif=jfif, strict=False) for d in data],
                "simplejpeg strict (new)": lambda: [decode_tile(d, tables, photometric=photometric, samples=3,
                                                                jfif=jfif) for d in data],
                "read_tile (new path, whole)": lambda: [slide.read_tile(0, i % cols, i // cols)
                                                        for i in range(len(data))],
            }
            names = list(ways)
            times = {n: [] for n in names}
            for r in range(args.rounds):
                for n in names[r % len(names):] + names[:r % len(names)]:
                    t = time.perf_counter()
                    ways[n]()
                    times[n].append(time.perf_counter() - t)
            slide.close()
    rate = {n: len(data) / statistics.median(times[n]) for n in names}
    base = rate[names[0]]
    print(f"{len(data)} tiles of 256 x 256 (RGB JPEG, JPEGTables), {args.rounds} interleaved rounds, one thread")
    print("| decoder | tiles/s (median) | vs imagecodecs |")
    print("|---|---:|---:|")
    for n in names:
        print(f"| {n} | {rate[n]:,.0f} | {rate[n] / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
