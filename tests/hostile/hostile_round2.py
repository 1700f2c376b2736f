"""Hostile inputs, round two (issue 26): numbers without bounds, NaN that passed
silently, a feature-cache folder that hung or failed a slide, a reader used
after fork, encoders that misbehave, tampered checkpoints.

Imported by :mod:`hostile_cases` (its ``case`` registry and its runner); the
files are written by :func:`build` from :func:`hostile_cases.build_all`.
CLI cases call ``ats_wsi.cli.main`` in the case's child and pass only when it
returns status 1 with one line on stderr (no traceback) naming ``want``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from hostile_cases import _rgb, _same, case, in_forked_child

_TINY = {"n_patches": 4, "patch_size": 32, "feature_dim": 8, "low_downsample": 8.0}
"""A model small enough to predict good.tif (600 x 400) in a second."""
_ENC_SPEC = {"name": "bad", "source": "torchscript", "mpp": 0.5, "patch_px": 32, "input_px": 32, "dim": 4,
             "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


# --------------------------------------------------------------------- building

def _aperio(path: Path, img: np.ndarray, props: str) -> None:
    import tifffile

    h, w = img.shape[:2]
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", compression="zlib",
                     description=f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] (128x128)|{props}")


def _encoders(root: Path) -> None:
    """TorchScript encoders that misbehave, each with a spec (and a freezable good one)."""
    import torch
    from torch import nn

    class Tuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            f = self.fc(x.mean(dim=(2, 3)))
            return f, f

    class Dict(Tuple):
        def forward(self, x) -> dict[str, torch.Tensor]:
            return {"features": self.fc(x.mean(dim=(2, 3)))}

    class Short(Tuple):
        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))[:1]

    class Raises(Tuple):
        def forward(self, x):
            if x.shape[0] > 0:
                raise RuntimeError("the encoder's own failure")
            return self.fc(x.mean(dim=(2, 3)))

    class NaN(Tuple):
        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3))) * float("nan")

    class Good(Tuple):
        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    for name, cls in {"tuple": Tuple, "dict": Dict, "short": Short, "raises": Raises, "nan": NaN,
                      "good": Good}.items():
        torch.jit.save(torch.jit.script(cls()), str(root / f"enc-{name}.pt"))
        (root / f"enc-{name}.json").write_text(json.dumps({**_ENC_SPEC, "weights": str(root / f"enc-{name}.pt")}))
    for name, change in {"patch65536": {"patch_px": 65536}, "input100000": {"input_px": 100000},
                         "std0": {"std": [0.25, 0.0, 0.25]}}.items():
        spec = {**_ENC_SPEC, "weights": str(root / "enc-good.pt"), **change}
        (root / f"spec-{name}.json").write_text(json.dumps(spec))


def _cache_group(base: Path, group: str) -> None:
    """One cache group ``base/group`` whose shard ``a.npz`` a feature cache must treat as a
    miss (a FIFO, empty, truncated, flipped, other width, NaN, ill-shaped), or a good one.
    Made by each case in its own folder: a case rewrites what it reads."""
    boxes = np.array([[0, 0, 32, 32], [32, 0, 32, 32]], np.int64)
    folder = base / group
    folder.mkdir(parents=True)
    if group == "fifo":
        os.mkfifo(folder / "a.npz")
        return
    arrays = {"boxes": boxes, "features": np.ones((2, 4), np.float32)}
    arrays.update({"width": {"features": np.ones((2, 6), np.float32)},
                   "nan": {"features": np.full((2, 4), np.nan, np.float32)},
                   "shape": {"boxes": boxes[:, :3]},
                   "rows": {"features": np.ones((5, 4), np.float32)}}.get(group, {}))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    if group == "empty":
        data = b""
    elif group == "truncated":
        data = data[: len(data) // 2]
    elif group == "flipped":
        flipped = bytearray(data)
        for i in range(60, len(flipped) - 40, 7):
            flipped[i] ^= 0x5A
        data = bytes(flipped)
    (folder / "a.npz").write_bytes(data)


def _checkpoints(root: Path) -> None:
    """Checkpoints of the tiny model with one thing tampered; a run folder per resume case."""
    import torch

    from ats_wsi.classifier import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelConfig(**_TINY))
    good = root / "ckpt-good.pt"
    save_checkpoint(good, model, epoch=1, optimizer=torch.optim.AdamW(model.parameters()))
    payload = torch.load(good, weights_only=True)

    def variant(name: str, change) -> Path:
        p = {**payload, "config": dict(payload["config"]), "state_dict": dict(payload["state_dict"])}
        change(p)
        torch.save(p, root / f"ckpt-{name}.pt")
        return root / f"ckpt-{name}.pt"

    def nan(p):
        w = p["state_dict"]["head.weight"].clone()
        w[0, 0] = float("nan")
        p["state_dict"]["head.weight"] = w

    variant("nan", nan)
    variant("shape", lambda p: p["state_dict"].update({"head.weight": torch.zeros(3, 8)}))
    variant("classes", lambda p: p["config"].update(n_classes=3))
    variant("low-1e-9", lambda p: p["config"].update(low_downsample=1e-9))
    variant("mean1", lambda p: p["config"].update(mean=[0.5]))
    variant("names1", lambda p: p["config"].update(class_names=["only"]))
    variant("std0", lambda p: p["config"].update(std=[0.25, 0.0, 0.25]))
    for name in ("nan", "shape", "classes"):
        run = root / f"run-{name}"
        run.mkdir()
        (run / "last.pt").write_bytes((root / f"ckpt-{name}.pt").read_bytes())
    (root / "manifest.csv").write_text(f"path,label,split\n{root / 'good.tif'},0,train\n"
                                       f"{root / 'good2.tif'},1,train\n")
    for name, mpp in (("manifest-mpp.csv", 0.5), ("manifest-mpp-1e-300.csv", 1e-300)):
        (root / name).write_text(f"path,label,split,mpp\n{root / 'good.tif'},0,train,{mpp}\n"
                                 f"{root / 'good2.tif'},1,train,{mpp}\n")


def _big_strip(path: Path, side: int = 11600) -> None:
    """A valid deflate TIFF of one strip of side² pixels (zeros): 400 MiB to decode, 0.4 MB on disk."""
    import tifffile

    z = zlib.compressobj(1)
    row = bytes(side * 3 * 100)
    data = b"".join([z.compress(row) for _ in range(side // 100)] + [z.flush()])
    with tifffile.TiffWriter(path) as tif:
        tif.write(iter([data]), shape=(side, side, 3), dtype=np.uint8, photometric="rgb", compression="zlib",
                  rowsperstrip=side)


def build(root: Path) -> None:
    """Write round two's files under ``root`` (after :func:`hostile_cases.build_all` wrote good.tif)."""
    import tifffile

    img = _rgb(400, 600, seed=11)
    tifffile.imwrite(root / "good2.tif", img, tile=(128, 128), photometric="rgb", compression="zlib")
    _aperio(root / "mpp-1e-7.svs", img, "AppMag = 20|MPP = 1e-7")
    _aperio(root / "mpp-1e-300.svs", img, "AppMag = 20|MPP = 1e-300")
    _aperio(root / "mpp-1e300.svs", img, "AppMag = 20|MPP = 1e300")
    _aperio(root / "appmag-1e400.svs", img, "AppMag = 1e400|MPP = 0.5")
    tifffile.imwrite(root / "ome-pm.ome.tif", img, tile=(128, 128), photometric="rgb", ome=True,
                     metadata={"PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "pm",
                               "PhysicalSizeY": 0.25, "PhysicalSizeYUnit": "pm"})
    tifffile.imwrite(root / "xres-max.tif", img, tile=(128, 128), photometric="rgb",
                     resolution=((2**32 - 1, 1), (2**32 - 1, 1)), resolutionunit="CENTIMETER")
    tifffile.imwrite(root / "aperio-33003.svs", img[:256, :256], tile=(128, 128), photometric="rgb",
                     compression=33003, description="Aperio Image Library v12.0.0\r\n256x256 [0,0 256x256] "
                                                    "(128x128) J2K/YUV16 Q=70|AppMag = 20|MPP = 0.5")
    _big_strip(root / "big-strip.tif")
    _encoders(root)
    _checkpoints(root)


