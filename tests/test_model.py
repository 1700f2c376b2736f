"""AttentionSampler and attention_sampling (ats_wsi.model)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ats_wsi import AttentionResult, AttentionSampler, attention_sampling
from ats_wsi.errors import SamplingError
from ats_wsi.nets import create_attention_net, create_feature_net
from ats_wsi.patches import TensorSource
from ats_wsi.sampling import SampleSoftmax, multinomial_entropy, sample
from ats_wsi.geometry import cell_to_xy

from model_helpers import LOW, make_inputs, make_sampler, seeded


# -- what comes back -----------------------------------------------------------

@pytest.mark.parametrize("replace", [False, True])
def test_result_fields_have_the_documented_shapes(replace):
    model = make_sampler(replace=replace)
    x_low, x_high = make_inputs()
    result = model(x_low, x_high, generator=seeded(1))
    assert isinstance(result, AttentionResult)
    assert result.features.shape == (2, 8)
    assert result.attention.shape == (2, *LOW)
    assert torch.allclose(result.attention.sum(dim=(1, 2)), torch.ones(2))
    assert result.positions.shape == (2, 5, 2) and result.positions.dtype == torch.long
    assert result.sampled_attention.shape == (2, 5)
    assert result.patches.shape == (2, 5, 3, 6, 8)  # patch_size (w, h) = (8, 6)
    assert result.xy.shape == (2, 5, 2) and result.xy.dtype == torch.long
    assert result.entropy_loss.shape == ()
    rows, cols = result.positions.unbind(-1)
    assert ((rows >= 0) & (rows < LOW[0]) & (cols >= 0) & (cols < LOW[1])).all()
    batch = torch.arange(2)[:, None]
    assert torch.equal(result.sampled_attention, result.attention[batch, rows, cols])


def test_without_replacement_every_patch_is_a_distinct_cell():
    model = make_sampler(n_patches=30)
    x_low, x_high = make_inputs()
    positions = model(x_low, x_high, generator=seeded(2)).positions
    for b in range(2):
        assert len({tuple(p) for p in positions[b].tolist()}) == 30


def test_with_replacement_more_patches_than_cells_can_be_drawn():
    x_low, x_high = make_inputs()
    cells = LOW[0] * LOW[1]
    result = make_sampler(replace=True, n_patches=cells + 5)(x_low, x_high, generator=seeded(3))
    assert result.positions.shape == (2, cells + 5, 2)



def test_without_replacement_a_map_with_fewer_cells_than_n_patches_gives_all_of_them():
    x_low, x_high = make_inputs()
    cells = LOW[0] * LOW[1]
    result = make_sampler(n_patches=cells + 5)(x_low, x_high, generator=seeded(3))
    assert result.positions.shape == (2, cells, 2)
    for b in range(2):
        assert len({tuple(p) for p in result.positions[b].tolist()}) == cells
    with pytest.raises(SamplingError, match="distinct"):  # the low-level draw still refuses
        sample(torch.full((1, 2, 2), 0.25), 5)


def test_patches_are_cut_at_the_geometry_boxes_of_the_drawn_cells():
    model = make_sampler()
    x_low, x_high = make_inputs()
    result = model(x_low, x_high, generator=seeded(4))
    xy = cell_to_xy(result.positions, low_shape=LOW, map_shape=LOW, scale=(4.0, 4.0),
                    patch_size=(8, 6))
    assert torch.equal(result.xy, xy)
    assert torch.equal(result.patches, TensorSource(x_high).extract(xy, (8, 6)))


def test_uint8_sources_reach_the_feature_net_as_floats_in_unit_range():
    model = make_sampler()
    x_low, x_high = make_inputs()
    x_high8 = (x_high * 255).round().to(torch.uint8)
    result = model(x_low, TensorSource(x_high8), generator=seeded(5))
    assert result.patches.dtype == torch.float32
    expected = TensorSource(x_high8).extract(result.xy, (8, 6)).float() / 255
    assert torch.allclose(result.patches, expected)


class HalfResolutionSource:
    """A custom patch source whose frame is twice the low view (records calls)."""

    def __init__(self, x):
        self.inner, self.calls = TensorSource(x), []

    def scale(self, low_shape):
        return (2.0, 2.0)

    def extract(self, xy, size):
        self.calls.append((xy.clone(), tuple(size)))
        return self.inner.extract(xy, size)


def test_any_patch_source_sets_the_scale_of_the_boxes():
    model = make_sampler(patch_size=4)
    x_low, _ = make_inputs()
    source = HalfResolutionSource(F.interpolate(x_low, scale_factor=2.0))
    result = model(x_low, source, generator=seeded(6))
    (xy, size), = source.calls
    assert size == (4, 4) and torch.equal(xy, result.xy)
    assert torch.equal(xy, cell_to_xy(result.positions, low_shape=LOW, map_shape=LOW, scale=2.0,
                                      patch_size=4))


@pytest.mark.parametrize("patch_wh, receptive_field", [((8, 6), 0), ((6, 8), 0), ((10, 4), (2, 4))])
def test_non_square_patches_are_width_by_height_slices_of_the_source(patch_wh, receptive_field):
    """patch_size is (w, h): each patch is x_high[..., y:y + h, x:x + w] around its cell's block."""
    model = make_sampler(patch_size=patch_wh, receptive_field=receptive_field, n_patches=8)
    x_low, x_high = make_inputs()
    result = model(x_low, x_high, generator=seeded(7))
    w, h = patch_wh
    assert result.patches.shape == (2, 8, 3, h, w)
    padded = F.pad(x_high, (w, w, h, h))  # zeros outside, as the sources give
    rx, ry = (receptive_field, receptive_field) if isinstance(receptive_field, int) else receptive_field
    map_rows, map_cols = result.attention.shape[1:]
    for b in range(2):
        for (row, col), (x, y), patch in zip(result.positions[b].tolist(), result.xy[b].tolist(),
                                             result.patches[b]):
            assert torch.equal(patch, padded[b, :, y + h:y + 2 * h, x + w:x + 2 * w])
            # the box's centre is its cell's centre (within rounding), per axis
            cell_w, cell_h = 4 * (LOW[1] - rx) / map_cols, 4 * (LOW[0] - ry) / map_rows
            assert abs(x + w / 2 - (4 * rx / 2 + (col + 0.5) * cell_w)) <= 0.5
            assert abs(y + h / 2 - (4 * ry / 2 + (row + 0.5) * cell_h)) <= 0.5


