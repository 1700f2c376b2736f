"""Batch buffers are reused only once nothing holds them: a batch the caller keeps
(or any view, array or memoryview of it) is never overwritten by a later read."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from ats_wsi import open_slide
from ats_wsi.patches import PatchReader
from ats_wsi.patches._buffers import Recycler


def test_a_buffer_comes_back_only_after_every_holder_is_gone():
    pool = Recycler(keep=2)
    a = pool.empty((4, 8, 8, 3))
    address = a.__array_interface__["data"][0]
    b = pool.empty((4, 8, 8, 3))
    assert b.__array_interface__["data"][0] != address, "a held buffer was handed out twice"
    del b  # the second buffer is free: the next request gets it, not the first one (a view holds that)
    view = a[1:3]
    del a
    c = pool.empty((4, 8, 8, 3))
    assert c.__array_interface__["data"][0] != address, "a buffer with a live view was handed out again"
    del view
    gc.collect()
    d = pool.empty((4, 8, 8, 3))
    assert d.__array_interface__["data"][0] == address, "a free buffer was not reused"


def test_other_sizes_get_their_own_buffer_and_at_most_keep_are_remembered():
    pool = Recycler(keep=2)
    first = pool.empty((2, 4, 4, 3))
    address = first.__array_interface__["data"][0]
    del first
    other = pool.empty((3, 4, 4, 3))
    assert other.__array_interface__["data"][0] != address and other.shape == (3, 4, 4, 3)
    del other
    for n in (5, 6, 7):
        pool.empty((n, 4, 4, 3))
    assert len(pool._buffers) == 2


@pytest.mark.parametrize("hold", ["tensor", "view", "numpy", "memoryview"])
def test_patch_reader_never_overwrites_a_batch_still_held(vips_jpeg, hold):
    rng = np.random.default_rng(0)
    with open_slide(vips_jpeg.path) as slide, PatchReader(slide, 0, 64, workers=1, cache_bytes=0) as reader:
        w, h = slide.dimensions
        xy = np.stack([rng.integers(0, w - 64, 6), rng.integers(0, h - 64, 6)], 1)
        first = reader.read(xy)
        expect = first.clone()
        held = {"tensor": first, "view": first[2:4], "numpy": first.numpy(),
                "memoryview": memoryview(first.numpy())}[hold]
        del first
        for _ in range(3):  # same shape, other places: a reused buffer would be overwritten here
            reader.read(np.stack([rng.integers(0, w - 64, 6), rng.integers(0, h - 64, 6)], 1))
        ref = expect[2:4] if hold == "view" else expect
        assert np.array_equal(np.asarray(held), ref.numpy()), f"a batch held as a {hold} was overwritten"


def test_patch_reader_reuses_a_dropped_batch_with_the_right_pixels(vips_jpeg):
    rng = np.random.default_rng(1)
    with open_slide(vips_jpeg.path) as slide, PatchReader(slide, 0, 64, workers=1, cache_bytes=0) as reader:
        w, h = slide.dimensions
        batches = [np.stack([rng.integers(0, w - 64, 5), rng.integers(0, h - 64, 5)], 1) for _ in range(4)]
        pointers = set()
        for xy in batches:
            got = reader.read(xy)
            pointers.add(got.data_ptr())
            for i, (x, y) in enumerate(xy):
                ref = np.asarray(slide.read_region((int(x), int(y)), 0, (64, 64)))[:, :, :3]
                assert np.array_equal(got[i].permute(1, 2, 0).numpy(), ref)
            del got
        assert len(pointers) == 1, "a dropped batch's buffer was not reused"