# ----------------------------------------------------------------- the actions

def _open(path, **kw):
    from ats_wsi.slide import open_slide

    return open_slide(path, **kw)


def _cli(argv, want: str, one_line: bool = True) -> bool:
    """``ats-wsi ARGV`` in this process: True if it ended in status 1 (2: bad settings) and one
    line naming ``want`` (``one_line=False``: a first line, then one per unreadable slide)."""
    from ats_wsi.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code, usage = main([str(a) for a in argv]), False
        except SystemExit as exc:  # argparse's usage errors: the usage, then one line "error: ..."
            code, usage = exc.code, True
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    lines = lines[-1:] if usage and "error:" in lines[-1] else lines
    return (code in (1, 2) and bool(lines) and (len(lines) == 1 or not one_line) and want in err.getvalue()
            and "Traceback" not in err.getvalue())


def _out(p) -> str:
    """A fresh folder beside the case's file (under the suite's root, removed with it)."""
    return tempfile.mkdtemp(prefix="out-", dir=Path(p).parent)


# --- 1: the low view's size is bounded before allocation

def _low(p, **kw):
    from ats_wsi.slide import read_low_view

    with _open(p) as s:
        read_low_view(s, **kw)
    return False


case("good.tif:read_low_view(downsample=1e-9)", "good.tif", expect=("typed",))(lambda p: _low(p, downsample=1e-9))
case("good.tif:read_low_view(downsample=0.001)", "good.tif", expect=("typed",))(lambda p: _low(p, downsample=0.001))
case("good.tif:read_low_view(downsample=nan)", "good.tif", expect=("typed",))(
    lambda p: _low(p, downsample=float("nan")))