def test_patch_size_none_takes_the_low_view_size_as_the_reference():
    model = make_sampler(patch_size=None)
    x_low, x_high = make_inputs()
    assert model(x_low, x_high).patches.shape[-2:] == LOW


# -- masks ---------------------------------------------------------------------

def test_masked_cells_are_never_drawn_and_carry_no_attention():
    model = make_sampler(n_patches=6)
    x_low, x_high = make_inputs()
    mask = torch.zeros(2, *LOW, dtype=torch.bool)
    mask[0, 2:4, 3:7] = True  # 8 cells
    mask[1, 9:, :3] = True  # 9 cells
    for seed in range(5):
        result = model(x_low, x_high, mask, generator=seeded(seed))
        rows, cols = result.positions.unbind(-1)
        assert mask[torch.arange(2)[:, None], rows, cols].all()
        assert (result.attention[~mask] == 0).all()
        assert torch.allclose(result.attention.sum(dim=(1, 2)), torch.ones(2))
    # batch item 0 has only 8 cells: without replacement each map gets as many as the fewest has
    result = make_sampler(n_patches=9)(x_low, x_high, mask, generator=seeded(5))
    assert result.positions.shape == (2, 8, 2)
    rows, cols = result.positions.unbind(-1)
    assert mask[torch.arange(2)[:, None], rows, cols].all()
    assert len({tuple(p) for p in result.positions[0].tolist()}) == 8


# -- deterministic top-k -------------------------------------------------------

def test_deterministic_eval_takes_the_top_k_cells_in_order():
    model = make_sampler(deterministic=True).eval()
    x_low, x_high = make_inputs()
    first = model(x_low, x_high, generator=seeded(0))
    second = model(x_low, x_high, generator=seeded(1))
    assert torch.equal(first.positions, second.positions)
    top = first.attention.flatten(1).topk(5).indices
    cols = LOW[1]
    assert torch.equal(first.positions[..., 0] * cols + first.positions[..., 1], top)


def test_training_draws_at_random_even_when_deterministic_is_set():
    model = make_sampler(deterministic=True, n_patches=20).train()
    x_low, x_high = make_inputs()
    a = model(x_low, x_high, generator=seeded(0)).positions
    b = model(x_low, x_high, generator=seeded(1)).positions
    assert not torch.equal(a, b)
    forced = model(x_low, x_high, deterministic=True).positions
    assert torch.equal(forced, model(x_low, x_high, deterministic=True).positions)


