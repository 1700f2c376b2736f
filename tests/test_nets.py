"""Attention and feature nets by name (ats_wsi.nets)."""
import sys

import pytest
import torch

from ats_wsi.nets import (
    create_attention_net,
    create_feature_net,
    list_attention_nets,
    list_feature_nets,
    register_feature_net,
)


def test_builtin_names_are_listed():
    assert "attention-small" in list_attention_nets()
    assert {"feature-small", "feature-medium"} <= set(list_feature_nets())


@pytest.mark.parametrize("pool", [1, 2])
def test_attention_net_gives_one_logit_per_cell_with_same_padding(pool):
    net = create_attention_net("attention-small", in_channels=3, pool=pool)
    out = net(torch.rand(2, 3, 22, 17))
    assert out.shape == (2, 1, 22 // pool, 17 // pool)


@pytest.mark.parametrize("layers, pool", [(1, 1), (3, 1), (2, 2)])
def test_attention_net_receptive_field_is_what_the_gradient_reaches(layers, pool):
    torch.manual_seed(0)
    net = create_attention_net("attention-small", in_channels=1, layers=layers, pool=pool).double()
    x = torch.rand(1, 1, 40, 40, dtype=torch.float64, requires_grad=True)
    out = net(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = x.grad[0, 0].abs().sum(dim=1).nonzero().flatten()
    assert int(rows.max() - rows.min() + 1) == net.receptive_field == pool * (1 + 2 * layers)


@pytest.mark.parametrize("layers, pool", [(1, 2), (3, 4)])
def test_attention_net_pooling_last_sees_the_full_view_and_says_its_receptive_field(layers, pool):
    torch.manual_seed(0)
    net = create_attention_net("attention-small", in_channels=1, layers=layers, pool=pool,
                               pool_first=False).double()
    x = torch.rand(1, 1, 40, 40, dtype=torch.float64, requires_grad=True)
    out = net(x)
    assert out.shape == (1, 1, 40 // pool, 40 // pool)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = x.grad[0, 0].abs().sum(dim=1).nonzero().flatten()
    assert int(rows.max() - rows.min() + 1) == net.receptive_field == 2 * layers + pool


@pytest.mark.parametrize("name", ["feature-small", "feature-medium"])
def test_feature_nets_map_patches_to_vectors(name):
    net = create_feature_net(name, in_channels=1, out_features=12)
    assert net(torch.rand(5, 1, 32, 24)).shape == (5, 12)
    assert net(torch.rand(3, 1, 7, 9)).shape == (3, 12)  # odd sizes pool with ceil


def test_config_of_names_and_numbers_builds_the_same_net_again():
    net = create_feature_net("feature-small", in_channels=3, out_features=10, widths=(4, 6))
    assert net.config == {"name": "feature-small", "in_channels": 3, "out_features": 10,
                          "widths": (4, 6)}
    again = create_feature_net(**net.config)
    again.load_state_dict(net.state_dict())  # same architecture, parameter for parameter
    attention = create_attention_net("attention-small", in_channels=1, hidden=5)
    create_attention_net(**attention.config).load_state_dict(attention.state_dict())


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="feature-small"):
        create_feature_net("feature-huge")
    with pytest.raises(ValueError, match="attention-small"):
        create_attention_net("attention-huge")
    with pytest.raises(ValueError, match="timm"):
        create_feature_net("keras:resnet")


def test_external_backbones_are_feature_nets_only():
    with pytest.raises(ValueError, match="feature nets only"):
        create_attention_net("timm:resnet18")


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_missing_backbone_library_is_a_clear_import_error(library, monkeypatch):
    monkeypatch.setitem(sys.modules, library, None)  # makes `import library` fail
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match=f"pip install {library}"):
        create_feature_net(f"{library}:resnet18")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_feature_net("feature-small")(lambda **kw: None)


def test_a_leaky_attention_net_passes_a_gradient_where_a_relu_net_is_dead():
    import torch

    from ats_wsi.nets import create_attention_net

    x = torch.rand(1, 3, 16, 16)
    grads = {}
    for act in ("relu", "leaky"):
        torch.manual_seed(0)
        net = create_attention_net("attention-small", hidden=4, layers=2, pool=1, act=act)
        with torch.no_grad():  # every hidden unit negative everywhere: a dead ReLU net
            for conv in [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][:-1]:
                conv.bias.fill_(-50.0)
        out = net(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        first = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][0]
        grads[act] = first.weight.grad.abs().sum().item()
    assert grads["relu"] == 0.0 and grads["leaky"] > 0.0
    with pytest.raises(ValueError, match="activation must be 'relu' or 'leaky'"):
        create_attention_net("attention-small", act="gelu")
    # no parameters of its own: the two load each other's weights
    a = create_attention_net("attention-small", act="leaky")
    a.load_state_dict(create_attention_net("attention-small").state_dict())
