"""Megapixel MNIST: the generator keeps the paper's rules, and the example learns."""
from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from ats_wsi.data.megamnist import (  # noqa: E402
    DIGIT_BOX,
    SETTINGS,
    MegaMNIST,
    digit_bank,
    digit_pool,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hard() -> MegaMNIST:
    return MegaMNIST(40, "hard", seed=3, split="train")


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Do two (x, y, w, h) boxes share a pixel?"""
    return bool(a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3])


def test_same_seed_gives_the_same_images_in_any_order():
    a = MegaMNIST(6, "hard", seed=11)
    b = MegaMNIST(6, "hard", seed=11)
    for i in (5, 0, 3):
        np.testing.assert_array_equal(a.render(i), b.render(i))
        assert a[i][1] == b[i][1]
    assert not np.array_equal(a.render(0), MegaMNIST(6, "hard", seed=12).render(0))


def test_splits_with_one_seed_are_different_images():
    train, test = MegaMNIST(4, seed=0, split="train"), MegaMNIST(4, seed=0, split="test")
    assert not np.array_equal(train.layout(0).digit_xy, test.layout(0).digit_xy)


@pytest.mark.parametrize("setting", ["easy", "hard"])
def test_settings_have_the_documented_sizes(setting):
    expected = {"easy": (500, 500, 0), "hard": (1500, 1500, 50)}[setting]
    ds = MegaMNIST(2, setting)
    image, label = ds[0]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (1, expected[1], expected[0]) == ds.shape
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert isinstance(label, int)
    assert (SETTINGS[setting].width, SETTINGS[setting].height, SETTINGS[setting].n_noise) == expected
    assert len(ds.layout(0).noise_xy) == expected[2]


def test_non_square_size_follows_width_height_order():
    ds = MegaMNIST(3, "hard", size=(400, 250), n_noise=5)
    assert ds.render(0).shape == (1, 250, 400)
    for i in range(3):
        xy = ds.layout(i).digit_xy
        assert (xy[:, 0] + DIGIT_BOX <= 400).all() and (xy[:, 1] + DIGIT_BOX <= 250).all()


def test_label_is_the_majority_class_with_three_digits_and_two_others(hard):
    _, bank_labels = digit_bank()
    for i in range(len(hard)):
        layout = hard.layout(i)
        counts = Counter(layout.classes.tolist())
        assert counts[layout.label] == 3
        assert counts.most_common(1)[0] == (layout.label, 3)
        others = [c for c in layout.classes if c != layout.label]
        assert len(others) == 2 and len(set(others)) == 2
        # the source digits really are of the classes the layout claims
        np.testing.assert_array_equal(bank_labels[layout.digit_ids], layout.classes)
        assert hard[i][1] == layout.label


def test_labels_cover_all_classes():
    ds = MegaMNIST(300, "easy", seed=0)
    labels = {ds.layout(i).label for i in range(len(ds))}
    assert labels == set(range(10))


def test_digits_never_overlap_each_other_nor_the_clutter(hard):
    for i in range(len(hard)):
        layout = hard.layout(i)
        boxes = layout.boxes
        w, h = layout.size
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= w).all()
        assert (boxes[:, 1] + boxes[:, 3] <= h).all()
        for j in range(len(boxes)):
            for k in range(j + 1, len(boxes)):
                assert not boxes_overlap(boxes[j], boxes[k]), (i, j, k)
        for x, y in layout.noise_xy:
            noise_box = np.array([x, y, DIGIT_BOX, DIGIT_BOX])
            assert not any(boxes_overlap(noise_box, b) for b in boxes), i


def test_rendered_digit_boxes_hold_exactly_the_source_digits(hard):
    bank, _ = digit_bank()
    layout = hard.layout(7)
    image = hard.render(7)[0]
    for (x, y), k in zip(layout.digit_xy, layout.digit_ids):
        np.testing.assert_array_equal(image[y:y + DIGIT_BOX, x:x + DIGIT_BOX], bank[k])


def test_easy_has_ink_only_inside_digit_boxes():
    ds = MegaMNIST(3, "easy", seed=5)
    image = ds.render(1)[0].copy()
    for x, y, w, h in ds.layout(1).boxes:
        image[y:y + h, x:x + w] = 0
    assert image.max() == 0


def test_hard_has_clutter_outside_digit_boxes(hard):
    image = hard.render(0)[0].copy()
    for x, y, w, h in hard.layout(0).boxes:
        image[y:y + h, x:x + w] = 0
    assert (image > 0.5).sum() > 50 * 20  # 50 patterns of two strokes each


def test_train_and_test_digit_pools_are_disjoint_and_cover_every_class():
    train, test = digit_pool("train"), digit_pool("test")
    _, labels = digit_bank()
    all_train, all_test = np.concatenate(train), np.concatenate(test)
    assert not set(all_train.tolist()) & set(all_test.tolist())
    assert len(all_train) + len(all_test) == len(labels) == 1797
    for c in range(10):
        assert len(test[c]) >= 40 and len(train[c]) >= 3 * len(test[c]) - 3
        assert (labels[train[c]] == c).all() and (labels[test[c]] == c).all()
    # images use only their own split's digits
    for split, pool in (("train", all_train), ("test", all_test)):
        ds = MegaMNIST(50, "easy", seed=1, split=split)
        used = np.concatenate([ds.layout(i).digit_ids for i in range(len(ds))])
        assert np.isin(used, pool).all()


def test_digit_bank_is_mnist_shaped():
    bank, labels = digit_bank()
    assert bank.shape == (1797, 28, 28) and bank.dtype == np.float32
    assert bank.min() == 0.0 and bank.max() == 1.0
    # a 4-pixel black margin around a 20 x 20 digit, as in MNIST
    assert bank[:, :4].max() == 0 and bank[:, -4:].max() == 0
    assert bank[:, :, :4].max() == 0 and bank[:, :, -4:].max() == 0
    # strokes saturate: a real share of each digit's ink is at full level
    assert np.median((bank >= 0.99).sum(axis=(1, 2))) > 20
    assert sorted(set(labels.tolist())) == list(range(10))


def test_rendering_does_not_keep_images():
    ds = MegaMNIST(10_000, "hard", seed=0)
    ds.render(0)  # warm the shared digit bank and numpy's caches
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(0, 10_000, 1000):
            image, _ = ds[i]
            del image
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_image = 1500 * 1500 * 4
    assert peak - base >= one_image  # the images were rendered, and traced
    assert now - base < 1_000_000  # nothing of 10 rendered 9 MB images stays behind
    assert peak - base < 2.5 * one_image  # one image (plus scratch) at a time


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="setting"):
        MegaMNIST(1, "medium")
    with pytest.raises(ValueError, match="split"):
        MegaMNIST(1, split="val")
    with pytest.raises(IndexError):
        MegaMNIST(3)[3]
    assert MegaMNIST(3).layout(-1).label == MegaMNIST(3).layout(2).label


def test_dataloader_batches_images():
    ds = MegaMNIST(4, "easy", seed=2)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 1, 500, 500) and y.tolist() == [ds.layout(i).label for i in range(4)]


@pytest.mark.slow
def test_quick_example_run_learns():
    """`examples/megamnist.py --quick`: the loss falls and accuracy beats chance widely."""
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "megamnist.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = [float(line.split("loss ")[1].split(",")[0]) for line in proc.stdout.splitlines()
              if line.startswith("epoch ")]
    assert len(losses) == 12 and losses[-1] < 0.7 * losses[0], losses
    test_error = float(proc.stdout.split("test error: ")[1].split()[0])
    assert test_error < 0.5, proc.stdout  # chance is 0.9
