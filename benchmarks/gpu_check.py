"""The CUDA path checked and measured on whatever GPU this machine has (``scripts/gpu-check``).

With CUDA, in this order (each step timed, the whole aimed at under 4 minutes on one GPU):

1. tests: ``tests/patches/test_nvimgcodec.py`` (its CUDA tests included) and every other
   test named ``*cuda*`` under ``tests/patches`` and ``tests/sampling``;
2. the demo on ``cuda``: ``ats-wsi demo --epochs 1 --slides N --device cuda`` (synthetic
   slides written, one epoch of training, prediction of the held-out slides);
3. the reader: random 256² level-0 patches, and 224² patches at 0.5 µm/px from a 0.25 µm/px
   level (2 x 2 mean), from one libvips JPEG pyramid, read onto the GPU by the CPU reader
   (``decoder="native"``: pinned memory, ``non_blocking`` copy), by nvImageCodec on the GPU
   (``decoder="nvimgcodec"``) and, where ``cucim`` is importable, by cuCIM's batched
   ``read_region(..., device="cuda")``; patches/s, ``torch.cuda.synchronize`` inside the clock;
4. a ViT-S/16 encoder (timm's ``vit_small_patch16_224``, random weights) in fp16: patches/s
   of 224² inputs, batches of 256 (where timm is importable);
5. batch prediction on ``cuda`` with ``--read-ahead`` 0, 1 and 2 (``benchmarks/read_ahead.py``, 6
   synthetic slides, 2 rounds): seconds per slide and the encoder's busy fraction.

Without CUDA: runs the CPU-backend checks (``tests/patches/test_nvimgcodec.py``), prints one
line saying that no GPU numbers were taken, and exits 0 (1 if the checks fail).

Writes ``--out`` (JSON, default ``gpu-check.json``) and prints a table (markdown) of it.

Usage::

    scripts/gpu-check                       # or: .venv/bin/python benchmarks/gpu_check.py --out gpu-check.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(__file__).resolve().parent / "_data"
SLIDE_WH = (12_000, 10_000)
SLIDE_MPP = 0.25


def _pytest(args: list[str], timeout: float) -> dict:
    """Run pytest in a child process; its counts, status and seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", done.stdout)}
    return {"status": done.returncode, "seconds": round(time.perf_counter() - start, 1), **counts,
            "tail": (done.stdout.strip().splitlines() or [done.stderr[-300:]])[-1]}


def check_tests(cuda: bool) -> dict:
    """The nvImageCodec tests (CPU backend; CUDA ones too on a GPU) and the other CUDA tests."""
    args = ["tests/patches/test_nvimgcodec.py"]
    if cuda:
        args += ["tests/patches/test_reader.py", "tests/sampling", "-k", "nvimgcodec or cuda"]
    return _pytest(args, timeout=150)


def check_demo(slides: int) -> dict:
    """``ats-wsi demo`` on cuda with one epoch: status and seconds."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "ats_wsi.cli", "demo", "--out", str(Path(tmp) / "demo"),
                               "--epochs", "1", "--slides", str(slides), "--device", "cuda"],
                              cwd=ROOT, capture_output=True, text=True, timeout=150)
    return {"status": done.returncode, "seconds": round(time.perf_counter() - start, 1),
            "tail": (done.stdout.strip().splitlines() or [done.stderr[-300:]])[-1]}


def check_read_ahead() -> dict:
    """``benchmarks/read_ahead.py`` on cuda: per read-ahead depth, seconds per slide and encoder busy fraction."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "benchmarks/read_ahead.py", "--device", "cuda", "--slides", "6",
                               "--rounds", "2", "--io-threads", "4", "--json", str(Path(tmp) / "ra.json")],
                              cwd=ROOT, capture_output=True, text=True, timeout=150)
        got = json.loads((Path(tmp) / "ra.json").read_text()) if done.returncode == 0 else {}
    return {"status": done.returncode, "seconds": round(time.perf_counter() - start, 1), "table": got.get("table", []),
            "tail": (done.stdout.strip().splitlines() or [done.stderr[-300:]])[-1]}


def _time(read, batches: list[np.ndarray], cuda: bool) -> float:
    """Patches/s of ``read`` over ``batches`` (one warm-up batch first, CUDA synchronised in the clock)."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    read(batches[0])
    sync()
    start = time.perf_counter()
    for xy in batches:
        read(xy)
    sync()
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def check_reader(n: int, batches: int, workers: int, device: str) -> list[dict]:
    """Patches/s onto ``device``: the native reader, nvImageCodec (on the GPU, or its CPU backend for
    ``device="cpu"``), cuCIM's GPU batch read (on CUDA, where importable)."""
    from patch_reading import vips_slide

    from ats_wsi.patches import PatchReader
    from ats_wsi.slide import open_slide

    DATA.mkdir(exist_ok=True)
    path = vips_slide(DATA / f"gpu_check_{SLIDE_WH[0]}x{SLIDE_WH[1]}.tif", *SLIDE_WH)
    rng = np.random.default_rng(0)
    rows = []
    with open_slide(path, mpp=SLIDE_MPP) as slide:
        for kind, size, where in (("256² level 0", 256, {"level": 0}), ("224² at 0.5 µm/px", 224, {"mpp": 0.5})):
            reach = size * (2 if "mpp" in where else 1)
            xy = [np.stack([rng.integers(0, SLIDE_WH[0] - reach, n), rng.integers(0, SLIDE_WH[1] - reach, n)], 1)
                  for _ in range(batches)]
            for decoder in ("native", "nvimgcodec"):
                with PatchReader(slide, patch_size=size, workers=workers, cache_bytes=0, device=device,
                                 decoder=decoder, **where) as reader:
                    rows.append({"patches": kind, "reader": f"PatchReader {decoder} (w={workers}) on {device}",
                                 "patches_per_s": round(_time(reader.read, xy, device == "cuda"), 1)})
            cucim = _cucim_reader(path, reach, size, workers) if device == "cuda" else None
            if cucim is not None:
                rows.append({"patches": kind, "reader": f"cuCIM batched, device=cuda (w={workers})",
                             "patches_per_s": round(_time(cucim, xy, True), 1)})
    return rows