case("sparse.tif:read_low_view(downsample=8)", "sparse.tif", expect=("typed",))(lambda p: _low(p, downsample=8))


@case("good.tif:SlideInput(low_downsample=1e-9, config built by hand)", "good.tif", expect=("typed",))
def _low_input(p):
    from ats_wsi.classifier import ModelConfig, SlideInput

    config = ModelConfig(**{**_TINY, "low_downsample": 1e-9})  # the dataclass refuses it (ConfigError)
    SlideInput(p, config, workers=1).close()
    return False


@case("ckpt-low-1e-9.pt:load_model", "ckpt-low-1e-9.pt", expect=("typed",))
def _ckpt_load(p):
    from ats_wsi.classifier import load_model

    load_model(p)
    return False


case("ckpt-low-1e-9.pt:cli predict", "ckpt-low-1e-9.pt", expect=("correct",))(
    lambda p: _cli(["predict", p, Path(p).with_name("good.tif"), "--out", _out(p), "--no-progress"],
                   "CheckpointError"))
case("manifest.csv:cli train --low-downsample 0.001", "manifest.csv", expect=("correct",))(
    lambda p: _cli(["train", p, "--out", _out(p), "--low-downsample", "0.001", "--epochs", "1", "--no-progress"],
                   "low_downsample"))


# --- 2, 8: the feature cache: untrusted shards are misses, never a hang or a failed slide

for _group in ("fifo", "empty", "truncated", "flipped", "width", "nan", "shape", "rows"):
    @case(f"cache/{_group}:get and put", "good.tif", expect=("correct",))
    def _cache(p, group=_group):
        from ats_wsi.encoders import FeatureCache

        folder = Path(_out(p))
        _cache_group(folder, group)
        cache = FeatureCache(folder)
        boxes = np.array([[0, 0, 32, 32], [32, 0, 32, 32]], np.int64)
        if any(f is not None for f in cache.get(group, boxes, dim=4)) or cache.broken != 1:
            return False
        new = np.arange(8, dtype=np.float32).reshape(2, 4)
        cache.put(group, boxes, new)
        again = FeatureCache(folder).get(group, boxes, dim=4)  # a fresh process's view: the rewritten shard
        return all(f is not None for f in again) and _same(np.stack(again), new)


