"""TensorSource against the per-patch loop of existing PyTorch ports.

The alternative a user would pick is what the PyTorch ports of attention
sampling do: pad the whole batch once (a full copy of every image), then
slice patch by patch in Python and stack. TensorSource gathers every patch
of the batch at once and never pads the image.

Both are timed on the same boxes (about a fifth of them crossing the image
border, so the padding is exercised), median of ``--repeats`` runs after one
warm-up. "floor" is the time to write a fresh output of the same size
(allocation and one pass of stores): no method that returns new patches can
beat it by much.

    python benchmarks/extract_patches.py --repeats 7
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ats_wsi.patches import TensorSource


def pad_then_slice(x: torch.Tensor, xy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The ports' way: pad the batch by a patch on every side, then slice each box.

    Args:
        x: ``[B, C, H, W]``; xy: long ``[B, n, 2]`` top-left ``(x, y)``; size ``(ph, pw)``.

    Returns:
        ``[B, n, C, ph, pw]``.
    """
    ph, pw = size
    padded = F.pad(x, (pw, pw, ph, ph))
    patches = []
    for b, boxes in enumerate(xy.tolist()):
        for x0, y0 in boxes:
            patches.append(padded[b, :, y0 + ph:y0 + 2 * ph, x0 + pw:x0 + 2 * pw])
    return torch.stack(patches).view(*xy.shape[:2], x.shape[1], ph, pw)


def median_ms(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up run."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def random_boxes(generator, batch, n, hw, size, device):
    """Top-left (x, y) long [B, n, 2], up to half a patch past every border."""
    (height, width), (ph, pw) = hw, size
    x0 = torch.randint(-pw // 2, width - pw // 2, (batch, n), generator=generator)
    y0 = torch.randint(-ph // 2, height - ph // 2, (batch, n), generator=generator)
    return torch.stack([x0, y0], dim=-1).to(device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=1500, help="image side in pixels")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cases", default="10x32,100x32,10x256,100x256",
                        help="comma-separated n x patch side")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    hw = (args.size, args.size)
    x = torch.rand(args.batch, args.channels, *hw, generator=g).to(device)
    source = TensorSource(x)
    print(f"{args.batch} x {args.channels} x {args.size}² float32 on {device}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}")
    header = (f"{'n':>5} {'patch':>7} {'out MB':>8} {'loop+pad ms':>12} {'gather ms':>10} "
              f"{'ratio':>7} {'floor ms':>9} {'gather GB/s':>12}")
    print(header)
    print("-" * len(header))
    for case in args.cases.split(","):
        n, side = (int(v) for v in case.lower().split("x"))
        size = (side, side)
        xy = random_boxes(g, args.batch, n, hw, size, device)
        assert torch.equal(source.extract(xy, size), pad_then_slice(x, xy, size))
        out_shape = (args.batch, n, args.channels, side, side)
        out_mb = 4 * torch.Size(out_shape).numel() / 1e6
        loop_ms = median_ms(lambda: pad_then_slice(x, xy, size), args.repeats, device)
        gather_ms = median_ms(lambda: source.extract(xy, size), args.repeats, device)
        floor_ms = median_ms(lambda: torch.empty(out_shape, device=device).fill_(1.0),
                             args.repeats, device)
        print(f"{n:>5} {f'{side}²':>7} {out_mb:>8.1f} {loop_ms:>12.2f} {gather_ms:>10.2f} "
              f"{loop_ms / gather_ms:>6.1f}× {floor_ms:>9.2f} {out_mb / gather_ms:>12.2f}")


if __name__ == "__main__":
    main()
