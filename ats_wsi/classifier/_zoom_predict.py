"""Prediction of a two-stage (zoom) model: :meth:`SlideClassifier.predict`'s path when ``config.zoom_mpp`` is set.

The stage-1 map is computed once: by default streamed, the low view read tile by tile and
never held whole (:meth:`~ats_wsi.model.AttentionSampler.attend_streamed`, as one stage
predicts), so memory holds the float map and not the view; ``stream=False`` holds the
whole view (the training path). Each sampling then draws ``zoom_regions`` regions, reads
them at ``zoom_mpp``, draws ``n_patches`` cells in each and reads their patches
(:meth:`ats_wsi.zoom.ZoomSampler.draw`): memory and reads grow with ``n1`` regions and
``n1 · n2`` patches, not with the slide.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import PredictionError
from ..geometry import cell_grid_level0
from ..slide.lowview import TissueThreshold
from .prediction import NOT_FINITE, SlidePrediction, slide_seed

__all__ = ["predict_zoom"]


def predict_zoom(model, item, start: float, *, samples: int, n_patches: int | None, seed: int,
                 deterministic: bool, stream: bool = True) -> SlidePrediction:
    """One slide through a two-stage :class:`~ats_wsi.classifier.SlideClassifier` (``model``, in eval mode).

    Args:
        model: the classifier (its ``sampler`` a :class:`~ats_wsi.zoom.ZoomSampler`).
        item: the :class:`~ats_wsi.classifier.SlideInput` (its ``source`` a ZoomSource).
        start: ``time.perf_counter()`` when the prediction began.
        samples: samplings whose class probabilities are averaged.
        n_patches: cells drawn per region (``None``: the config's).
        seed: base seed (:func:`slide_seed`).
        deterministic: the top cells at both stages instead of draws.
        stream: the stage-1 map from the low view read tile by tile (False: the whole view held).

    Returns:
        :class:`SlidePrediction` with :attr:`~SlidePrediction.zoom` set.
    """
    from ..zoom import zoom_record

    device, sampler = model.device, model.sampler
    source = item.source(device)
    generator = torch.Generator(device=device).manual_seed(slide_seed(item.path, seed))
    probs, boxes, box_attention, features, embeddings, records = [], [], [], [], [], []
    pixels = 0
    with model.sampling(None, n_patches=n_patches):
        if stream:
            attention, mask1 = sampler.stage1.attend_streamed(item.low.read, item.low.shape, tissue=TissueThreshold())
            like, low_shape = attention, tuple(item.low.shape)
        else:
            x_low, mask = item.low_inputs(device)
            attention, mask1 = sampler.stage1.attend(x_low, mask)
            like, low_shape = x_low, tuple(x_low.shape[-2:])
        for _ in range(samples):
            result = sampler.draw(attention, mask1, source, low_shape=low_shape, like=like,
                                  generator=generator, deterministic=deterministic)
            logits = model.slide_logits(result).float()
            if not bool(torch.isfinite(logits).all()):
                raise PredictionError(item.path, NOT_FINITE)
            probs.append(model.slide_probabilities(result, logits)[0].cpu())
            patch_boxes = source.boxes_level0(result.patch_xy0.cpu(), "patch")[0].reshape(-1, 4)
            region_boxes = source.boxes_level0(result.region_xy0.cpu(), "region")[0]
            pixels += int((patch_boxes[:, 2] * patch_boxes[:, 3]).sum() + (region_boxes[:, 2] * region_boxes[:, 3]).sum())
            boxes.append(patch_boxes)
            joint = result.region_attention[0, :, None] * result.sampled_attention[0]  # a1 · a2, [n1, n2]
            box_attention.append(joint.reshape(-1).float().cpu())
            embeddings.append(result.features[0].float().reshape(-1).cpu())
            features.append(result.patch_features[0].float().reshape(joint.numel(), -1).cpu())
            records.append(zoom_record(result, source, 0, sampler.stage2.receptive_field))
    p = torch.stack(probs).mean(0).numpy()
    boxes_xywh = torch.cat(boxes).numpy().astype(np.int64)
    attention_np = attention[0].float().cpu().numpy()
    cell_wh, origin_xy = cell_grid_level0(low_shape=low_shape, map_shape=attention_np.shape,
                                          low_downsample=item.low.downsample, receptive_field=sampler.receptive_field)
    w0, h0 = item.slide.dimensions
    return SlidePrediction(
        slide=str(item.path), probabilities=p, predicted=model.decide(p), class_names=model.class_names,
        attention=attention_np, cell_size_xy=cell_wh, origin_xy=origin_xy, boxes_xywh=boxes_xywh,
        box_attention=torch.cat(box_attention).numpy(), seconds=time.perf_counter() - start,
        patches_read=len(boxes_xywh), pixels_read=pixels, slide_pixels=int(w0) * int(h0), mpp=item.slide.mpp,
        low_downsample=float(item.low.downsample), patch_features=torch.cat(features).numpy(),
        embeddings=torch.stack(embeddings).numpy(), zoom=records,
    )