# -- gradients and the entropy term --------------------------------------------

def test_attention_gets_gradient_only_at_the_drawn_cells():
    model = make_sampler()
    x_low, x_high = make_inputs()
    result = model(x_low, x_high, generator=seeded(7))
    grad, = torch.autograd.grad(result.features.sum(), result.attention, retain_graph=True)
    drawn = torch.zeros_like(grad, dtype=torch.bool)
    rows, cols = result.positions.unbind(-1)
    drawn[torch.arange(2)[:, None], rows, cols] = True
    assert (grad[~drawn] == 0).all() and (grad[drawn] != 0).any()
    result.features.sum().backward()
    for net in (model.attention_net, model.feature_net):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_entropy_loss_is_minus_weight_times_mean_entropy():
    x_low, x_high = make_inputs()
    result = make_sampler(entropy=0.5)(x_low, x_high)
    expected = -0.5 * multinomial_entropy(result.attention).mean()
    assert result.entropy_loss.item() < 0
    assert torch.allclose(result.entropy_loss, expected, atol=1e-5)
    assert make_sampler()(x_low, x_high).entropy_loss.item() == 0.0


def test_minimising_the_entropy_loss_raises_the_entropy():
    model = make_sampler(entropy=0.3)
    x_low, x_high = make_inputs()
    params = list(model.attention_net.parameters())
    result = model(x_low, x_high)
    loss_grad = torch.autograd.grad(result.entropy_loss, params, retain_graph=True)
    entropy_grad = torch.autograd.grad(multinomial_entropy(result.attention).mean(), params)
    for g_loss, g_entropy in zip(loss_grad, entropy_grad):  # descent on the loss = ascent on H
        assert torch.allclose(g_loss, -0.3 * g_entropy, atol=1e-6)
    assert sum((g * h).sum() for g, h in zip(loss_grad, entropy_grad)) < 0


# -- tiled attention -------------------------------------------------------------

@pytest.mark.parametrize("pool", [1, 2])
def test_tiled_attention_equals_one_pass_with_its_gradient(pool):
    x_low = torch.rand(2, 3, 45, 37, generator=seeded(0))
    x_high = torch.rand(2, 3, 180, 148, generator=seeded(1))
    maps, grads = [], []
    for threshold in (None, 0):  # never tile, always tile
        torch.manual_seed(0)
        attention = create_attention_net("attention-small", in_channels=3, hidden=4, layers=2, pool=pool)
        feature = create_feature_net("feature-small", in_channels=3, out_features=8, widths=(4,))
        model = AttentionSampler(attention, feature, n_patches=5, patch_size=(8, 6), entropy=0.1,
                                 tile_threshold=threshold, tile_size=16)
        result = model(x_low, x_high, generator=seeded(2))
        (result.features.sum() + result.entropy_loss).backward()
        maps.append(result.attention.detach())
        grads.append([p.grad for p in model.attention_net.parameters()])
    torch.testing.assert_close(maps[1], maps[0], rtol=1e-5, atol=1e-7)
    for tiled_grad, whole_grad in zip(*grads):
        torch.testing.assert_close(tiled_grad, whole_grad, rtol=1e-4, atol=1e-6)


def test_tiled_attention_applies_a_final_sample_softmax_to_the_whole_map():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    net = nn.Sequential(body, SampleSoftmax())
    feature = create_feature_net("feature-small", in_channels=3, out_features=8, widths=(4,))
    x_low = torch.rand(1, 3, 33, 41, generator=seeded(0))
    tiled_model = AttentionSampler(net, feature, n_patches=3, tile_threshold=0, tile_size=8)
    whole_model = AttentionSampler(net, feature, n_patches=3, tile_threshold=None)
    torch.testing.assert_close(tiled_model.attention_map(x_low), whole_model.attention_map(x_low))


# -- the attention net's output ------------------------------------------------

def test_a_net_ending_in_sample_softmax_is_taken_as_probabilities():
    torch.manual_seed(0)
    logits_net = create_attention_net("attention-small", in_channels=3, hidden=4, layers=1)
    feature = create_feature_net("feature-small", in_channels=3, out_features=8, widths=(4,))
    probs_net = nn.Sequential(logits_net, SampleSoftmax())
    x_low, x_high = make_inputs()
    from_logits = AttentionSampler(logits_net, feature, n_patches=3, patch_size=8)
    from_probs = AttentionSampler(probs_net, feature, n_patches=3, patch_size=8)
    assert from_logits.use_logits and not from_probs.use_logits
    assert torch.allclose(from_probs(x_low, x_high).attention, from_logits(x_low, x_high).attention)


