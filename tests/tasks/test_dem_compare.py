"""tasks.raster.dem_compare: the statistics on synthetic arrays, the mechanics on real DEMs.

Real data: a 200 x 200 px crop of the genuine Copernicus GLO-30 tile N00E006 (Sao Tome,
../shared/data/cop_dem_glo30_n00e006) compared with itself shifted one pixel east (with a hole), and
the bundled Iburi AW3D30 DSM compared with itself. GLO-30 over Iburi is not on this machine, so the
AW3D30 vs GLO-30 numbers themselves are not measured here (docs/dem_comparison.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from tasks.core.errors import InputError
from tasks.raster.dem_compare import (
    STAT_KEYS,
    compare_dem_files,
    compare_terrain,
    dem_product,
    difference_stats,
    report_markdown,
    roi_from,
)
from tasks.vector.classes import SLOPE_CLASSES_DEG

ROOT = Path(__file__).resolve().parents[2]
AW3D30 = ROOT / "data" / "iburi_2018" / "dem" / "AW3D30_DSM.tif"
GLO30 = (ROOT.parent / "shared" / "data" / "cop_dem_glo30_n00e006"
         / "Copernicus_DSM_COG_10_N00_00_E006_00_DEM.tif")
# the crop of the GLO-30 tile (all land, 222..1543 m) and an ROI inside it
GLO30_WINDOW = Window(1900, 2700, 200, 200)
SAO_TOME_ROI = shapely.box(6.54, 0.205, 6.57, 0.24)
IBURI_ROI = shapely.box(141.93, 42.70, 141.98, 42.74)


def numpy_stats(d: np.ndarray) -> dict:
    """The statistics written out independently of the module."""
    d = d.astype(np.float64)
    return {"count": d.size, "bias": d.sum() / d.size, "mae": np.abs(d).sum() / d.size,
            "rmse": math.sqrt((d ** 2).sum() / d.size), "median": float(np.sort(d)[d.size // 2])
            if d.size % 2 else float(np.sort(d)[d.size // 2 - 1:d.size // 2 + 1].mean()),
            "p95_abs": float(np.quantile(np.abs(d), 0.95))}


def assert_stats(got: dict, want: dict) -> None:
    assert got["count"] == want["count"]
    for key in STAT_KEYS[1:]:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


# --- the statistics on synthetic arrays ------------------------------------------------------


def test_stats_by_hand():
    s = difference_stats(np.array([1.0, -1.0, 3.0, np.nan]))
    assert s["count"] == 3
    assert s["bias"] == pytest.approx(1.0)
    assert s["mae"] == pytest.approx(5 / 3)
    assert s["rmse"] == pytest.approx(math.sqrt(11 / 3))
    assert s["median"] == pytest.approx(1.0)
    assert s["p95_abs"] == pytest.approx(2.8)  # |d| sorted 1, 1, 3: 95 % lies 0.9 of the way to 3
    assert difference_stats(np.array([np.nan])) == {"count": 0, **{k: None for k in STAT_KEYS[1:]}}


def test_known_bias_and_noise_are_recovered():
    rng = np.random.default_rng(20)
    d = 2.0 + rng.normal(0.0, 0.5, 400_000)
    s = difference_stats(d)
    assert s["bias"] == pytest.approx(2.0, abs=0.005)
    assert s["median"] == pytest.approx(2.0, abs=0.005)
    assert s["rmse"] == pytest.approx(math.sqrt(2.0 ** 2 + 0.5 ** 2), abs=0.005)
    assert s["mae"] == pytest.approx(2.0, abs=0.005)  # |d| = d: d < 0 is 4 sigma away
    assert s["p95_abs"] == pytest.approx(2.0 + 1.6449 * 0.5, abs=0.01)


def test_compare_terrain_counts_and_classes():
    rng = np.random.default_rng(7)
    h, w = 60, 80
    dem_a = rng.uniform(0, 500, (h, w))
    dem_b = dem_a - 1.5 + rng.normal(0, 0.3, (h, w))
    slope_a = np.tile(np.linspace(0, 60, w), (h, 1))
    slope_b = slope_a + 0.5
    dem_a[0, :10] = np.nan          # 10 px without data in A
    slope_b[1, :7] = np.nan         # 7 px without data in B (slope only)
    dem_b[0, 5:8] = np.nan          # 3 px without data in both (A's already counted)
    inside = np.ones((h, w), bool)
    inside[-5:] = False             # 5 rows outside the ROI
    out = compare_terrain(dem_a, dem_b, slope_a, slope_b, SLOPE_CLASSES_DEG, inside)
    px = out["pixels"]
    assert px == {"in_roi": 55 * 80, "compared": 55 * 80 - 17, "no_data_a": 10, "no_data_b": 10,
                  "excluded": 17}
    ok = inside & np.isfinite(dem_a) & np.isfinite(dem_b) & np.isfinite(slope_a) & np.isfinite(slope_b)
    assert_stats(out["elevation_m"]["overall"], numpy_stats((dem_b - dem_a)[ok]))
    assert out["elevation_m"]["overall"]["bias"] == pytest.approx(-1.5, abs=0.02)
    assert out["slope_deg"]["overall"]["rmse"] == pytest.approx(0.5)
    by_class = out["elevation_m"]["by_slope_class_of_a"]
    assert list(by_class) == [c.name for c in SLOPE_CLASSES_DEG]
    assert sum(s["count"] for s in by_class.values()) == px["compared"]
    steep = ok & (slope_a >= 30) & (slope_a < 45)
    assert_stats(by_class["30-45°"], numpy_stats((dem_b - dem_a)[steep]))


def test_an_empty_class_has_no_statistics_and_shapes_must_match():
    flat = np.zeros((4, 4))
    out = compare_terrain(flat, flat + 1, flat, flat, SLOPE_CLASSES_DEG)
    assert out["elevation_m"]["by_slope_class_of_a"]["≥45°"]["bias"] is None
    assert out["elevation_m"]["by_slope_class_of_a"]["<15°"]["bias"] == 1.0
    with pytest.raises(InputError, match="one shape"):
        compare_terrain(flat, np.zeros((4, 5)), flat, flat, SLOPE_CLASSES_DEG)


def test_roi_from_region_and_bbox():
    assert roi_from(None, [1, 2, 3, 4]).bounds == (1, 2, 3, 4)
    assert roi_from([0, 0, 2, 2], [1, 1, 3, 3]).bounds == (1, 1, 2, 2)
    with pytest.raises(InputError, match="does not intersect region 'r'"):
        roi_from([0, 0, 1, 1], [2, 2, 3, 3], "r")
    with pytest.raises(InputError, match="--region"):
        roi_from(None, None)


# --- mechanics on real DEMs ------------------------------------------------------------------


def _glo30_pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, Affine]:
    """A GLO-30 crop, and the same pixels one pixel further east with a 10 x 10 px hole."""
    with rasterio.open(GLO30) as src:
        data = src.read(1, window=GLO30_WINDOW)
        t = src.window_transform(GLO30_WINDOW)
        profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="float32", crs=src.crs)
    a = tmp_path / "Copernicus_DSM_COG_10_N00_00_E006_00_DEM_crop.tif"
    b = tmp_path / "shifted.tif"
    with rasterio.open(a, "w", transform=t, **profile) as dst:
        dst.write(data, 1)
    holed = data.copy()
    holed[100:110, 80:90] = np.nan
    with rasterio.open(b, "w", transform=Affine(t.a, 0, t.c + t.a, 0, t.e, t.f), **profile) as dst:
        dst.write(holed, 1)
    return a, b, data, t


def test_glo30_against_itself_shifted_one_pixel(tmp_path):
    a, b, data, t = _glo30_pair(tmp_path)
    r = compare_dem_files(a, b, SAO_TOME_ROI, SLOPE_CLASSES_DEG, res_m=10.0)
    rep, px = r.report, r.report["pixels"]
    assert rep["a"]["collection"] == "cop-dem-glo-30" and rep["a"]["vertical_datum"] == "EGM2008 geoid"
    assert rep["b"]["collection"] is None and rep["b"]["vertical_datum"] == "unknown"
    assert rep["grid"]["crs"] == "EPSG:32632"
    assert rep["notes"][0].startswith("the vertical datum of B is not known")
    # the hole is left out and counted; A has data everywhere
    assert px["no_data_a"] == 0 and px["excluded"] == px["no_data_b"] > 0
    assert px["excluded"] == int((r.inside & np.isnan(r.dem_b)).sum())
    assert px["compared"] + px["excluded"] == px["in_roi"] == int(r.inside.sum())

    # the warp is GDAL's bilinear warp onto the scan's grid: the same as reproject() here
    for path, warped in ((a, r.dem_a), (b, r.dem_b)):
        with rasterio.open(path) as src:
            ind = np.full(r.grid.shape, np.nan, np.float32)
            reproject(src.read(1), ind, src_transform=src.transform, src_crs=src.crs, src_nodata=np.nan,
                      dst_transform=r.grid.transform, dst_crs=r.grid.crs, dst_nodata=np.nan,
                      resampling=Resampling.bilinear)
        both = np.isfinite(ind) & np.isfinite(warped)
        np.testing.assert_allclose(ind[both], warped[both], atol=1e-3)
        # NaN in the source spreads as far as the bilinear kernel reaches, never less
        assert not (np.isnan(ind) & np.isfinite(warped)).any()
    assert not np.isnan(r.dem_a).any()

    # the report's numbers are the numpy statistics of the arrays, overall and per class
    ok = r.inside & np.isfinite(r.dem_a) & np.isfinite(r.dem_b) & np.isfinite(r.slope_a) & np.isfinite(r.slope_b)
    for key, da, db in (("elevation_m", r.dem_a, r.dem_b), ("slope_deg", r.slope_a, r.slope_b)):
        d = db.astype(np.float64) - da.astype(np.float64)
        assert_stats(rep[key]["overall"], numpy_stats(d[ok]))
        for c in SLOPE_CLASSES_DEG:
            sel = ok & (r.slope_a >= c.lower) & ((r.slope_a < c.upper) if c.upper else True)
            assert_stats(rep[key]["by_slope_class_of_a"][c.name], numpy_stats(d[sel]))

    # and they agree with the shift's differences on the DEM's own grid: B - A at column c + 1 is
    # A[c] - A[c + 1] (within 5 %: the 10 m grid samples them bilinearly)
    native = data[:, :-1].astype(np.float64) - data[:, 1:]
    lon = t.c + t.a * (np.arange(1, data.shape[1]) + 0.5)
    lat = t.f + t.e * (np.arange(data.shape[0]) + 0.5)
    lon, lat = np.meshgrid(lon, lat)
    w, s, e, n = SAO_TOME_ROI.bounds
    native = native[(lon >= w) & (lon <= e) & (lat >= s) & (lat <= n)]
    overall = rep["elevation_m"]["overall"]
    assert overall["rmse"] == pytest.approx(math.sqrt(np.mean(native ** 2)), rel=0.05)
    assert overall["mae"] == pytest.approx(np.mean(np.abs(native)), rel=0.05)
    assert overall["bias"] == pytest.approx(np.mean(native), abs=0.1)
    assert "| all |" in report_markdown(rep)


def test_aw3d30_against_itself_is_zero():
    r = compare_dem_files(AW3D30, AW3D30, IBURI_ROI, SLOPE_CLASSES_DEG)
    rep = r.report
    assert rep["a"]["collection"] == "alos-dem" and rep["a"]["vertical_datum"] == "EGM96 geoid"
    assert rep["pixels"]["excluded"] == 0 and rep["pixels"]["compared"] == rep["pixels"]["in_roi"] > 0
    for key in ("elevation_m", "slope_deg"):
        overall = rep[key]["overall"]
        assert overall["count"] == rep["pixels"]["compared"]
        assert all(overall[k] == 0.0 for k in STAT_KEYS[1:])
    assert not any("not converted" in n for n in rep["notes"])  # same datum: no datum warning


def test_errors_name_the_dem(tmp_path):
    a, _, _, _ = _glo30_pair(tmp_path)
    with pytest.raises(InputError, match=r"DEM B \(.*AW3D30_DSM.tif\) does not cover the ROI: it spans "
                                         r"lon 141\.89"):
        compare_dem_files(a, AW3D30, SAO_TOME_ROI, SLOPE_CLASSES_DEG)
    text = tmp_path / "not_a_raster.tif"
    text.write_text("hello")
    with pytest.raises(InputError, match="DEM A .*not_a_raster.tif is not a raster GDAL can read"):
        compare_dem_files(text, a, SAO_TOME_ROI, SLOPE_CLASSES_DEG)
    empty = tmp_path / "empty.tif"
    with rasterio.open(a) as src:
        profile = src.profile
    with rasterio.open(empty, "w", **profile) as dst:
        dst.write(np.full((1, profile["height"], profile["width"]), np.nan, np.float32))
    with pytest.raises(InputError, match=r"no common valid pixels: .* DEM B \(.*empty.tif\) in \d+"):
        compare_dem_files(a, empty, SAO_TOME_ROI, SLOPE_CLASSES_DEG)


def test_dem_product_from_tag(tmp_path):
    path = tmp_path / "dem.tif"
    with rasterio.open(path, "w", driver="GTiff", width=2, height=2, count=1, dtype="float32",
                       crs="EPSG:4326", transform=Affine(1, 0, 0, 0, -1, 2)) as dst:
        dst.write(np.zeros((1, 2, 2), np.float32))
        dst.update_tags(dem_collection="cop-dem-glo-90")
    assert dem_product(path) == {"collection": "cop-dem-glo-90", "product": "Copernicus DEM GLO-90",
                                 "vertical_datum": "EGM2008 geoid", "identified_from": "file tag"}
