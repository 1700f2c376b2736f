"""ZoomSampler end to end on a real tiled TIFF (tifffile, 0.25 µm/px, levels 1/2/4/8):
low view -> stage-1 attention -> regions at 1 µm/px -> stage-2 attention -> patches at
0.25 µm/px -> features -> nested estimator; gradients reach both attention nets and
the feature net, and training moves both stages' attention towards what the loss wants."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ats_wsi.errors import SamplingError
from ats_wsi.patches.zoom_source import ZoomSource
from ats_wsi.slide import open_slide
from ats_wsi.zoom import ZoomSampler

LOW_LEVEL = 3  # downsample 8, pooled 4 x 4: a low view of 93 x 62 px at downsample 32
LOW_DS = 32.0
N1, N2 = 3, 2


class Darkness(nn.Module):
    """Feature: 1 − mean intensity of a patch, times a learnt scale ``[N, C, h, w] -> [N, 1]``."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, patches):
        return (1 - patches.mean(dim=(1, 2, 3)))[:, None] * self.scale


def _nets():
    stage1 = nn.Conv2d(3, 1, kernel_size=2, stride=2)  # a cell = 2 low px = 64 level-0 px
    stage2 = nn.Conv2d(3, 1, kernel_size=8, stride=8)  # regions of 64 px at 1 µm/px -> 8 x 8 cells
    for net in (stage1, stage2):
        nn.init.zeros_(net.weight), nn.init.zeros_(net.bias)  # uniform attention to start
    return stage1, stage2


@pytest.fixture(scope="module")
def slide_and_view(tiff_pyramid_deflate):
    slide = open_slide(tiff_pyramid_deflate.path)
    low = slide.read_region((0, 0), LOW_LEVEL, slide.level_dimensions[LOW_LEVEL])
    x_low = nn.functional.avg_pool2d(torch.from_numpy(low).permute(2, 0, 1)[None].float() / 255, 4)
    yield slide, x_low
    slide.close()


def _source(slide, **kwargs):
    return ZoomSource([slide], low_downsample=LOW_DS, zoom_mpp=1.0, zoom_size=64.0,
                      patch_mpp=0.25, patch_size=32, **kwargs)


def test_one_pass_has_the_shapes_and_the_gradients_reach_every_net(slide_and_view):
    slide, x_low = slide_and_view
    stage1, stage2 = _nets()
    nn.init.normal_(stage1.weight, std=0.1), nn.init.normal_(stage2.weight, std=0.1)
    feature_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = ZoomSampler(stage1, stage2, feature_net, N1, N2, entropy=0.01, zoom_entropy=0.01)
    source = _source(slide)
    out = model(x_low, source, generator=torch.Generator().manual_seed(0))
    assert out.features.shape == (1, 4)
    assert out.attention.shape == (1, 31, 46) and out.zoom_attention.shape == (1, N1, 8, 8)
    assert out.region_positions.shape == (1, N1, 2) and out.positions.shape == (1, N1, N2, 2)
    assert out.patch_xy0.shape == (1, N1, N2, 2) and out.patch_features.shape == (1, N1, N2, 4)
    # the probabilities the estimator weighs are the maps' own at the drawn cells
    r, c = out.region_positions[0].unbind(-1)
    assert torch.equal(out.region_attention[0], out.attention[0, r, c])
    for k in range(N1):
        r2, c2 = out.positions[0, k].unbind(-1)
        assert torch.equal(out.sampled_attention[0, k], out.zoom_attention[0, k, r2, c2])
    # each patch lies inside its region's square
    side0 = 64 * source.zoom_downsample(0)
    centre = out.patch_xy0 + 16 * source.patch_downsample(0)
    assert ((centre >= out.region_xy0[:, :, None]) & (centre <= out.region_xy0[:, :, None] + side0)).all()
    # the estimate is the nested estimator of the patch features actually read
    patches = source.read_patches(out.patch_xy0).float() / 255
    each = feature_net(patches.flatten(0, 2)).reshape(1, N1, N2, 4)
    assert torch.allclose(each, out.patch_features)
    (out.features.sum() + out.entropy_loss).backward()
    for name, net in (("stage 1", stage1), ("stage 2", stage2), ("features", feature_net)):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    source.close()


