"""``ats-wsi info``: a table of each slide's format, backend, size, levels, µm/px, magnification, tiles."""
from __future__ import annotations

import argparse
import sys

from ..errors import AtsError
from ._common import HelpFormatter, format_table


def register(sub) -> None:
    """Add ``info`` to the ``ats-wsi`` sub-parsers."""
    p = sub.add_parser("info", help="describe slides: format, backend, size, levels, mpp, tiles",
                       formatter_class=HelpFormatter)
    p.add_argument("slides", nargs="+", help="slide files, folders or glob patterns")
    p.add_argument("--backend", default="auto", choices=["auto", "openslide", "tifffile", "zarr"],
                   help="slide reader (auto: chosen per format)")
    p.add_argument("--mpp", type=float, help="level-0 µm/px of the slides, overriding their metadata "
                                             "(shown as 'given'; for files that store none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table; exit 1 if any slide could not be read, 2 if none was found."""
    from ..slide import find_slides, open_slide
    from ..slide.resolution import format_magnification, objective_power

    if args.mpp is not None and not 0 < args.mpp < float("inf"):
        print(f"ats-wsi info: --mpp must be a number > 0, got {args.mpp}", file=sys.stderr)
        return 2
    header = ["slide", "format", "backend", "size (w x h)", "levels", "downsamples", "mpp", "magnification", "tile"]
    rows, errors = [], []
    for path in find_slides(args.slides):
        try:
            with open_slide(path, backend=args.backend, mpp=args.mpp) as s:
                w, h = s.dimensions
                mpp = "-" if s.mpp is None else f"{s.mpp:.4g}" + (" (given)" if s.mpp_given else "")
                rows.append([
                    str(path), s.format, s.backend, f"{w} x {h}", str(s.level_count),
                    ",".join(f"{d:g}" for d in s.level_downsamples),
                    mpp, format_magnification(*objective_power(s)),
                    "x".join(str(v) for v in s.tile_size(0)),
                ])
        except AtsError as exc:
            errors.append((path, exc))
    if rows:
        print(format_table(rows, header))
    if errors:
        print(f"\n{len(errors)} slide(s) could not be read:", file=sys.stderr)
        for path, exc in errors:
            print(f"  {path}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    if not rows and not errors:
        print("no slides found", file=sys.stderr)
        return 2
    return 1 if errors else 0
