"""Rasters whose pixels already are the analysis grid's are read as they are, not warped: the values
must be exactly what GDAL's warper gives (nodata, the file's edge, float NaN), and anything not on
the grid must still be warped."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from tasks.core.grid import AnalysisGrid
from tasks.raster.align import _warped_vrt_layer, on_grid_offset_px, warped_layer
from tests.data.crops import T18SVG

B02 = T18SVG / "s2_B02.jp2"  # real L1C, 10 m, EPSG:32618, no nodata in the file


def _grid_over(path, d_col_px: int, d_row_px: int, width: int, height: int, crs: str | None = None) -> AnalysisGrid:
    """A 10 m grid whose origin is (d_col_px, d_row_px) pixels from the file's: negative = outside."""
    with rasterio.open(path) as src:
        t = src.transform
        return AnalysisGrid(crs=crs or src.crs.to_string(), res_m=t.a, xmin=t.c + d_col_px * t.a,
                            ymax=t.f + d_row_px * t.e, width=width, height=height)


def _warped(path, grid: AnalysisGrid, nodata: float | None, chunk_px: int) -> np.ndarray:
    """The warper's values, with NaN for nodata as warped_layer gives them."""
    with rasterio.open(path) as src:
        arr = _warped_vrt_layer(src, grid, Resampling.bilinear, nodata, chunk_px)
        if nodata is not None:
            arr = arr.where(arr != np.float32(nodata))
        return arr.values


@pytest.mark.parametrize("nodata", [0, None])
def test_a_real_10m_band_over_its_edge_reads_as_the_warper_gives(nodata):
    # the grid hangs 37 px over the top-left corner and crosses the right edge: fill outside
    grid = _grid_over(B02, -37, -21, 1900 + 64, 300)
    with rasterio.open(B02) as src:
        assert on_grid_offset_px(src, grid) == (-21, -37)
    direct = warped_layer(str(B02), grid, Resampling.bilinear, nodata, 512).values
    warped = _warped(B02, grid, nodata, 512)
    assert direct.shape == warped.shape == (1, 300, 1964)
    assert np.array_equal(direct, warped, equal_nan=True)
    outside = direct[0, :21, :]
    assert (np.isnan(outside).all() if nodata == 0 else (outside == 0).all())
    assert np.isfinite(direct[0, 21:, 37:1900]).all() and direct[0, 21:, 37:1900].min() > 0


def test_a_float_raster_with_nan_reads_as_the_warper_gives(tmp_path):
    path = tmp_path / "slope.tif"
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 60, (200, 300)).astype("float32")
    data[50:60, 100:140] = np.nan
    profile = dict(driver="GTiff", width=300, height=200, count=1, dtype="float32", crs="EPSG:32654",
                   transform=rasterio.Affine(10, 0, 500000, 0, -10, 4700000))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    grid = AnalysisGrid(crs="EPSG:32654", res_m=10.0, xmin=500000 - 50 * 10, ymax=4700000 - 40 * 10,
                        width=380, height=200)
    direct = warped_layer(str(path), grid, Resampling.bilinear, None, 128).values
    assert np.array_equal(direct, _warped(path, grid, None, 128), equal_nan=True)
    assert np.array_equal(direct[0, :160, 50:350], data[40:], equal_nan=True)


def test_rasters_off_the_grid_are_warped():
    half_pixel = _grid_over(B02, 0, 0, 100, 100)
    half_pixel = AnalysisGrid(**{**half_pixel.__dict__, "xmin": half_pixel.xmin + 5})
    other_zone = _grid_over(B02, 0, 0, 100, 100, crs="EPSG:32617")
    coarser = AnalysisGrid(**{**_grid_over(B02, 0, 0, 100, 100).__dict__, "res_m": 20.0})
    with rasterio.open(B02) as src:
        assert on_grid_offset_px(src, _grid_over(B02, 3, 4, 100, 100)) == (4, 3)
        for grid in (half_pixel, other_zone, coarser):
            assert on_grid_offset_px(src, grid) is None
    # and the half-pixel grid's values are the warper's (bilinear: not the file's pixels)
    direct = warped_layer(str(B02), half_pixel, Resampling.bilinear, 0, 64).values
    assert np.array_equal(direct, _warped(B02, half_pixel, 0, 64), equal_nan=True)
