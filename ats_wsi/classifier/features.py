"""The feature step of a pretrained encoder: resolution contract and feature cache.

:class:`~ats_wsi.model.AttentionSampler` hands every draw to a feature step;
a :class:`SlideClassifier` with a pretrained encoder gets :class:`EncoderFeatures`.
It composes three pieces that know nothing of each other:

- the patch source, which answers how each slide's patches are read
  (:meth:`~ats_wsi.patches.SlidePatchSource.geometry`, a typed
  :class:`~ats_wsi.patches.ReadGeometry`) and which level-0 boxes they cover
  (:meth:`~ats_wsi.patches.SlidePatchSource.boxes`);
- the encoder (:class:`~ats_wsi.encoders.PatchEncoder`), which only embeds pixels;
- the feature cache (:class:`~ats_wsi.encoders.FeatureCache`, ``encoder.cache``),
  keyed by the encoder's spec digest, the slide's fingerprint and the read geometry.

A source that is neither a :class:`~ats_wsi.patches.SlidePatchSource` nor an
in-memory :class:`~ats_wsi.patches.TensorSource` is an :class:`EncoderError`,
never a silently skipped check or cache.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..encoders import FeatureCache, PatchEncoder, slide_fingerprint
from ..encoders.cache import geometry_digest
from ..errors import EncoderError, EncoderResolutionError
from ..geometry import size_wh
from ..patches import ReadGeometry, SlidePatchSource, TensorSource, as_float, plain_features
from ..slide.resolution import missing_mpp_reason

__all__ = ["EncoderFeatures", "ZoomEncoderFeatures", "cache_group", "check_resolution", "read_geometry"]


def read_geometry(source, batch: int) -> tuple[ReadGeometry, ...] | None:
    """Each slide's :class:`ReadGeometry` of ``source``; None for an in-memory source.

    Raises:
        EncoderError: a source that does not say how its patches are read.
    """
    if isinstance(source, SlidePatchSource):
        return tuple(source.geometry(b) for b in range(batch))
    if isinstance(source, TensorSource):
        return None
    raise EncoderError(None, f"a pretrained encoder needs to know at which µm/px its patches are read, but the patch "
                             f"source {type(source).__name__} is neither a SlidePatchSource (geometry, boxes, "
                             f"extract_slide) nor an in-memory TensorSource: implement SlidePatchSource")


def check_resolution(encoder: PatchEncoder, geometry: ReadGeometry) -> None:
    """Refuse patches read at another µm/px than the encoder's spec (within ``encoder.mpp_tolerance``).

    Raises:
        EncoderResolutionError: another resolution, or a slide without one.
    """
    spec = encoder.spec
    if geometry.read_mpp is None:
        raise EncoderResolutionError(geometry.path, missing_mpp_reason(
            f"encoder {spec.name!r} takes patches at {spec.mpp:g} µm/px", geometry.slide))
    read = float(geometry.read_mpp)
    if abs(read / spec.mpp - 1.0) > encoder.mpp_tolerance:
        raise EncoderResolutionError(geometry.path, (
            f"patches would be read at {read:.4g} µm/px, but encoder {spec.name!r} takes "
            f"{spec.patch_px} px at {spec.mpp:g} µm/px (tolerance {encoder.mpp_tolerance:.0%}): its features "
            f"would be garbage; set the model's patch_mpp to {spec.mpp:g}"))


def cache_group(encoder: PatchEncoder, geometry: ReadGeometry, patch_wh) -> str:
    """The feature cache group of ``encoder``'s features of one slide read with ``geometry``."""
    digest = geometry_digest(**geometry.cache_geometry(size_wh(patch_wh, "patch size")))
    return FeatureCache.group(encoder.digest, slide_fingerprint(geometry.path), digest)