def _mean_estimate(model, x_low, source, draws=8, seed=100):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(torch.stack([model(x_low, source, generator=gen).features[0, 0] for _ in range(draws)]).mean())


def test_training_moves_both_stages_towards_dark_tissue(slide_and_view):
    """Maximise the estimated darkness with the attention nets only: after 12 steps the
    estimator's mean (8 draws) has risen, and so has each stage's exact attention-weighted
    darkness of its own view (stage 1 on the low view; stage 2 on the regions drawn)."""
    slide, x_low = slide_and_view
    torch.manual_seed(0)
    stage1, stage2 = _nets()
    model = ZoomSampler(stage1, stage2, Darkness(), N1, N2, replace_regions=False, replace=True)
    source = _source(slide)
    before = _mean_estimate(model, x_low, source)
    opt = torch.optim.Adam([*stage1.parameters(), *stage2.parameters()], lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        out = model(x_low, source, generator=gen)
        opt.zero_grad()
        (-out.features.mean()).backward()
        opt.step()
    after = _mean_estimate(model, x_low, source)
    assert after > before + 0.1, (before, after)
    # stage 1: attention-weighted darkness of the low view's cells
    cells = (1 - x_low.mean(dim=1))[0].unfold(0, 2, 2).unfold(1, 2, 2).mean(dim=(2, 3))  # [31, 46]
    with torch.no_grad():
        a1 = model.stage1.attend(x_low)[0][0]
        weighted, uniform = float((a1 * cells).sum()), float(cells.mean())  # uniform: where training started
        assert weighted > uniform + 0.03, (weighted, uniform)
        # stage 2: on the regions of the last draw, the map favours their darker cells
        pixels = source.read_regions(out.region_xy0).float().flatten(0, 1) / 255
        a2 = model.stage2.attend(pixels)[0]  # [n1, 8, 8]
        dark2 = (1 - pixels.mean(dim=1)).unfold(1, 8, 8).unfold(2, 8, 8).mean(dim=(3, 4))
        weighted, uniform = float((a2 * dark2).sum(dim=(1, 2)).mean()), float(dark2.mean())
        assert weighted > uniform + 0.04, (weighted, uniform)
    source.close()


def test_deterministic_prediction_takes_the_top_cells_and_sampling_stays_the_default(slide_and_view):
    slide, x_low = slide_and_view
    stage1, stage2 = _nets()
    nn.init.normal_(stage1.weight, std=0.5), nn.init.normal_(stage2.weight, std=0.5)
    model = ZoomSampler(stage1, stage2, Darkness(), N1, N2, deterministic=True).eval()
    source = _source(slide)
    with torch.no_grad():
        out = model(x_low, source)
        top = out.attention.flatten(1).topk(N1).indices
        assert (out.region_positions[..., 0] * 46 + out.region_positions[..., 1] == top).all()
        top2 = out.zoom_attention.flatten(2).topk(N2).indices  # [1, n1, n2]: each region's own top cells
        assert (out.positions[..., 0] * 8 + out.positions[..., 1] == top2).all()
        a = model(x_low, source, deterministic=False, generator=torch.Generator().manual_seed(3))
        b = model(x_low, source, deterministic=False, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a.positions, b.positions) or not torch.equal(a.region_positions, b.region_positions)
    source.close()


def test_a_source_of_another_batch_is_refused(slide_and_view):
    slide, x_low = slide_and_view
    model = ZoomSampler(*_nets(), Darkness(), N1, N2)
    source = _source(slide)
    with pytest.raises(SamplingError, match="1 slides for a batch of 2"):
        model(x_low.expand(2, -1, -1, -1), source)
    source.close()


def test_the_zoom_as_geojson_places_regions_tiles_and_patches_on_the_slide(slide_and_view):
    import json

    from ats_wsi.geojson import zoom_geojson
    from ats_wsi.zoom import zoom_record

    slide, x_low = slide_and_view
    stage1, stage2 = _nets()
    nn.init.normal_(stage1.weight, std=0.5), nn.init.normal_(stage2.weight, std=0.5)
    model = ZoomSampler(stage1, stage2, Darkness(), N1, N2)
    source = _source(slide)
    with torch.no_grad():
        out = model(x_low, source, generator=torch.Generator().manual_seed(5))
    data = json.loads(json.dumps(zoom_geojson(zoom_record(out, source), slide="s.tif")))
    by_kind = {}
    for f in data["features"]:
        by_kind.setdefault(f["properties"]["name"].split(" ")[0], []).append(f)
    regions, tiles, patches = by_kind["zoom"][:N1], by_kind["zoom"][N1:], by_kind["patch"]
    assert [f["properties"]["name"] for f in regions] == [f"zoom region {k + 1}" for k in range(N1)]
    assert len(patches) == N1 * N2 and all(f["properties"]["name"] == "zoom tile" for f in tiles)
    side0 = round(64 * source.zoom_downsample(0))  # 256 level-0 px (the level is 3.999x, boxes are rounded)
    for k, f in enumerate(regions):
        x, y = out.region_xy0[0, k].tolist()
        assert f["geometry"]["coordinates"][0][:3] == [[x, y], [x + side0, y], [x + side0, y + side0]]
        assert f["properties"]["measurements"]["attention_probability"] == pytest.approx(
            float(out.region_attention[0, k]))

    def box(f):
        ring = np.asarray(f["geometry"]["coordinates"][0])
        return ring.min(axis=0), ring.max(axis=0)

    for f in tiles + patches:
        k = f["properties"]["measurements"]["region"] - 1
        lo, hi = box(f)
        x, y = out.region_xy0[0, k].tolist()
        centre = (lo + hi) / 2
        assert x <= centre[0] <= x + side0 and y <= centre[1] <= y + side0
    # the strongest tile of region 1: its cell's box and attention x 64 cells
    a2 = out.zoom_attention[0, 0]
    r, c = divmod(int(a2.argmax()), 8)
    first = [f for f in tiles if f["properties"]["measurements"]["region"] == 1][0]
    x, y = out.region_xy0[0, 0].tolist()
    cell0 = 8 * source.zoom_downsample(0)  # 8 px at 1 µm/px: 32 level-0 px a cell (31.99: the level is 3.999x)
    assert box(first)[0].tolist() == pytest.approx([x + c * cell0, y + r * cell0])
    assert first["properties"]["measurements"]["attention"] == pytest.approx(float(a2.max()) * 64)
    source.close()


def test_regions_drawn_with_replacement_and_a_tissue_mask(slide_and_view):
    """Stage 1 with replacement over a mask of 2 cells: 6 draws land only on those cells, a
    region drawn twice gets its own stage-2 draws, and the estimate still backpropagates."""
    slide, x_low = slide_and_view
    stage1, stage2 = _nets()
    nn.init.normal_(stage2.weight, std=0.5)
    model = ZoomSampler(stage1, stage2, Darkness(), 6, 4, replace_regions=True, replace=False)
    mask = torch.zeros(1, 31, 46, dtype=torch.bool)
    mask[0, 10, 20] = mask[0, 15, 30] = True
    source = _source(slide)
    out = model(x_low, source, mask, generator=torch.Generator().manual_seed(2))
    drawn = {tuple(p) for p in out.region_positions[0].tolist()}
    assert drawn <= {(10, 20), (15, 30)}
    assert torch.allclose(out.region_attention, torch.full((1, 6), 0.5))
    cells = [tuple(p) for p in out.region_positions[0].tolist()]
    same = [i for i in range(6) if cells[i] == max(drawn, key=cells.count)]  # 6 draws on 2 cells: one repeats
    assert len(same) >= 2 and any(not torch.equal(out.positions[0, same[0]], out.positions[0, j]) for j in same[1:])
    out.features.sum().backward()
    assert stage2.weight.grad.abs().sum() > 0
    source.close()


def test_stage_2_draws_only_where_the_stage_1_mask_keeps_tissue(slide_and_view):
    """Regions drawn from a strip of tissue 4 stage-1 cells wide reach over both its edges;
    stage 2 draws no cell whose pixels all lie in stage-1 cells the mask drops (no patch on
    the glass beside the tissue)."""
    from ats_wsi.geometry import cell_grid_level0

    slide, x_low = slide_and_view
    stage1, stage2 = _nets()
    nn.init.normal_(stage2.weight, std=0.5)
    model = ZoomSampler(stage1, stage2, Darkness(), 4, 6, replace=True)
    mask = torch.zeros(1, 31, 46, dtype=torch.bool)
    mask[0, :, 16:20] = True
    source = _source(slide)
    (cw, _), (ox, _) = cell_grid_level0(low_shape=tuple(x_low.shape[-2:]), map_shape=(31, 46),
                                        low_downsample=LOW_DS, receptive_field=model.stage1.receptive_field)
    left, right = ox + 16 * cw, ox + 20 * cw  # level-0 x of the strip's edges
    cell2 = 8 * source.zoom_downsample(0)  # a stage-2 cell: 8 region px
    side = 64 * source.zoom_downsample(0)  # a region: 64 region px
    centres, over = [], 0
    for seed in range(8):
        out = model(x_low, source, mask, generator=torch.Generator().manual_seed(seed))
        x0 = out.region_xy0[0, :, 0].double()
        over += int(((x0 < left) | (x0 + side > right)).sum())
        centres.append(out.patch_xy0[0].reshape(-1, 2).double()[:, 0] + source.patch_wh[0] * source.patch_downsample(0) / 2)
    centres = torch.cat(centres)
    assert over == 32  # every region (256 level-0 px) is wider than the strip (4 x 64): all reach over an edge
    assert float(centres.min()) > left - cell2 and float(centres.max()) < right + cell2  # one stage-2 cell's slack
    source.close()


def test_a_slide_file_end_to_end_with_zoom_inputs(tmp_path):
    """write_synthetic_slide (Aperio JPEG, 0.5 µm/px) -> zoom_inputs at 8 µm/px -> one pass;
    the low view is the slide at 8 µm/px and the draws stay on its tissue."""
    from ats_wsi.data.synthetic import write_synthetic_slide
    from ats_wsi.zoom import zoom_inputs

    write_synthetic_slide(tmp_path / "s.svs", 1536, 1024, seed=3, n_lesions=1, lesion_size_um=(60.0, 120.0))
    with open_slide(tmp_path / "s.svs") as slide:
        x_low, mask, source = zoom_inputs(slide, low_mpp=8.0, zoom_mpp=2.0, zoom_size=128.0, patch_mpp=0.5,
                                          patch_size=32, cache_bytes=0)
        assert x_low.shape == (1, 3, 64, 96) and mask.shape == (1, 64, 96) and 0 < mask.float().mean() < 1
        assert source.region_wh == (64, 64) and source.zoom_downsample(0) == 4.0
        stage1, stage2 = _nets()  # 2 x 2 px cells at 8 µm/px; regions of 64 px -> 8 x 8 cells
        out = ZoomSampler(stage1, stage2, Darkness(), 3, 2)(x_low, source, mask,
                                                           generator=torch.Generator().manual_seed(0))
        grid = nn.functional.max_pool2d(mask[:, None].float(), 2)[:, 0].bool()  # tissue cells of the map
        assert grid[0][out.region_positions[0, :, 0], out.region_positions[0, :, 1]].all()
        assert out.features.shape == (1, 1) and torch.isfinite(out.features).all()
        source.close()
    with pytest.raises(SamplingError, match="exactly one of low_mpp"):
        with open_slide(tmp_path / "s.svs") as slide:
            zoom_inputs(slide, zoom_mpp=2.0, zoom_size=128.0, patch_mpp=0.5, patch_size=32)
