"""The ``ats-wsi`` command line. The only place that parses argv, prints or exits.

Sub-commands:
  info      a table of each slide's format, backend, size, levels, µm/px, tiles
  demo      synthetic slides -> train -> predict -> report (README command one)
  train     train an attention-sampling classifier from a manifest CSV
  predict   classify slides (files, folders, globs) with a checkpoint
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import AtsError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".zarr")


def expand_slide_args(items: list[str]) -> list[Path]:
    """Files, folders (their slides, sorted) and glob patterns -> slide paths.

    A path that does not exist is kept, so that it is reported as an error
    by whoever opens it instead of silently vanishing.
    """
    import glob

    out: list[Path] = []
    for item in items:
        path = Path(item)
        if any(ch in item for ch in "*?["):
            out.extend(Path(p) for p in sorted(glob.glob(item, recursive=True)))
        elif path.is_dir() and path.suffix.lower() != ".zarr":
            out.extend(
                sorted(p for p in path.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith("."))
            )
        else:
            out.append(path)
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


# --------------------------------------------------------------------------- info


def _fmt_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_info(args: argparse.Namespace) -> int:
    from .slide import open_slide

    header = ["slide", "format", "backend", "size (w x h)", "levels", "downsamples", "mpp", "tile"]
    rows, errors = [], []
    for path in expand_slide_args(args.slides):
        try:
            with open_slide(path, backend=args.backend) as s:
                w, h = s.dimensions
                rows.append([
                    str(path), s.format, s.backend, f"{w} x {h}", str(s.level_count),
                    ",".join(f"{d:g}" for d in s.level_downsamples),
                    "-" if s.mpp is None else f"{s.mpp:.4g}",
                    "x".join(str(v) for v in s.tile_size(0)),
                ])
        except AtsError as exc:
            errors.append((path, exc))
    if rows:
        print(_fmt_table(rows, header))
    if errors:
        print(f"\n{len(errors)} slide(s) could not be read:", file=sys.stderr)
        for path, exc in errors:
            print(f"  {path}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    if not rows and not errors:
        print("no slides found", file=sys.stderr)
        return 2
    return 1 if errors else 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ats-wsi",
        description="Attention sampling for whole-slide images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ats-wsi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="describe slides: format, backend, size, levels, mpp, tiles")
    p.add_argument("slides", nargs="+", help="slide files, folders or glob patterns")
    p.add_argument("--backend", default="auto", choices=["auto", "openslide", "tifffile", "zarr"])
    p.set_defaults(func=cmd_info)

    # demo / train / predict: parsed here, imported lazily (torch) when run.
    from .run import commands

    commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except AtsError as exc:
        print(f"ats-wsi {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
