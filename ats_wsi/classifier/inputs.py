"""One slide made ready for a :class:`~ats_wsi.classifier.SlideClassifier`.

:class:`SlideInput` opens a slide once and builds what the model needs of it
once: a reader of the low view (:attr:`SlideInput.low`, which prediction
reads tile by tile; the whole view and its tissue mask, as tensors, only when
training asks for them) and a :class:`~ats_wsi.patches.PatchReader` at the
config's patch level, whose tile cache then serves every later draw. Prediction opens one per slide; training
keeps one per slide of the manifest for the whole run (:class:`SlideInputs`).

With ``config.patch_mpp`` set, the reader reads at that µm/px (whatever the
slide's levels) and the source maps its cells to level-0 boxes of
``patch_size x patch_mpp / slide.mpp`` pixels.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ResolutionError
from ..patches import PatchReader, SlideSource
from ..slide import open_slide
from ..slide.lowview import LowView, LowViewReader, read_low_view
from ..slide.resolution import given_mpp
from .config import ModelConfig

__all__ = ["SlideInput", "SlideInputs"]


class SlideInput:
    """A slide with its low view, tissue mask and patch reader, built once.

    Args:
        slide: an open slide (kept open; the caller closes it) or a path
            (opened here; closed by :meth:`close`).
        config: the model config (low-view resolution, patch level and size).
        workers: tile-decoding threads of the patch reader.
        cache_bytes: decoded-tile cache of the patch reader.
        mpp: the slide's level-0 µm/px, overriding its metadata (a manifest's
            ``mpp`` column, ``--mpp``), for a slide opened here. An open slide
            lent to it is never changed: it must already have this µm/px
            (``open_slide(path, mpp=...)``), else :class:`ResolutionError`.
        device: where the model runs; on CUDA the patch reader decodes JPEG
            tiles there with nvImageCodec when it is installed (``decoder="auto"``
            of :class:`~ats_wsi.patches.PatchReader`).
        roi: a :class:`~ats_wsi.roi.Roi`: the tissue mask of :meth:`low_inputs` (training) keeps
            only the low view's pixels whose centre lies in it (prediction restricts whole boxes:
            ``SlideClassifier.predict(roi=...)``).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, slide, config: ModelConfig, *, workers: int = 2, cache_bytes: int = 64 * 2**20,
                 mpp: float | None = None, device: str | torch.device = "cpu", roi=None):
        self.roi = roi
        self._own = not hasattr(slide, "read_region")
        if not self._own and mpp is not None:
            _check_lent_mpp(slide, mpp)
        self.slide = open_slide(slide, mpp=mpp) if self._own else slide
        try:
            self.config = config
            self.low = LowViewReader(self.slide, **config.low_resolution())  # read tile by tile by predict
            self._view: LowView | None = None
            self.zoom = None
            if getattr(config, "zoom_mpp", None) is not None:  # two stages: regions and patches, by µm/px
                from ..patches.zoom_source import ZoomSource

                self.zoom = ZoomSource([self.slide], low_downsample=self.low.downsample, zoom_mpp=config.zoom_mpp,
                                       zoom_size=config.zoom_size, patch_mpp=config.patch_mpp,
                                       patch_size=config.patch_size, mpp_tolerance=config.mpp_tolerance,
                                       workers=workers, cache_bytes=cache_bytes, device=device)
                self.reader = self.zoom.patch_readers[0]  # what the cohort checks look at
            elif config.patch_mpp is not None:
                self.reader = PatchReader(self.slide, patch_size=config.patch_size, mpp=config.patch_mpp,
                                          mpp_tolerance=config.mpp_tolerance, workers=workers,
                                          cache_bytes=cache_bytes, device=device)
            else:
                self.reader = PatchReader(self.slide, config.patch_level, config.patch_size,
                                          workers=workers, cache_bytes=cache_bytes, device=device)
        except BaseException:
            self.close()
            raise

    @property
    def view(self) -> LowView:
        """The whole low view and its tissue mask, read on first use (training;
        :meth:`SlideClassifier.predict` reads :attr:`low` tile by tile instead)."""
        if self._view is None:
            self._view = read_low_view(self.slide, **self.config.low_resolution())
        return self._view

    @property
    def path(self) -> Path:
        """The slide's path."""
        return Path(self.slide.path)

    def low_inputs(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The low view as uint8 ``[1, 3, h, w]`` and its tissue mask, bool ``[1, h, w]``.

        The model pools the pixel mask onto its attention grid
        (:meth:`ats_wsi.model.AttentionSampler.grid_mask`).
        """
        image = torch.from_numpy(np.array(self.view.image, copy=True)).permute(2, 0, 1)[None]
        mask = self.view.mask
        if self.roi is not None:
            mask = mask & self.roi.raster(mask.shape, self.view.downsample, self.slide.dimensions)
            if not mask.any():
                from ..errors import RoiError

                raise RoiError(self.roi.path, f"no tissue of slide {self.path} lies inside the region of interest; "
                                              "check that it is in the slide's level-0 pixels")
        return image.to(device), torch.from_numpy(mask)[None].to(device)

    def source(self, device: str | torch.device = "cpu"):
        """A patch source over this slide for one forward pass (shares the reader and its cache): a
        :class:`SlideSource`, or for a two-stage config the slide's one
        :class:`~ats_wsi.patches.zoom_source.ZoomSource` (readers on the device given at construction)."""
        if self.zoom is not None:
            return self.zoom
        return SlideSource([self.slide], self.config.patch_level, low_downsample=self.low.downsample,
                           readers=[self.reader], device=device, mpp=self.config.patch_mpp,
                           mpp_tolerance=self.config.mpp_tolerance)

    def close(self) -> None:
        """Stop the reader's threads; close the slide if it was opened here."""
        zoom = getattr(self, "zoom", None)
        if zoom is not None:
            zoom.close()
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()
        if self._own:
            self.slide.close()

    def __enter__(self) -> SlideInput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_lent_mpp(slide, mpp) -> None:
    """A lent slide is not ours to change: its µm/px must already be ``mpp``."""
    wanted = given_mpp(mpp, slide.path)
    have = slide.mpp
    if have is None or not math.isclose(have, wanted, rel_tol=1e-9):
        raise ResolutionError(slide.path, f"SlideInput(mpp={wanted:g}) was lent an open slide at "
                                          f"{'no' if have is None else f'{have:g}'} µm/px, and does not change a "
                                          f"slide it does not own: open it with open_slide(path, mpp={wanted:g}), "
                                          f"or pass its path")


class SlideInputs:
    """:class:`SlideInput` per slide path, opened on first use and kept until :meth:`close`.

    Training reads the same slides every epoch: their low views and decoded
    tiles are made once for the whole run. ``mpp`` maps slide paths to a
    µm/px that overrides their metadata (a manifest's ``mpp`` column); ``rois`` maps
    them to a :class:`~ats_wsi.roi.Roi` (``--roi``).
    """

    def __init__(self, config: ModelConfig, *, workers: int = 2, cache_bytes: int = 16 * 2**20,
                 mpp: dict[str, float] | None = None, device: str | torch.device = "cpu", rois: dict | None = None):
        self.config, self.workers, self.cache_bytes, self.device = config, workers, cache_bytes, device
        self.rois = {str(k): v for k, v in (rois or {}).items()}
        self.mpp = {str(k): float(v) for k, v in (mpp or {}).items() if v is not None}
        self._inputs: dict[str, SlideInput] = {}

    def __getitem__(self, path: str | os.PathLike) -> SlideInput:
        key = str(path)
        if key not in self._inputs:
            self._inputs[key] = SlideInput(key, self.config, workers=self.workers, cache_bytes=self.cache_bytes,
                                           mpp=self.mpp.get(key), device=self.device, roi=self.rois.get(key))
        return self._inputs[key]

    def close(self) -> None:
        """Close every slide opened so far."""
        for item in self._inputs.values():
            item.close()
        self._inputs.clear()

    def __enter__(self) -> SlideInputs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
