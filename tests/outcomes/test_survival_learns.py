"""A survival head learns: images whose hazard grows with a dark lesion's size train, through attention
sampling and each survival loss, to a held-out C-index well above 0.5 (seconds, in memory).

The same on real slide files, at the demo's scale, is benchmarks/survival_synthetic.py (minutes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ats_wsi.classifier import ModelConfig, build_model
from ats_wsi.data.manifest import ManifestRow
from ats_wsi.outcomes.losses import nll_risk
from ats_wsi.run.objective import Objective, cox_gradients, fit_outcome

pytest.importorskip("lifelines", reason="the survival extra (pip install 'ats-wsi[survival]')")
from ats_wsi.outcomes.survival_metrics import harrell_c  # noqa: E402

SIDE, SCALE = 64, 4


def _cohort(n: int, seed: int):
    """``(x_high [n, 3, 64, 64], x_low [n, 3, 16, 16], rows)``: a dark disc of radius 3..22 px on light
    noise; time = 100 exp(-0.12 r) (shorter for larger lesions), one in four censored at 0.8 of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    images, rows = [], []
    for i in range(n):
        r = rng.uniform(3, 22)
        cy, cx = rng.uniform(r, SIDE - r, size=2)
        img = 0.8 + 0.05 * rng.standard_normal((3, SIDE, SIDE))
        img[:, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.2
        images.append(img)
        event = int(rng.uniform() > 0.25)
        time = 100 * np.exp(-0.12 * r) * (1.0 if event else 0.8)
        rows.append(ManifestRow(Path(f"s{i}.svs"), None, time=float(time), event=event))
    x_high = torch.tensor(np.clip(np.stack(images), 0, 1), dtype=torch.float32)
    return x_high, F.avg_pool2d(x_high, SCALE), rows


def _risk(model, x_high, x_low, i, gen):
    logits, _ = model(x_low[i:i + 1], x_high[i:i + 1], generator=gen)
    return logits


@pytest.mark.parametrize("loss", ["nll", "cox"])
def test_a_lesion_size_hazard_trains_to_a_held_out_c_index_well_above_half(loss):
    x_high, x_low, rows = _cohort(48, seed=0)
    train, test = list(range(32)), list(range(32, 48))
    config = ModelConfig(task="survival", survival_loss=loss, n_bins=3, attention_kwargs={"hidden": 4, "layers": 1},
                         feature_kwargs={"widths": [8], "norm": "none"}, feature_dim=8, n_patches=6, patch_size=8,
                         entropy=0.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    config = fit_outcome("synthetic", config, [rows[i] for i in train])
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():  # every slide the same risk: untrained, the C-index is 0.5 exactly (all ties)
        model.head.weight.zero_()
    objective = Objective(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    untrained = _held_out_c(model, x_high, x_low, rows, test, loss)
    for epoch in range(10):
        order = np.random.default_rng(epoch).permutation(train)
        for batch in np.array_split(order, 4):
            optimizer.zero_grad()
            if loss == "cox":
                seeds = {int(i): int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) for i in batch}

                def forward(i, row):
                    return _risk(model, x_high, x_low, i, torch.Generator().manual_seed(seeds[i]))

                grads, _ = cox_gradients(objective, forward, [(int(i), rows[i]) for i in batch])
                for i in batch:  # what training does: the batch's Cox gradient, slide by slide
                    (forward(int(i), rows[i]).reshape(-1)[0] * grads[int(i)]).backward()
            else:
                for i in batch:
                    (objective.slide_loss(_risk(model, x_high, x_low, int(i), gen), rows[i]) / len(batch)).backward()
            optimizer.step()
    c = _held_out_c(model, x_high, x_low, rows, test, loss)
    assert untrained == 0.5 and c > 0.7, f"held-out C-index {c:.3f} with the {loss} loss ({untrained:.3f} untrained)"


def _held_out_c(model, x_high, x_low, rows, test, loss) -> float:
    model.eval()
    with torch.no_grad():
        outputs = torch.cat([_risk(model, x_high, x_low, i, torch.Generator().manual_seed(i)) for i in test])
    model.train()
    risk = nll_risk(outputs) if loss == "nll" else outputs[:, 0]
    return harrell_c(risk.numpy(), [rows[i].time for i in test], [rows[i].event for i in test])