def test_an_attention_net_of_the_wrong_rank_is_a_clear_error():
    model = AttentionSampler(nn.Conv2d(3, 2, 1), nn.Flatten(), n_patches=2, patch_size=4)
    x_low, x_high = make_inputs()
    with pytest.raises(SamplingError, match=r"\[B, 1, h', w'\]"):
        model(x_low, x_high)


# -- the reference's functional API ---------------------------------------------

def test_attention_sampling_mirrors_the_reference_arguments():
    attention = create_attention_net("attention-small", in_channels=3, hidden=4, layers=1)
    feature = create_feature_net("feature-small", in_channels=3, out_features=8, widths=(4,))
    model = attention_sampling(attention, feature, patch_size=(8, 6), n_patches=4, replace=True,
                               attention_regularizer=0.01, receptive_field=0)
    assert isinstance(model, AttentionSampler)
    assert (model.n_patches, model.patch_size, model.replace, model.entropy) == (4, (8, 6), True, 0.01)
    x_low, x_high = make_inputs()
    features, attention = model(x_low, x_high)[:2]
    assert features.shape == (2, 8) and attention.shape == (2, *LOW)

    custom = attention_sampling(attention=model.attention_net, feature=model.feature_net,
                                attention_regularizer=lambda a: a.square().sum())
    result = custom(x_low, x_high)
    assert result.patches.shape[-2:] == LOW  # patch_size=None: the low view's size
    assert torch.allclose(result.entropy_loss, result.attention.square().sum())


# -- end to end ------------------------------------------------------------------

SIZE, DOWN, SQUARE = 512, 8, 16


def square_dataset(generator, count):
    """uint8 [count, 1, 512, 512] noise in [0, 64); odd items hold a 16² square of 255.

    Returns (x_high uint8, x_low float [count, 1, 64, 64], labels, square (row, col)).
    """
    labels = torch.arange(count) % 2
    x_high = (torch.rand(count, 1, SIZE, SIZE, generator=generator) * 64).to(torch.uint8)
    corners = torch.randint(0, SIZE - SQUARE + 1, (count, 2), generator=generator)
    for i in labels.nonzero().flatten().tolist():
        r, c = corners[i].tolist()
        x_high[i, :, r:r + SQUARE, c:c + SQUARE] = 255
    x_low = torch.cat([F.avg_pool2d(x_high[i:i + 32].float() / 255, DOWN)
                       for i in range(0, count, 32)])
    return x_high, x_low, labels, corners


