"""The one tile cache (ats_wsi.slide.TileCache): LRU, byte accounting, threads, who uses it."""
from __future__ import annotations

import threading

import numpy as np

from ats_wsi.slide import TileCache, open_slide
from ats_wsi.slide._cache import held_bytes


def test_a_tile_that_owns_its_memory_is_charged_its_nbytes():
    assert held_bytes(np.zeros((10, 10, 3), np.uint8)) == 300


def test_a_view_is_charged_the_buffer_it_keeps_alive():
    whole = np.zeros((20, 20, 4), np.uint8)  # 1600 bytes
    assert held_bytes(whole[:5, :5, :3]) == 1600  # clipped edge tile, RGB of RGBA
    assert held_bytes(whole[:5][:, :5]) == 1600  # a view of a view: numpy keeps the owner as base


def test_an_array_over_a_foreign_buffer_is_charged_its_own_bytes():
    raw = bytes(1000)
    assert held_bytes(np.frombuffer(raw, np.uint8, count=100)) == 100  # base is bytes: size not asked
    assert held_bytes(np.frombuffer(raw, np.uint8)[:100]) == 1000  # base is the ndarray over all of it


def test_putting_a_key_again_replaces_the_tile_and_its_charge():
    cache = TileCache(1000)
    cache.put((0, 0, 0), np.zeros(100, np.uint8))
    new = np.zeros(300, np.uint8)
    cache.put((0, 0, 0), new)
    assert cache.get((0, 0, 0)) is new and cache.nbytes == 300 and len(cache) == 1


def test_zero_bytes_keeps_nothing():
    cache = TileCache(0)
    cache.put((0, 0, 0), np.zeros(1, np.uint8))
    assert len(cache) == 0 and cache.nbytes == 0


def test_many_threads_never_break_the_bound_or_the_accounting():
    cache = TileCache(10 * 64)
    tiles = [np.full(64 + 16 * (k % 3), k, np.uint8) for k in range(40)]
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(2000):
            k = int(rng.integers(40))
            got = cache.get(k)
            if got is not None and got is not tiles[k]:
                errors.append(k)
            cache.put(k, tiles[k])

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    held = [cache.get(k) for k in range(40)]
    assert cache.nbytes == sum(t.nbytes for t in held if t is not None) <= cache.max_bytes


def test_computed_levels_are_served_from_a_tile_cache(tiff_flat):
    with open_slide(tiff_flat.path) as slide:
        assert isinstance(slide._computed.cache, TileCache)
        a = slide.read_tile(2, 1, 1)
        assert slide.read_tile(2, 1, 1) is a and not a.flags.writeable
        assert (2, 1, 1) in slide._computed.cache


def test_the_patch_reader_uses_the_same_class():
    import pytest

    pytest.importorskip("torch")
    from ats_wsi.patches.reader import PatchReader, TileCache as ReaderCache

    assert ReaderCache is TileCache
    assert PatchReader.__init__.__kwdefaults__["cache_bytes"] == 64 * 2**20
