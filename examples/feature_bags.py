"""Load `ats-wsi predict --export-features` files as a CLAM-style dataset: one bag per slide.

    python examples/feature_bags.py RESULTS_FOLDER

Each item is ``(features [n, D] float32 tensor, label, coords [n, 2] int64 tensor)``,
as CLAM's ``Generic_MIL_Dataset`` gives in its h5 mode; a labelled run's
``predictions.csv`` (a manifest with labels was predicted) supplies the labels.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import h5py
import torch
from torch.utils.data import Dataset


class FeatureBags(Dataset):
    """The HDF5 files of ``RESULTS/features``, one bag of patch features per slide."""

    def __init__(self, results: str | Path):
        results = Path(results)
        with open(results / "predictions.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        self.files = [results / "features" / f"{r['name']}.h5" for r in rows]
        self.labels = [int(r["label"]) if r.get("label") not in (None, "") else -1 for r in rows]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with h5py.File(self.files[i], "r") as fh:
            features = torch.from_numpy(fh["features"][:])
            coords = torch.from_numpy(fh["coords"][:])
        return features, self.labels[i], coords


if __name__ == "__main__":
    bags = FeatureBags(sys.argv[1])
    for k in range(len(bags)):
        features, label, coords = bags[k]
        print(f"{bags.files[k].name}: features {tuple(features.shape)}, coords {tuple(coords.shape)}, label {label}")