@case("cache/good:get", "good.tif", expect=("correct",))
def _cache_good(p):
    from ats_wsi.encoders import FeatureCache

    folder = Path(_out(p))
    _cache_group(folder, "good")
    cache = FeatureCache(folder)
    got = cache.get("good", np.array([[0, 0, 32, 32], [32, 0, 32, 32]]), dim=4)
    return cache.broken == 0 and all(f is not None and (f == 1).all() for f in got)


# --- 3: a PatchReader with a pool, used in a forked child

def _read_in_child(reader, xy, conn) -> None:
    conn.send(reader.read(xy).numpy().copy())
    conn.close()


@case("good.tif:PatchReader(workers=2) after fork", "good.tif")
def _reader_fork(p):
    from ats_wsi.patches import PatchReader

    xy = [[0, 0], [200, 100], [400, 300], [100, 200]]
    with _open(p) as s, PatchReader(s, patch_size=200, workers=2, cache_bytes=0) as reader:
        ref = reader.read(xy).numpy().copy()  # the pool's threads exist in this process now
        return in_forked_child(_read_in_child, (reader, xy), ref)


# --- 4, 11: NaN never reaches a result

case("ckpt-nan.pt:load_model", "ckpt-nan.pt", expect=("typed",))(_ckpt_load)
case("ckpt-nan.pt:cli predict", "ckpt-nan.pt", expect=("correct",))(
    lambda p: _cli(["predict", p, Path(p).with_name("good.tif"), "--out", _out(p), "--no-progress"],
                   "CheckpointError"))


@case("good.tif:predict with a NaN head", "good.tif", expect=("typed",))
def _nan_head(p):
    import torch

    from ats_wsi.classifier import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(**_TINY))
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    model.predict(p, workers=1)
    return False


# --- 5: absurd µm/px from metadata or given

def _read_at(p, mpp=0.5, backend="auto", **open_kw):
    from ats_wsi.patches import PatchReader

    with _open(p, backend=backend, **open_kw) as s, PatchReader(s, patch_size=64, mpp=mpp, workers=1) as r:
        r.read([[0, 0]])
    return False


for _name in ("mpp-1e-7.svs", "mpp-1e-300.svs", "mpp-1e300.svs", "ome-pm.ome.tif", "xres-max.tif"):
    for _backend in ("auto", "tifffile"):
        case(f"{_name}:PatchReader(mpp=0.5):{_backend}", _name, expect=("typed",))(
            lambda p, b=_backend: _read_at(p, backend=b))
case("mpp-1e300.svs:read_low_view(mpp=8)", "mpp-1e300.svs", expect=("typed",))(lambda p: _low(p, mpp=8))
case("good.tif:open_slide(mpp=1e-6)", "good.tif", expect=("typed",))(lambda p: _open(p, mpp=1e-6) and False)
case("good.tif:open_slide(mpp=1e-300)", "good.tif", expect=("typed",))(lambda p: _open(p, mpp=1e-300) and False)


@case("appmag-1e400.svs:open:tifffile", "appmag-1e400.svs", expect=("correct",))
def _appmag(p):
    from ats_wsi.slide.resolution import objective_power

    with _open(p, backend="tifffile") as s:
        return s.mpp == 0.5 and objective_power(s) == (20.0, True) and "openslide.objective-power" not in s.properties


# --- 6, 7, 11: encoders

def _encode(p):
    import torch

    from ats_wsi.encoders import build_encoder

    encoder = build_encoder(p, frozen=True)
    encoder(torch.zeros(3, 3, 32, 32, dtype=torch.uint8))
    return False


for _name in ("tuple", "dict", "short", "raises", "nan"):
    case(f"enc-{_name}.json:encode", f"enc-{_name}.json", expect=("typed",))(_encode)
