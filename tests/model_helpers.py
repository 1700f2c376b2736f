"""A small AttentionSampler and inputs for the model tests (test_model.py, test_model_sampler.py)."""
import torch
import torch.nn.functional as F

from ats_wsi import AttentionSampler
from ats_wsi.nets import create_attention_net, create_feature_net

LOW, HIGH = (12, 10), (48, 40)  # (rows, cols): scale 4 on both axes


def make_sampler(**kw):
    torch.manual_seed(0)
    attention = create_attention_net("attention-small", in_channels=3, hidden=4, layers=1)
    feature = create_feature_net("feature-small", in_channels=3, out_features=8, widths=(4,))
    return AttentionSampler(attention, feature, **{"n_patches": 5, "patch_size": (8, 6), **kw})


def make_inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_high = torch.rand(batch, 3, *HIGH, generator=g)
    return F.avg_pool2d(x_high, 4), x_high


def seeded(seed):
    return torch.Generator().manual_seed(seed)
