"""Typed errors raised by ats-wsi.

Library code never prints or exits; it raises one of these. Each error that
concerns a file carries its ``path`` and says what was wrong with it.
"""
from __future__ import annotations

import os


class AtsError(Exception):
    """Base class of every error ats-wsi raises on purpose."""


class _FileReason:
    """An error about a file (or None) and a reason, shown as ``"path: reason"``; picklable."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)

    def __reduce__(self):  # keep path and reason across processes (dask workers)
        return (type(self), (self.path, self.reason))


class SlideError(_FileReason, AtsError):
    """A slide could not be opened or read.

    Args:
        path: the slide's path (``None`` when the error is not about one file).
        reason: what was wrong, in words a user can act on.
    """


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The path does not exist, or is a folder that holds no slide."""


class UnsupportedFormatError(SlideError):
    """No backend can read this file (unknown or unsupported format)."""


class CorruptSlideError(SlideError):
    """The file claims a slide format but its bytes are broken or truncated."""


class LevelError(SlideError, IndexError):
    """A pyramid level outside ``0 .. level_count - 1`` was asked for."""


class RegionError(SlideError, ValueError):
    """A region or size that cannot be read (negative size, too large, ...)."""


class DerivedLevelError(RegionError):
    """A read of a computed level (a slide stored without a pyramid) would decode
    more level-0 pixels than ``ats_wsi.slide.MAX_DERIVED_PIXELS`` allows."""


class SamplingError(AtsError, ValueError):
    """Attention or sampling arguments that would give a wrong sample."""


class CheckpointError(_FileReason, AtsError):
    """A checkpoint file is missing, unreadable or of an unknown config."""


class PredictionError(_FileReason, AtsError, ValueError):
    """A slide's prediction is not a number (NaN or inf logits): never written as ``nan``.

    Args:
        path: the slide.
        reason: what was not finite and what to check.
    """


class SheetError(AtsError, ValueError):
    """A zoom sheet (:func:`ats_wsi.zoom_sheet.render_zoom_sheet`) asked for what it cannot draw:
    no regions, a tile or column count below 1, an opacity outside [0, 1], or more regions
    than fit in :data:`~ats_wsi.zoom_sheet.MAX_SHEET_SIDE` pixels a side at the smallest tile."""


class ManifestError(AtsError, ValueError):
    """A slide manifest (CSV) is missing columns or has bad rows."""


class ConfigError(_FileReason, AtsError, ValueError):
    """A model config given by a user (``--config`` JSON, flags) has an unknown key or a bad value.

    Args:
        path: where the config came from (a file, or ``None``).
        reason: which key and why.
    """


class GroundTruthError(_FileReason, AtsError, ValueError):
    """A synthetic slide's ground-truth file (``<stem>.lesions.json``) is not one ats-wsi wrote.

    Args:
        path: the ground-truth file.
        reason: what was wrong with it.
    """


class ResolutionError(SlideError, ValueError):
    """A physical resolution (µm/px) cannot be read from a slide.

    Raised when a read in µm/px (or magnification) meets a slide without a
    known resolution (no mpp in its metadata and none given), or asks for a
    resolution finer than the slide's level 0 without ``upsample=True``. The
    message names the slide and both resolutions.
    """


class DecoderError(SlideError, ValueError):
    """A patch decoder (``PatchReader(decoder=...)``) that cannot serve a slide: an unknown
    name, or ``decoder="nvimgcodec"`` for a slide level nvImageCodec does not decode
    (not a TIFF level stored as JPEG tiles, or reads converted to sRGB)."""


class DecoderUnavailableError(DecoderError, ImportError):
    """``decoder="nvimgcodec"`` was asked for but NVIDIA nvImageCodec is not installed
    (``pip install 'ats-wsi[gpu]'``)."""


class EncoderError(_FileReason, AtsError):
    """A patch encoder (``ats_wsi.encoders``) that cannot be built, loaded or used as its spec says.

    Args:
        path: the spec, weights or model file concerned (``None``: none).
        reason: what was wrong, in words a user can act on.
    """


class TimmUnavailableError(EncoderError, ImportError):
    """timm (the ``encoders`` extra) could not be imported, and a ``timm:<name>`` feature net or a
    timm encoder asked for it; the message says how to install it or do without."""


class WeightsNotFoundError(EncoderError, FileNotFoundError):
    """An encoder's weights are not on this machine; the message lists every place looked at
    (nothing is downloaded)."""


class EncoderResolutionError(EncoderError, ValueError):
    """Patches would be read at another µm/px than the encoder's spec (``path``: the slide)."""


class RoiError(_FileReason, AtsError, ValueError):
    """A region-of-interest file (``--roi``) that cannot be used: missing, not GeoJSON, no polygon
    in it, or no patch of the slide inside it (``path``: the ROI file or folder)."""


class MissingExtraError(AtsError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it
    (``pip install 'ats-wsi[hdf5]'``)."""


class OutputError(AtsError, OSError):
    """A results folder that cannot be written: a full disk, a read-only or
    immutable folder, no permission. It stops a run (every later slide would
    fail the same way); slides finished before it are kept.

    Args:
        path: the file or folder that could not be written.
        reason: what was wrong and what to do, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        AtsError.__init__(self, f"{self.path}: {reason}" if self.path is not None else reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path is not None else self.reason

    def __reduce__(self):
        return (type(self), (self.path, self.reason))

    @classmethod
    def from_os_error(cls, path: str | os.PathLike, exc: OSError) -> "OutputError":
        """The error for ``exc``, an ``OSError`` met writing ``path``, saying what to do."""
        import errno

        code = exc.errno
        if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            what = ("no space left on the device (or the disk quota is used up); free space and run the "
                    "same command again: slides finished before are kept and skipped")
        elif code == errno.EROFS:
            what = "cannot write: read-only file system; choose a writable results folder"
        elif code in (errno.EACCES, errno.EPERM):
            what = ("cannot write: permission denied (a read-only or immutable folder, or another "
                    "user's); choose a writable results folder")
        else:
            what = f"cannot write: {exc.strerror or os.strerror(code or 0) or type(exc).__name__}"
        return cls(path, what)


class OutputLockedError(OutputError):
    """Another run holds the results folder (``OUT/.ats-wsi.lock``): two runs never write one folder."""


class RunExistsError(OutputError):
    """``ats-wsi train`` into a folder that already holds a run, without ``--resume`` or ``--overwrite``."""