class EncoderFeatures:
    """The feature step for a :class:`~ats_wsi.encoders.PatchEncoder` feature net.

    Called as ``step(encoder, source, xy, patch_wh, like) -> (patches, features [B, n, out_features])``.
    Checks each slide's read resolution (once per slide, µm/px and downsample).
    Frozen with a cache (``encoder.cache``) over a slide source: only the boxes
    the cache lacks are read and encoded, and ``patches`` is then empty
    (``[B, 0, 3, h, w]``).
    """

    def __init__(self):
        self._checked: set[tuple] = set()

    def __call__(self, encoder: PatchEncoder, source, xy: Tensor, patch_wh, like: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(encoder, PatchEncoder):
            raise EncoderError(None, f"EncoderFeatures needs a PatchEncoder as the feature net, got "
                                     f"{type(encoder).__name__}")
        geometry = read_geometry(source, int(xy.shape[0]))
        for g in geometry or ():
            key = (id(g.slide), g.mpp, g.downsample)
            if key not in self._checked:
                check_resolution(encoder, g)
                self._checked.add(key)
        if encoder.cache is None or not encoder.frozen or geometry is None:
            return plain_features(encoder, source, xy, patch_wh, like)
        return _cached(encoder, source, xy, patch_wh, like)


def _cached(encoder: PatchEncoder, source: SlidePatchSource, xy: Tensor, patch_wh,
            like: Tensor) -> tuple[Tensor, Tensor]:
    """Features of the boxes at ``xy``: looked up, and read and encoded only where missing."""
    cache, dim = encoder.cache, encoder.spec.dim
    cache.record_spec(encoder.digest, encoder.spec.to_dict())
    batch, n = xy.shape[:2]
    boxes = source.boxes(xy, patch_wh)
    xywh = boxes.xywh.numpy()  # [B, n, 4] level-0 (x0, y0, w0, h0)
    groups = [cache_group(encoder, g, patch_wh) for g in boxes.geometry]
    out = np.empty((batch, n, dim), dtype=np.float32)
    todo: list[tuple[int, int]] = []
    for b in range(batch):
        for i, found in enumerate(cache.get(groups[b], xywh[b], dim=dim)):
            if found is None:
                todo.append((b, i))
            else:
                out[b, i] = found
    if todo:  # read only the missing boxes, slide by slide (todo is in slide order)
        patches = torch.cat([source.extract_slide(b, xy[b, [i for bb, i in todo if bb == b]], patch_wh)
                             for b in sorted({b for b, _ in todo})])
        with torch.no_grad():
            new = encoder.embed(as_float(patches, like)).cpu().numpy()
        for b in range(batch):
            rows = [k for k, (bb, _) in enumerate(todo) if bb == b]
            if rows:
                cells = [todo[k][1] for k in rows]
                out[b, cells] = new[rows]
                cache.put(groups[b], xywh[b][cells], new[rows])
    features = encoder.adapt(torch.from_numpy(out).to(like.device))
    pw, ph = size_wh(patch_wh, "patch size")
    return torch.empty(batch, 0, 3, int(ph), int(pw), device=like.device), features


class ZoomEncoderFeatures:
    """The stage-3 feature step of a two-stage (zoom) model with a :class:`~ats_wsi.encoders.PatchEncoder`.

    Called as ``step(encoder, source, patch_xy0, like) -> features [B, n1, n2, out_features]``
    (the signature of :func:`ats_wsi.zoom.zoom_features`), ``source`` a
    :class:`~ats_wsi.patches.zoom_source.ZoomSource`. As :class:`EncoderFeatures` for
    one stage: each slide's patch resolution is checked against the spec (once
    per slide); a frozen encoder with a cache (``encoder.cache``) looks each
    patch's level-0 box up and reads and encodes only the boxes it lacks. The
    cache groups are those of one-stage models (spec digest, slide fingerprint,
    read geometry), so both kinds of model share a cache folder.
    """

    def __init__(self):
        self._checked: set[tuple] = set()

    def __call__(self, encoder: PatchEncoder, source, patch_xy0: Tensor, like: Tensor) -> Tensor:
        if not isinstance(encoder, PatchEncoder):
            raise EncoderError(None, f"ZoomEncoderFeatures needs a PatchEncoder as the feature net, got "
                                     f"{type(encoder).__name__}")
        geometry = [source.patch_geometry(b) for b in range(len(source.slides))]
        for g in geometry:
            key = (id(g.slide), g.mpp, g.downsample)
            if key not in self._checked:
                check_resolution(encoder, g)
                self._checked.add(key)
        if encoder.cache is None or not encoder.frozen:
            patches = as_float(source.read_patches(patch_xy0), like)  # [B, n1, n2, C, ph, pw]
            return encoder(patches.flatten(0, 2)).reshape(*patch_xy0.shape[:3], -1)
        return _zoom_cached(encoder, source, geometry, patch_xy0, like)


def _zoom_cached(encoder: PatchEncoder, source, geometry, patch_xy0: Tensor, like: Tensor) -> Tensor:
    """Features of the zoom's patches: looked up by level-0 box, read and encoded only where missing."""
    cache, dim = encoder.cache, encoder.spec.dim
    cache.record_spec(encoder.digest, encoder.spec.to_dict())
    batch, lead = patch_xy0.shape[0], tuple(patch_xy0.shape[1:3])
    corners = patch_xy0.reshape(batch, -1, 2)
    xywh = source.boxes_level0(corners, "patch").numpy()  # [B, n1·n2, 4]
    out = np.empty((batch, corners.shape[1], dim), dtype=np.float32)
    for b in range(batch):
        group = cache_group(encoder, geometry[b], source.patch_wh)
        found = cache.get(group, xywh[b], dim=dim)
        missing = [i for i, f in enumerate(found) if f is None]
        for i, f in enumerate(found):
            if f is not None:
                out[b, i] = f
        if missing:
            pixels = source.read_patches_of(b, corners[b, missing])
            with torch.no_grad():
                new = encoder.embed(as_float(pixels, like)).cpu().numpy()
            out[b, missing] = new
            cache.put(group, xywh[b][missing], new)
    features = encoder.adapt(torch.from_numpy(out).to(like.device))
    return features.reshape(batch, *lead, -1)
