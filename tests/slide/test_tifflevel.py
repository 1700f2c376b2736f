"""slide/_tifflevel.py: a TiffSlide holds one TiffTiles per stored level, which owns its tile
bytes, their decoding and the marks of tiles checked to their EOI."""
from __future__ import annotations

import numpy as np
import pytest

from ats_wsi.errors import SlideError
from ats_wsi.slide import open_slide


def test_a_tiff_slide_holds_its_stored_levels_as_tiff_tiles(tiff_pyramid_deflate):
    """Each level object reads the bytes tifffile says the tile has and decodes the written pixels."""
    import tifffile

    sf = tiff_pyramid_deflate
    with tifffile.TiffFile(sf.path) as tif, open(sf.path, "rb") as fh, open_slide(sf.path, backend="tifffile") as slide:
        assert len(slide.tiff_levels) == slide.level_count == len(sf.levels)
        for i, (tiles, page) in enumerate(zip(slide.tiff_levels, tif.pages)):
            lv = slide.pyramid[i]
            assert tiles.index == i
            assert (tiles.level.width, tiles.level.height, tiles.level.tile_width, tiles.level.tile_height) == (
                lv.width, lv.height, lv.tile_width, lv.tile_height)
            assert tiles.jpeg_ifd_offset is None and not tiles.can_decode_into()  # deflate
            col, row = tiles.level.cols - 1, tiles.level.rows - 1  # an edge tile: clipped
            k = row * tiles.level.cols + col
            fh.seek(page.dataoffsets[k])
            assert tiles.tile_bytes(col, row) == fh.read(page.databytecounts[k])
            tw, th = sf.tile
            np.testing.assert_array_equal(tiles.read_tile(col, row), sf.levels[i][row * th:, col * tw:])
            np.testing.assert_array_equal(tiles.read_tile(0, 0), sf.levels[i][:th, :tw])
    with pytest.raises(SlideError, match="closed"):
        slide.tiff_levels[0].tile_bytes(0, 0)


def test_a_jpeg_level_gives_its_ifd_offset_and_a_cropped_decode_when_the_extension_is_there(svs_jpeg):
    import tifffile

    from ats_wsi.slide import _jpegcrop

    with tifffile.TiffFile(svs_jpeg.path) as tif, open_slide(svs_jpeg.path, backend="tifffile") as slide:
        tiled = [p for p in tif.pages if p.is_tiled]
        assert [t.jpeg_ifd_offset for t in slide.tiff_levels] == [p.offset for p in tiled]
        assert [t.can_decode_into() for t in slide.tiff_levels] == [_jpegcrop.available()] * len(tiled)
        assert slide.can_decode_into(0) == _jpegcrop.available()
        assert not slide.can_decode_into(len(tiled))  # past the stored levels


def test_convert_to_srgb_is_what_open_slide_srgb_does(tiff_icc):
    with open_slide(tiff_icc.path) as later, open_slide(tiff_icc.path, srgb=True) as srgb:
        stored = later.read_region((100, 50), 0, (300, 200))
        later.convert_to_srgb()
        assert later.srgb
        converted = later.read_region((100, 50), 0, (300, 200))
        np.testing.assert_array_equal(converted, srgb.read_region((100, 50), 0, (300, 200)))
        assert np.abs(converted.astype(int) - stored.astype(int)).mean() > 5
        assert not later.can_decode_into(0)  # cropped decodes give stored pixels: not with sRGB
