"""Tiny encoders (torch only) and spec files for the encoder tests: imported by the tests as
``encoder_helpers`` (a name no other test folder uses, unlike ``conftest``)."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn


class TinyViT(nn.Module):
    """A ViT in miniature: patch embedding, CLS + 2 register tokens, one attention block.

    ``tokens=True`` returns the token sequence ``[N, 1 + 2 + P, dim]`` (for the
    pooling tests), else the CLS token ``[N, dim]``.
    """

    def __init__(self, dim: int = 16, patch: int = 8, tokens: bool = False):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.prefix = nn.Parameter(torch.randn(1, 3, dim) * 0.1)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.tokens = tokens

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(x.shape[0], -1, -1), t], dim=1)
        q, k, v = self.qkv(self.norm(t)).chunk(3, dim=-1)
        t = t + F.scaled_dot_product_attention(q, k, v)
        t = t + self.mlp(self.norm(t))
        return t if self.tokens else t[:, 0]


def tiny_vit(seed: int = 0, **kw) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT(**kw).eval()


def save_torchscript(module: nn.Module, path) -> str:
    torch.jit.save(torch.jit.trace(module, torch.rand(2, 3, 32, 32)), str(path))
    return str(path)


def save_export(module: nn.Module, path) -> str:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (torch.rand(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))
    return str(path)


def spec_dict(source: str, weights: str, **kw) -> dict:
    """An encoder spec for a tiny file encoder: 32 px at 1.0 µm/px, D = 16."""
    return {"name": "tiny", "source": source, "weights": weights, "mpp": 1.0, "patch_px": 32, "input_px": 32,
            "mean": [0.6, 0.5, 0.7], "std": [0.2, 0.25, 0.2], "dim": 16, **kw}


def write_spec(path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)
