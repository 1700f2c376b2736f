"""One slide made ready for a :class:`~ats_wsi.classifier.SlideClassifier`.

:class:`SlideInput` opens a slide once and builds what the model needs of it
once: the low view and its tissue mask (as tensors) and a
:class:`~ats_wsi.patches.PatchReader` at the config's patch level, whose tile
cache then serves every later draw. Prediction opens one per slide; training
keeps one per slide of the manifest for the whole run (:class:`SlideInputs`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..patches import PatchReader, SlideSource
from ..slide import open_slide
from ..slide.lowview import LowView, read_low_view
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

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, slide, config: ModelConfig, *, workers: int = 2, cache_bytes: int = 64 * 2**20):
        self._own = not hasattr(slide, "read_region")
        self.slide = open_slide(slide) if self._own else slide
        try:
            self.config = config
            self.view: LowView = read_low_view(self.slide, **config.low_resolution())
            self.reader = PatchReader(self.slide, config.patch_level, config.patch_size,
                                      workers=workers, cache_bytes=cache_bytes)
        except BaseException:
            self.close()
            raise

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
        return image.to(device), torch.from_numpy(self.view.mask)[None].to(device)

    def source(self, device: str | torch.device = "cpu") -> SlideSource:
        """A patch source over this slide for one forward pass (shares the reader and its cache)."""
        return SlideSource([self.slide], self.config.patch_level, low_downsample=self.view.downsample,
                           readers=[self.reader], device=device)

    def close(self) -> None:
        """Stop the reader's threads; close the slide if it was opened here."""
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()
        if self._own:
            self.slide.close()

    def __enter__(self) -> SlideInput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SlideInputs:
    """:class:`SlideInput` per slide path, opened on first use and kept until :meth:`close`.

    Training reads the same slides every epoch: their low views and decoded
    tiles are made once for the whole run.
    """

    def __init__(self, config: ModelConfig, *, workers: int = 2, cache_bytes: int = 16 * 2**20):
        self.config, self.workers, self.cache_bytes = config, workers, cache_bytes
        self._inputs: dict[str, SlideInput] = {}

    def __getitem__(self, path: str | os.PathLike) -> SlideInput:
        key = str(path)
        if key not in self._inputs:
            self._inputs[key] = SlideInput(key, self.config, workers=self.workers, cache_bytes=self.cache_bytes)
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