def _cucim_reader(path: Path, region: int, size: int, workers: int):
    """cuCIM's batched read onto the GPU (2 x 2 mean on the GPU for the µm/px rows), or None."""
    try:
        from cucim import CuImage
    except ImportError:
        return None
    img = CuImage(str(path))

    def read(xy):
        out = [torch.as_tensor(p, device="cuda")[:, :, :3]
               for p in img.read_region(xy, (region, region), 0, num_workers=workers, device="cuda")]
        batch = torch.stack(out).movedim(-1, 1)
        if region != size:
            batch = torch.nn.functional.avg_pool2d(batch.float(), region // size).round().to(torch.uint8)
        return batch

    return read


def check_vit(batch: int = 256, steps: int = 10) -> dict | None:
    """Patches/s of ViT-S/16 (random weights) in fp16 on 224² inputs, or None without timm."""
    try:
        import timm
    except ImportError:
        return None
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).cuda().eval().half()
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        torch.cuda.synchronize()
    return {"batch": batch, "patches_per_s": round(batch * steps / (time.perf_counter() - start), 1)}


def table(report: dict) -> str:
    """The report as a markdown table."""
    lines = [f"GPU check on {report['device']} (torch {report['torch']}, nvImageCodec {report['nvimgcodec']}), "
             f"{report['seconds']} s", "", "| step | result |", "|---|---|"]
    for name in ("tests", "demo"):
        if name in report:
            r = report[name]
            lines.append(f"| {name} | status {r['status']}, {r['seconds']} s: {r['tail']} |")
    for row in report.get("reader", []):
        lines.append(f"| read {row['patches']}: {row['reader']} | {row['patches_per_s']:.0f} patches/s |")
    for row in report.get("read_ahead", {}).get("table", []):
        lines.append(f"| predict, read-ahead {row['read_ahead']} | {row['seconds_per_slide']:.3f} s/slide, encoder "
                     f"busy {row['encoder_busy']:.0%}, {row['ratio']:.2f}x serial |")
    if report.get("vit_s16_fp16"):
        v = report["vit_s16_fp16"]
        lines.append(f"| ViT-S/16 fp16, batch {v['batch']} | {v['patches_per_s']:.0f} patches/s |")
    return "\n".join(lines)


def _nvimgcodec_version() -> str:
    try:
        from importlib.metadata import version

        return version("nvidia-nvimgcodec-cu12")
    except Exception:  # noqa: BLE001 - any failure means: not installed
        return "not installed"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu-check.json", help="JSON report")
    p.add_argument("--n", type=int, default=128, help="patches per batch in the reader benchmark")
    p.add_argument("--batches", type=int, default=8, help="batches per reader")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="CPU reader threads")
    p.add_argument("--demo-slides", type=int, default=16, help="slides of the 1-epoch demo")
    args = p.parse_args(argv)
    from ats_wsi.atomic import write_json_atomic

    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    report = {"device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or 'unknown'})",
              "torch": torch.__version__, "nvimgcodec": _nvimgcodec_version(), "cuda": cuda}
    report["tests"] = check_tests(cuda)
    if cuda:
        report["demo"] = check_demo(args.demo_slides)
    if report["nvimgcodec"] != "not installed":
        report["reader"] = check_reader(args.n, args.batches, args.workers, "cuda" if cuda else "cpu")
    if cuda:
        report["vit_s16_fp16"] = check_vit()
        report["read_ahead"] = check_read_ahead()
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(args.out, report)
    failed = any(report.get(k, {}).get("status", 0) != 0 for k in ("tests", "demo", "read_ahead"))
    if not cuda:
        speeds = ", ".join(f"{r['patches']} {r['reader'].split(' (')[0][12:]} {r['patches_per_s']:.0f}/s"
                           for r in report.get("reader", []))
        print(f"no CUDA device: ran the CPU-backend checks only ({report['tests'].get('passed', 0)} passed, "
              f"status {report['tests']['status']}; CPU reader patches/s: {speeds or 'not measured'}); "
              f"GPU numbers not taken; report in {args.out}")
        return 1 if failed else 0
    print(table(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
