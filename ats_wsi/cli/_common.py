"""What every sub-command shares: argument types, tables, progress bars, the device check."""
from __future__ import annotations

import argparse
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default and keeps descriptions as written."""


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (so that a bad value is a usage error, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """Rows as left-aligned columns under a header and a rule."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar on stderr when it is a terminal (None when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)


def check_device(command: str, device: str) -> str | None:
    """An error line if ``device`` cannot be used by this torch, else None."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        return f"ats-wsi {command}: --device {device!r} is not a torch device ({exc})"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return (f"ats-wsi {command}: --device {device} asked for, but this torch ({torch.__version__}) "
                f"has no usable CUDA device; use --device cpu or install a CUDA build of torch")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return f"ats-wsi {command}: --device mps asked for, but MPS is not available here"
    return None


def error(message: str) -> int:
    """Print ``message`` to stderr; the exit status of a usage error (2)."""
    print(message, file=sys.stderr)
    return 2
