"""Rasters whose pixels already are the analysis grid's are read as they are, not warped: the values
must be exactly what GDAL's warper gives (nodata, the file's edge, float NaN), and anything not on
the grid must still be warped."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from tasks.core.grid import AnalysisGrid
from tasks.raster.align import _warped_vrt_layer, warped_layer
from tasks.raster.on_grid import on_grid_offset_px
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


def _masked_warper(path, grid: AnalysisGrid, chunk_px: int) -> np.ndarray:
    """GDAL's masked warp (nodata 0) read in the same windows, NaN for nodata: the reference."""
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    out = np.empty((grid.height, grid.width), dtype="float32")
    with rasterio.open(path) as src, WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                                               height=grid.height, resampling=Resampling.bilinear,
                                               src_nodata=0, nodata=0) as vrt:
        for r in range(0, grid.height, chunk_px):
            for c in range(0, grid.width, chunk_px):
                win = Window(c, r, min(chunk_px, grid.width - c), min(chunk_px, grid.height - r))
                out[r:r + win.height, c:c + win.width] = vrt.read(1, window=win)
    out[out == 0] = np.nan
    return out


@pytest.mark.parametrize("band", ["B05", "B11"])
def test_a_20m_band_gives_the_masked_warpers_values_through_the_unmasked_kernel(tmp_path, band, monkeypatch):
    # a real 20 m band with a nodata hole: windows that reach the hole take the masked warper, the
    # others its unmasked twin; the grid hangs over the file's edge; every value must be the masked
    # warper's (the twin's arithmetic is exact, _TwinWarp)
    from tasks.raster import align

    with rasterio.open(T18SVG / f"s2_{band}.jp2") as src:
        data = src.read(1)[:300, :400]
        profile = dict(driver="GTiff", width=400, height=300, count=1, dtype="uint16", crs=src.crs,
                       transform=src.transform, nodata=0, tiled=True, blockxsize=128, blockysize=128)
    data[140:170, 200:230] = 0
    path = tmp_path / f"{band}.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    used = {"twin": 0}
    real_read = align._TwinWarp.read

    def counting_read(self, win):
        used["twin"] += 1
        return real_read(self, win)

    monkeypatch.setattr(align._TwinWarp, "read", counting_read)
    t = profile["transform"]
    n_windows = 0
    # 10 m grids over the 20 m file (400 x 300 px: 800 x 600 grid px): one over its edges, one inside
    for d_col, d_row, width, height in ((-37, -21, 880, 640), (3, 2, 500, 450)):
        grid = AnalysisGrid(crs=src.crs.to_string(), res_m=10.0, xmin=t.c + d_col * 10, ymax=t.f - d_row * 10,
                            width=width, height=height)
        direct = warped_layer(str(path), grid, Resampling.bilinear, 0, 128).values[0]
        assert np.array_equal(direct, _masked_warper(path, grid, 128), equal_nan=True)
        assert np.isnan(direct).any() and np.isfinite(direct).sum() > 100_000
        n_windows += -(-width // 128) * -(-height // 128)
    assert 0 < used["twin"] < n_windows  # most windows took the twin; those reaching the hole did not


def test_the_unmasked_twin_only_where_its_arithmetic_is_exact():
    from tasks.raster.align import _TwinWarp

    b05, b01 = T18SVG / "s2_B05.jp2", T18SVG / "s2_B01.jp2"
    with rasterio.open(b05) as src:
        t = src.transform
        ten_m = AnalysisGrid(crs=src.crs.to_string(), res_m=10.0, xmin=t.c + 30, ymax=t.f - 50, width=200, height=200)
        assert _TwinWarp.for_source(src, ten_m, Resampling.bilinear, 0) is not None
        assert _TwinWarp.for_source(src, ten_m, Resampling.bilinear, None) is None  # no mask to avoid
        assert _TwinWarp.for_source(src, ten_m, Resampling.bilinear, 65535) is None  # beyond the file: 0
        assert _TwinWarp.for_source(src, ten_m, Resampling.cubic, 0) is None
        half = AnalysisGrid(**{**ten_m.__dict__, "xmin": ten_m.xmin + 5})
        assert _TwinWarp.for_source(src, half, Resampling.bilinear, 0) is None  # weights not 1/4, 3/4
        other_zone = AnalysisGrid(**{**ten_m.__dict__, "crs": "EPSG:32617"})
        assert _TwinWarp.for_source(src, other_zone, Resampling.bilinear, 0) is None
    with rasterio.open(b01) as src:  # 60 m: twelfths, not exact
        assert _TwinWarp.for_source(src, ten_m, Resampling.bilinear, 0) is None


@pytest.mark.parametrize("nodata", [0, None])
def test_the_cloud_shadow_reads_of_an_on_grid_band_are_the_warpers(nodata):
    from rasterio.windows import Window

    from tasks.raster.clouds import _read_grid_window, _read_on

    grid = _grid_over(B02, -37, -21, 1900 + 64, 300)
    for win in (Window(0, 0, grid.width, 64), Window(5, 100, 700, 120), Window(1900, 250, 64, 50)):
        direct = _read_grid_window(str(B02), grid, nodata, win)
        warped = _read_on(str(B02), grid.crs, grid.transform, grid.width, grid.height, Resampling.bilinear,
                          nodata, win)
        assert direct.shape == (win.height, win.width)
        assert np.array_equal(direct, warped, equal_nan=True)
    half_pixel = AnalysisGrid(**{**grid.__dict__, "xmin": grid.xmin + 5})  # off the grid: warped
    win = Window(40, 30, 200, 100)
    assert np.array_equal(_read_grid_window(str(B02), half_pixel, nodata, win),
                          _read_on(str(B02), half_pixel.crs, half_pixel.transform, half_pixel.width,
                                   half_pixel.height, Resampling.bilinear, nodata, win), equal_nan=True)
