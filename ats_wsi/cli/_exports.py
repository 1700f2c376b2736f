"""Flags of ``ats-wsi predict`` for what users take away (issue 27): features, top patches."""
from __future__ import annotations

import argparse

from ._common import positive_int


def register(p) -> None:
    """The export flags of ``ats-wsi predict`` (their own group)."""
    from ..exports import MAX_EXPORT_PATCHES

    g = p.add_argument_group("exports (docs/cli.md#exports)")
    g.add_argument("--export-features", action="store_true",
                   help="also write features/NAME.h5: the sampled patches' features [n, D] and level-0 coords "
                        "[n, 2] (the TRIDENT/CLAM layout), their attention and draw order, and the slide "
                        "embedding; needs h5py (pip install 'ats-wsi[hdf5]')")
    g.add_argument("--export-patches", type=positive_int, metavar="K",
                   help=f"also write the K highest-attention sampled patches of each slide as PNG, and a "
                        f"contact sheet, to patches/NAME/ (K <= {MAX_EXPORT_PATCHES})")


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with the export flags (one line), or None; checked before any slide is read."""
    from ..errors import MissingExtraError
    from ..exports import MAX_EXPORT_PATCHES, require_h5py

    if args.export_patches is not None and args.export_patches > MAX_EXPORT_PATCHES:
        return f"ats-wsi predict: --export-patches must be at most {MAX_EXPORT_PATCHES}, got {args.export_patches}"
    if args.export_features:
        try:
            require_h5py()
        except MissingExtraError as exc:
            return f"ats-wsi predict: {exc}"
    return None


def settings(args: argparse.Namespace) -> dict:
    """The :class:`~ats_wsi.run.predict.PredictSettings` fields of the export flags."""
    return {"export_features": bool(args.export_features), "export_patches": int(args.export_patches or 0)}