for _name in ("patch65536", "input100000", "std0"):
    case(f"spec-{_name}.json:load_spec", f"spec-{_name}.json", expect=("typed",))(
        lambda p: __import__("ats_wsi.encoders", fromlist=["load_spec"]).load_spec(p) and False)


@case("enc-good.json:frozen TorchScript", "enc-good.json", expect=("correct",))
def _freeze(p):
    import torch

    from ats_wsi.encoders import build_encoder

    encoder = build_encoder(p, frozen=True)
    out = encoder(torch.full((3, 3, 32, 32), 128, dtype=torch.uint8))
    frozen = not any(q.requires_grad for q in encoder.backbone.parameters())
    return frozen and tuple(out.shape) == (3, 4) and bool(torch.isfinite(out).all())


case("manifest-mpp.csv:cli train --feature-net enc-tuple.pt --freeze-features", "manifest-mpp.csv",
     expect=("correct",))(
    lambda p: _cli(["train", p, "--out", _out(p), "--feature-net", Path(p).with_name("enc-tuple.pt"),
                    "--feature-spec", Path(p).with_name("enc-tuple.json"), "--freeze-features", "--epochs", "1",
                    "--no-progress", "--n-patches", "2", "--low-downsample", "8"], "EncoderError"))
case("manifest-mpp-1e-300.csv:cli train --patch-mpp 0.5", "manifest-mpp-1e-300.csv", expect=("correct",))(
    lambda p: _cli(["train", p, "--out", _out(p), "--patch-mpp", "0.5", "--epochs", "1", "--no-progress"],
                   "mpp 1e-300 µm/px is outside", one_line=False))


# --- 9, 12: tampered checkpoints, on resume as on predict

for _name in ("shape", "classes", "mean1", "names1", "std0"):
    case(f"ckpt-{_name}.pt:load_model", f"ckpt-{_name}.pt", expect=("typed",))(_ckpt_load)
for _name in ("nan", "shape", "classes"):
    case(f"run-{_name}:cli train --resume", "manifest.csv", expect=("correct",))(
        lambda p, n=_name: _cli(["train", p, "--out", Path(p).with_name(f"run-{n}"), "--resume", "--epochs", "2",
                                 "--no-progress"], "CheckpointError"))


# --- 11, 12: TIFFs a backend must refuse rather than misread

case("big-strip.tif:open", "big-strip.tif", expect=("typed",))(lambda p: _open(p) and False)
case("aperio-33003.svs:open:tifffile", "aperio-33003.svs", expect=("typed",))(
    lambda p: _open(p, backend="tifffile") and False)


@case("good.tif:PatchReader.read(10^6 boxes)", "good.tif", expect=("typed",))
def _many_boxes(p):
    from ats_wsi.patches import PatchReader

    with _open(p) as s, PatchReader(s, patch_size=256, workers=1) as r:
        r.read(np.zeros((10**6, 2), np.int64))
    return False


@case("good.tif:SlideSource.extract(10^5 boxes of 512²)", "good.tif", expect=("typed",))
def _many_boxes_source(p):
    import torch

    from ats_wsi.patches import SlideSource

    with _open(p) as s:
        source = SlideSource([s], 0, low_downsample=8.0, workers=1)
        source.extract(torch.zeros(1, 10**5, 2, dtype=torch.long), 512)  # 73 GiB
    return False


for _flag, _value, _words in (("--samples", "1000000000", "more than 4096 samplings"),
                              ("--workers", "100000", "argument --workers: must be in 1.."),
                              ("--io-threads", "-5", "argument --io-threads: must be in 1..256"),
                              ("--mpp", "1e-9", "outside the plausible")):
    case(f"ckpt-good.pt:cli predict {_flag} {_value}", "ckpt-good.pt", expect=("correct",))(
        lambda p, f=_flag, v=_value, w=_words: _cli(["predict", p, Path(p).with_name("good.tif"), "--out", _out(p),
                                                     "--no-progress", f, v], w))
