"""The ``ats-wsi`` command line: the only place that parses argv, prints or exits.

One module per sub-command, each with ``register(subparsers)`` and
``run(args) -> exit status``:
  info      a table of each slide's format, backend, size, levels, µm/px, tiles
  demo      synthetic slides -> train -> predict -> report (README command one)
  train     train an attention-sampling classifier from a manifest CSV
  predict   classify slides (files, folders, globs) with a checkpoint
  view      a slide in napari with its attention map, boxes and the widget
  pretrain  a patch encoder from the cohort's unlabelled tissue (SimCLR), to freeze
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import AtsError
from . import demo, info, predict, pretrain, train, view

__all__ = ["build_parser", "main"]

COMMANDS = (info, demo, train, predict, view, pretrain)


def build_parser() -> argparse.ArgumentParser:
    """The ``ats-wsi`` parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="ats-wsi",
        description="Attention sampling for whole-slide images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ats-wsi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; returns its exit status (typed errors become one line, status 1)."""
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
    except BrokenPipeError:
        # `ats-wsi info slides/ | head`: the reader left; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except AtsError as exc:
        print(f"ats-wsi {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
