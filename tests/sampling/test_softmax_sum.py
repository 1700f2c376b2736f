"""A large map's softmax sums to 1 within the samplers' tolerance (its float32 normaliser alone drifts)."""
import torch

from ats_wsi.sampling import SampleSoftmax, sample


def test_a_map_of_millions_of_cells_sums_to_1_and_can_be_sampled():
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 1600, 1600) * 3  # 2.56 M cells, as a 100k² slide's stage-1 map
    plain = torch.softmax(logits.reshape(1, -1), dim=1).sum(dtype=torch.float64).item()
    a = SampleSoftmax(smoothing=0.1)(logits)
    total = a.sum(dtype=torch.float64).item()
    assert abs(total - 1) < 1e-5, (total, plain)
    masked = SampleSoftmax()(logits, torch.rand(1, 1600, 1600) > 0.3)
    assert abs(masked.sum(dtype=torch.float64).item() - 1) < 1e-5
    cells, _ = sample(a, 8, replace=False, generator=torch.Generator().manual_seed(1))
    assert cells.shape[:2] == (1, 8)
