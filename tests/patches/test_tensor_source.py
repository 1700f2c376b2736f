"""TensorSource: one vectorised gather with zero padding (ats_wsi.patches.tensor)."""
import pytest
import torch

from ats_wsi.errors import SamplingError
from ats_wsi.patches import PatchSource, TensorSource

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def naive_patches(x, xy, size):
    """Slice each box of ``size`` = (w, h), pasting the part inside the image into a zero patch."""
    pw, ph = size
    batch, channels, height, width = x.shape
    out = torch.zeros(batch, xy.shape[1], channels, ph, pw, dtype=x.dtype, device=x.device)
    for b in range(batch):
        for i in range(xy.shape[1]):
            x0, y0 = xy[b, i].tolist()
            r0, r1 = max(y0, 0), min(y0 + ph, height)
            c0, c1 = max(x0, 0), min(x0 + pw, width)
            if r0 < r1 and c0 < c1:
                out[b, i, :, r0 - y0:r1 - y0, c0 - x0:c1 - x0] = x[b, :, r0:r1, c0:c1]
    return out


def random_boxes(generator, batch, n, image_hw, size):
    """Top-left (x, y) [B, n, 2]: inside, across every border, and fully outside."""
    (height, width), (pw, ph) = image_hw, size
    x0 = torch.randint(-2 * pw, width + pw, (batch, n), generator=generator)
    y0 = torch.randint(-2 * ph, height + ph, (batch, n), generator=generator)
    xy = torch.stack([x0, y0], dim=-1)
    xy[:, 0] = torch.tensor([-pw, -ph])  # fully outside, top-left
    xy[:, 1] = torch.tensor([width, height])  # fully outside, bottom-right
    xy[:, 2] = torch.tensor([width - pw, height - ph])  # flush with the far corner
    xy[:, 3] = torch.tensor([-1, height - ph + 1])  # one pixel over two borders
    return xy


def make_image(generator, shape, dtype):
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.rand(shape, generator=generator, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("channels, image_hw, size", [
    (1, (37, 61), (8, 8)),  # non-square image
    (3, (64, 45), (5, 12)),  # non-square patch, (w, h)
    (3, (20, 30), (1, 1)),
])
def test_extract_equals_naive_slicing_with_zero_padding(device, dtype, channels, image_hw, size):
    g = torch.Generator().manual_seed(channels * 1000 + image_hw[0])
    x = make_image(g, (3, channels, *image_hw), dtype).to(device)
    xy = random_boxes(g, 3, 40, image_hw, size).to(device)
    patches = TensorSource(x).extract(xy, size)
    assert patches.shape == (3, 40, channels, size[1], size[0])  # [B, n, C, h, w]
    assert patches.dtype == dtype and patches.device.type == device
    assert torch.equal(patches, naive_patches(x, xy, size))


def test_patches_larger_than_the_image_are_padded_all_round():
    g = torch.Generator().manual_seed(1)
    x = make_image(g, (2, 3, 6, 9), torch.float32)
    xy = torch.tensor([[[-3, -2], [0, 0]], [[-10, 4], [2, -1]]])
    assert torch.equal(TensorSource(x).extract(xy, (11, 7)), naive_patches(x, xy, (11, 7)))


@pytest.mark.parametrize("view", ["channels_last", "cropped", "flipped"])
def test_strided_views_are_read_without_copying_them_first(view):
    g = torch.Generator().manual_seed(2)
    base = make_image(g, (2, 3, 40, 50), torch.float32)
    x = {
        "channels_last": base.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
        "cropped": base[:, 1:, 3:31, 5:47],
        "flipped": base.flip(-1),
    }[view]
    xy = random_boxes(g, 2, 30, x.shape[-2:], (9, 7))
    assert torch.equal(TensorSource(x).extract(xy, (9, 7)), naive_patches(x, xy, (9, 7)))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_boxes_over_the_first_and_last_pixel_of_the_batch_are_exact(dtype):
    # a run of a box over the batch's very first (last) row that starts left
    # of (ends right of) the image would leave the tensor's storage
    g = torch.Generator().manual_seed(5)
    x = make_image(g, (2, 3, 12, 16), dtype)
    xy = torch.tensor([[[-1, 0], [-3, -2], [-5, 11], [14, 11]],
                       [[-1, 0], [13, 8], [14, 11], [16, 12]]])
    assert torch.equal(TensorSource(x).extract(xy, (4, 5)), naive_patches(x, xy, (4, 5)))


def test_int_size_means_a_square_patch():
    x = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)
    xy = torch.tensor([[[1, 2]], [[3, 4]]])
    assert torch.equal(TensorSource(x).extract(xy, 4), naive_patches(x, xy, (4, 4)))


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_reaches_the_image_and_skips_the_padding(device):
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 17, 23, generator=g, dtype=torch.float64)
    xy = random_boxes(g, 2, 25, (17, 23), (6, 5)).to(device)
    weights = torch.rand(2, 25, 3, 5, 6, generator=g, dtype=torch.float64).to(device)

    x = image.to(device).requires_grad_()
    (TensorSource(x).extract(xy, (6, 5)) * weights).sum().backward()
    x_ref = image.to(device).requires_grad_()
    (naive_patches(x_ref, xy, (6, 5)) * weights).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad)  # overlapping patches accumulate


def test_extract_without_grad_mode_gives_the_same_patches():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 30, 40, generator=g).requires_grad_()
    xy = random_boxes(g, 2, 20, (30, 40), (8, 8))
    with torch.no_grad():
        fast = TensorSource(x).extract(xy, (8, 8))
    assert torch.equal(fast, TensorSource(x).extract(xy, (8, 8)).detach())


def test_scale_is_high_pixels_per_low_pixel_per_axis():
    source = TensorSource(torch.zeros(1, 3, 600, 400))
    assert source.scale((75, 100)) == (8.0, 4.0)
    assert source.scale(torch.Size([1, 3, 60, 40])) == (10.0, 10.0)


def test_tensor_source_satisfies_the_patch_source_protocol():
    assert isinstance(TensorSource(torch.zeros(1, 1, 4, 4)), PatchSource)


@pytest.mark.parametrize("x, xy, size", [
    (torch.zeros(3, 4, 4), torch.zeros(3, 1, 2, dtype=torch.long), 2),  # not [B, C, H, W]
    (torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 2, dtype=torch.long), 2),  # batch mismatch
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 3, dtype=torch.long), 2),  # not (x, y)
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 2), 2),  # float pixels
    (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 2, dtype=torch.long), (0, 3)),
])
def test_bad_arguments_raise_sampling_error(x, xy, size):
    with pytest.raises(SamplingError):
        TensorSource(x).extract(xy, size)