def test_training_end_to_end_finds_the_bright_square():
    """Two classes of 512² images; class 1 holds a 16² bright square.

    The attention net sees the 64² average-pooled view and draws 8 of its
    4096 cells; the feature net sees only 32² patches at full resolution.
    After training, the square's cells (at most 3 × 3 of 4096) must hold at
    least half the attention mass on average, i.e. a mean per-cell
    probability ≥ 0.5 / 9 ≈ 0.056, more than 200× the uniform 1/4096, and
    held-out accuracy must be ≥ 90 % (chance: 50 %).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; one core is enough
    try:
        numbers = train_square_classifier()
    finally:
        torch.set_num_threads(threads)
    first, last = numbers["first_loss"], numbers["last_loss"]
    assert last < 0.1 and last < 0.2 * first, numbers
    assert numbers["accuracy"] >= 0.9, numbers
    assert numbers["mean_square_mass"] >= 0.5, numbers


def train_square_classifier() -> dict:
    """Train on the square task; return the losses, accuracy and attention mass."""
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(2)
    x_train, low_train, y_train, _ = square_dataset(g, 256)
    x_test, low_test, y_test, corners = square_dataset(g, 64)
    sampler = AttentionSampler(
        create_attention_net("attention-small", in_channels=1, hidden=8, layers=2),
        create_feature_net("feature-small", in_channels=1, out_features=16, widths=(8, 16)),
        n_patches=8, patch_size=32)
    head = nn.Linear(16, 2)
    optimizer = torch.optim.Adam([*sampler.parameters(), *head.parameters()], lr=3e-3)

    losses = []
    for _ in range(400):
        idx = torch.randint(0, 256, (16,), generator=g)
        result = sampler(low_train[idx], TensorSource(x_train[idx]))
        loss = F.cross_entropy(head(result.features), y_train[idx])
        (loss + result.entropy_loss).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if len(losses) >= 20 and sum(losses[-20:]) / 20 < 0.05:
            break

    sampler.eval()
    head.eval()
    with torch.no_grad():
        result = sampler(low_test, x_test)
        accuracy = (head(result.features).argmax(1) == y_test).float().mean().item()
    masses = []
    for i in y_test.nonzero().flatten().tolist():
        r, c = corners[i].tolist()
        cells = result.attention[i, r // DOWN:(r + SQUARE - 1) // DOWN + 1,
                                 c // DOWN:(c + SQUARE - 1) // DOWN + 1]
        masses.append(cells.sum().item())
    return {"steps": len(losses), "first_loss": sum(losses[:20]) / 20,
            "last_loss": sum(losses[-20:]) / 20, "accuracy": accuracy,
            "mean_square_mass": sum(masses) / len(masses), "min_square_mass": min(masses)}


# -- masks given on the low view's pixels ------------------------------------

def _pooling_sampler(n_patches=2, replace=False, min_tissue=0.0):
    from torch import nn

    from ats_wsi import AttentionSampler

    attention = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(1, 1, 1))  # map = low / 4
    feature = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    return AttentionSampler(attention, feature, n_patches=n_patches, patch_size=4, replace=replace,
                            min_tissue=min_tissue)


def test_pixel_mask_is_pooled_onto_the_attention_grid():
    sampler = _pooling_sampler()
    mask = torch.zeros(1, 16, 24, dtype=torch.bool)
    mask[0, 0, 0] = True  # one pixel of cell (0, 0)
    mask[0, 8:12, 20:24] = True  # all of cell (2, 5)
    grid = sampler.grid_mask(mask, (4, 6))
    expected = torch.zeros(1, 4, 6, dtype=torch.bool)
    expected[0, 0, 0] = expected[0, 2, 5] = True
    assert torch.equal(grid, expected)
    half = _pooling_sampler(n_patches=1, min_tissue=0.5).grid_mask(mask, (4, 6))
    assert half[0, 2, 5] and not half[0, 0, 0] and int(half.sum()) == 1
    # a grid mask of the map's own shape is used as is
    assert sampler.grid_mask(expected, (4, 6)) is expected


def test_a_starved_pooled_mask_is_lifted_but_only_for_that_image():
    sampler = _pooling_sampler(n_patches=3)
    mask = torch.zeros(2, 16, 24, dtype=torch.bool)
    mask[0, :8] = True  # image 0: 12 cells of tissue
    mask[1, 0, 0] = True  # image 1: a single cell, fewer than n = 3
    grid = sampler.grid_mask(mask, (4, 6))
    assert int(grid[0].sum()) == 12 and bool(grid[1].all())


def test_forward_never_draws_outside_a_pixel_mask():
    torch.manual_seed(0)
    sampler = _pooling_sampler(n_patches=4)
    x_low = torch.rand(3, 1, 16, 24)
    mask = torch.zeros(3, 16, 24, dtype=torch.bool)
    mask[:, 4:12, 8:20] = True  # cells rows 1-2, cols 2-4
    for seed in range(5):
        res = sampler(x_low, torch.rand(3, 1, 64, 96), mask, generator=torch.Generator().manual_seed(seed))
        rows, cols = res.positions[..., 0], res.positions[..., 1]
        assert bool(((rows >= 1) & (rows <= 2) & (cols >= 2) & (cols <= 4)).all())
        assert torch.allclose(res.attention.sum(dim=(1, 2)), torch.ones(3))
        assert float(res.attention.detach()[:, 0].abs().sum()) == 0.0


# -- tile-aligned sampling ------------------------------------------------------

def test_tile_aligned_boxes_are_whole_grid_boxes_of_the_source():
    torch.manual_seed(0)
    from torch import nn

    from ats_wsi import AttentionSampler

    attention = nn.Conv2d(1, 1, 1)
    feature = nn.Sequential(nn.Flatten(), nn.LazyLinear(2))
    sampler = AttentionSampler(attention, feature, n_patches=5, patch_size=16, tile_aligned=True)
    x_high = torch.rand(2, 1, 96, 128)
    res = sampler(torch.rand(2, 1, 12, 16), x_high)  # one cell = 8 high px, patches of 16
    assert bool((res.xy % 16 == 0).all())
    for b in range(2):
        for (x, y), patch in zip(res.xy[b].tolist(), res.patches[b]):
            assert torch.equal(patch, x_high[b, :, y:y + 16, x:x + 16])
