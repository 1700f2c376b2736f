"""What the zoom reads: pixels decoded, seconds and memory of one ZoomSampler pass, by slide size.

One pass: the low view at 8 µm/px (a pyramid level), a small stage-1 net, ``n1`` regions of
``zoom_size`` µm read at 2 µm/px, a small stage-2 net over them, ``n2`` patches of 128 px
at 0.5 µm/px per region, a small feature net, the nested estimator. Against it, what a
stage-2 net run over the WHOLE slide at 2 µm/px would have to decode first (the whole level
at 2 µm/px; the net's own cost comes on top).

Pixels decoded are ``PatchReader.stats.pixels_read`` at the level read, with no tile cache:
whole tiles, or only the part of each JPEG tile a read needs where the optional
``ats_wsi_jpeg`` extension crops the decode. "RSS +MB" is the growth of the process's peak
RSS (``ru_maxrss``) during the passes, after the imports and the low view.

Then the same slide through ``SlideClassifier.predict`` of a two-stage config (the nets
``ats-wsi train`` builds with its defaults, untrained; its stage-1 map streamed from the low view tile by tile,
as ``ats-wsi predict`` runs it), each in a process of its own: seconds and the growth of peak
RSS over the whole prediction (the low view included, after the imports and the model).

Usage::

    .venv/bin/python benchmarks/zoom_reads.py [--sizes 10000 20000] [--regions 8] [--patches 8]

Slides are written once into ``benchmarks/_data/`` (git-ignored) by
``ats_wsi.data.write_synthetic_slide`` (0.5 µm/px, levels 1, 4, 16, 64).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ats_wsi.data.synthetic import write_synthetic_slide
from ats_wsi.patches.zoom_source import ZoomSource
from ats_wsi.slide import open_slide
from ats_wsi.zoom import ZoomSampler

DATA = Path(__file__).resolve().parent / "_data"


def _slide(size: int) -> Path:
    path = DATA / f"zoom_{size}.svs"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        write_synthetic_slide(path, size, size, mpp=0.5, seed=size, n_lesions=1)
    return path


def _nets():
    torch.manual_seed(0)
    stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 4, stride=4))
    stage2 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 16, stride=16))
    features = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return stage1, stage2, features


def measure(size: int, n1: int, n2: int, zoom_size: float) -> dict:
    with open_slide(_slide(size)) as slide:
        level = slide.get_best_level_for_downsample(16.0)
        low = torch.from_numpy(slide.read_level(level)).permute(2, 0, 1)[None].float() / 255
        ds = float(slide.level_downsamples[level])
        source = ZoomSource([slide], low_downsample=ds, zoom_mpp=2.0, zoom_size=zoom_size, patch_mpp=0.5,
                            patch_size=128, cache_bytes=0)
        model = ZoomSampler(*_nets(), n_regions=n1, n_patches=n2).eval()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for seed in range(3):
            start = time.perf_counter()
            with torch.no_grad():
                model(low, source, generator=torch.Generator().manual_seed(seed))
            times.append(time.perf_counter() - start)
        regions, patches = source.region_readers[0], source.patch_readers[0]
        w, h = slide.dimensions
        whole = round(w / regions.downsample) * round(h / regions.downsample)
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        row = dict(size=size, low=tuple(low.shape[-2:]), seconds=sorted(times)[1],
                   region_px=regions.stats.pixels_read / 3, patch_px=patches.stats.pixels_read / 3,  # 3 passes
                   whole_zoom_px=whole, rss_growth_mb=growth)
        source.close()
        return row


def measure_predict(size: int, n1: int, n2: int, zoom_size: float) -> dict:
    """One ``SlideClassifier.predict`` of a two-stage model (streamed stage 1): seconds, RSS growth."""
    from ats_wsi.classifier import ModelConfig, build_model
    from ats_wsi.cli.train import FEATURE_DEFAULTS, MODEL_DEFAULTS

    torch.manual_seed(0)  # the nets `ats-wsi train` builds (its attention net pools 4 x 4 pixels a cell)
    model = build_model(ModelConfig(**{**MODEL_DEFAULTS, **FEATURE_DEFAULTS, "low_downsample": None, "n_patches": n2,
                                       "zoom_mpp": 2.0, "zoom_regions": n1, "zoom_size": zoom_size})).eval()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    pred = model.predict(_slide(size), seed=0)
    seconds = time.perf_counter() - start
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return dict(size=size, map=tuple(pred.attention.shape), seconds=seconds, rss_growth_mb=growth,
                level0_px=pred.pixels_read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000])
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--zoom-size", type=float, default=512.0, help="region side in µm")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process measuring one size
    parser.add_argument("--one-predict", type=int, help=argparse.SUPPRESS)  # ... one predict of one size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.regions, args.patches, args.zoom_size)))
        return
    if args.one_predict is not None:
        print(json.dumps(measure_predict(args.one_predict, args.regions, args.patches, args.zoom_size)))
        return
    print(f"n1 = {args.regions} regions of {args.zoom_size:g} µm at 2 µm/px, n2 = {args.patches} patches "
          f"of 128 px at 0.5 µm/px per region; per pass (median of 3):")
    print(f"{'slide':>13} {'low view':>13} {'s/pass':>7} {'region px':>10} {'patch px':>9} "
          f"{'whole @2µm':>11} {'ratio':>6} {'RSS +MB':>8}")
    for size in args.sizes:  # each size in its own process: its peak RSS is its own
        _slide(size)
        child = subprocess.run([sys.executable, __file__, "--one", str(size), "--regions", str(args.regions),
                                "--patches", str(args.patches), "--zoom-size", str(args.zoom_size)],
                               check=True, capture_output=True, text=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{size:>6} x {size:<6d}{str(tuple(r['low'])):>13} {r['seconds']:7.3f} {r['region_px']:10.3g} "
              f"{r['patch_px']:9.3g} {r['whole_zoom_px']:11.3g} {r['whole_zoom_px'] / r['region_px']:6.1f} "
              f"{r['rss_growth_mb']:8.1f}")
    print("\nSlideClassifier.predict of a two-stage model (default nets, stage 1 streamed), one slide:")
    print(f"{'slide':>13} {'stage-1 map':>13} {'s/slide':>8} {'level-0 px read':>16} {'RSS +MB':>8}")
    for size in args.sizes:
        child = subprocess.run([sys.executable, __file__, "--one-predict", str(size), "--regions", str(args.regions),
                                "--patches", str(args.patches), "--zoom-size", str(args.zoom_size)],
                               check=True, capture_output=True, text=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{size:>6} x {size:<6d}{str(tuple(r['map'])):>13} {r['seconds']:8.2f} {r['level0_px']:16.3g} "
              f"{r['rss_growth_mb']:8.1f}")


if __name__ == "__main__":
    main()
