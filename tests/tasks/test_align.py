"""Local source checks, the analysis grid, and alignment of multi-resolution / multi-CRS bands."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely.geometry import box

from tasks.core.bands import BAND_NAMES
from tasks.core.errors import InputError
from tasks.core.grid import make_grid, resolve_roi, roi_in_grid_crs, utm_epsg
from tasks.raster.align import build_stack
from tasks.sources.catalog import load_catalog
from tasks.sources.local import harmonization_offset, resolve_local_inputs
from tests.data.crops import T18SVG, crop_raster, local_source, lonlat_bounds, t18svg_crops, write_catalog


def test_utm_zone_and_snapping():
    assert utm_epsg(141.95, 42.72) == 32654
    assert utm_epsg(-79.07, -3.99) == 32717
    grid = make_grid(box(141.95, 42.70, 141.96, 42.71))
    assert grid.crs == "EPSG:32654"
    assert grid.xmin % 10 == 0 and grid.ymax % 10 == 0
    assert 80 <= grid.width <= 84 and 110 <= grid.height <= 113  # ~0.82 x 1.11 km


def test_roi_outside_data_is_refused():
    with pytest.raises(InputError, match="does not intersect"):
        resolve_roi(None, None, (10.0, 10.0, 10.1, 10.1), None, (141.0, 42.0, 142.0, 43.0))


def test_harmonization_offset():
    assert harmonization_offset("04.00") == 1000
    assert harmonization_offset("05.09") == 1000
    assert harmonization_offset("02.01") == 0
    assert harmonization_offset(None) == 0


def test_multiresolution_bands_align_to_10m(tmp_path):
    """Real 10/20/60 m bands of T18SVG land on one 10 m grid, values preserved."""
    crops = t18svg_crops(tmp_path / "bands")
    cat = load_catalog(write_catalog(tmp_path / "cat.yaml", {"s": local_source(crops)}))
    inputs = resolve_local_inputs(cat, "s", ("B01", "B02", "B11"))
    roi = resolve_roi(None, None, None, None, inputs.extent_lonlat)
    grid = make_grid(roi)
    assert grid.crs == "EPSG:32618"
    res = build_stack(inputs, grid, tmp_path / "work", ("B01", "B02", "B11"), roi_in_grid_crs(roi, grid))
    with rasterio.open(res.stack_path) as src:
        assert src.count == 14 and src.descriptions == BAND_NAMES
        assert src.res == (10.0, 10.0)
        stack = src.read()
    b02 = stack[BAND_NAMES.index("B02")]
    with rasterio.open(crops["B02"]) as src:  # 10 m band on a 10 m-aligned grid: same pixels
        native = src.read(1).astype(np.float32)
        rows, cols = np.mgrid[0:grid.height, 0:grid.width]
        xs = grid.xmin + (cols + 0.5) * 10
        ys = grid.ymax - (rows + 0.5) * 10
        nr, nc = rasterio.transform.rowcol(src.transform, xs.ravel(), ys.ravel())
    nr, nc = np.asarray(nr).reshape(rows.shape), np.asarray(nc).reshape(rows.shape)
    inside = (nr >= 1) & (nr < native.shape[0] - 1) & (nc >= 1) & (nc < native.shape[1] - 1)
    assert inside.sum() > 0.8 * native.size
    np.testing.assert_allclose(b02[inside], native[nr[inside], nc[inside]], rtol=0, atol=1e-3)
    # 20 m / 60 m bands are resampled, not shifted: means agree with the native files
    for band in ("B11", "B01"):
        with rasterio.open(crops[band]) as src:
            native_mean = src.read(1).astype(np.float64).mean()
        got = stack[BAND_NAMES.index(band)]
        assert abs(np.nanmean(got) - native_mean) / native_mean < 0.02
    assert np.isnan(stack[BAND_NAMES.index("B05")]).all()  # not requested: all nodata
    assert res.valid_fraction > 0.8
    # the joint moments of the required bands over the valid pixels, taken while writing
    with rasterio.open(res.valid_path) as src:
        valid = src.read(1) == 1
    moments = res.band_moments
    assert moments["bands"] == ["B01", "B02", "B11"] and moments["n_px"] == int(valid.sum())
    pixels = np.stack([stack[BAND_NAMES.index(b)][valid] for b in moments["bands"]]).astype(np.float64)
    np.testing.assert_allclose(moments["mean"], pixels.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(moments["covariance"], np.cov(pixels, bias=True), rtol=1e-6)
    assert res.band_stats["B02"]["mean"] == round(float(pixels[1].mean()), 4)


def test_band_in_another_crs_is_reprojected(tmp_path):
    """A sibling band delivered in EPSG:4326 is warped, not refused, and matches the UTM original."""
    crops = t18svg_crops(tmp_path / "bands", bands=("B02", "B03"))
    geo = tmp_path / "bands" / "s2_B03_4326.tif"
    with rasterio.open(crops["B03"]) as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                                      *src.bounds)
        out = np.zeros((h, w), dtype=np.uint16)
        reproject(src.read(1), out, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=transform, dst_crs="EPSG:4326", resampling=Resampling.bilinear,
                  src_nodata=0, dst_nodata=0)
        profile = dict(driver="GTiff", width=w, height=h, count=1, dtype="uint16",
                       crs="EPSG:4326", transform=transform, nodata=0)
    with rasterio.open(geo, "w", **profile) as dst:
        dst.write(out, 1)

    def stack_for(b03):
        cat = load_catalog(write_catalog(tmp_path / "c.yaml", {"s": local_source({"B02": crops["B02"], "B03": b03})}))
        inputs = resolve_local_inputs(cat, "s", ("B02", "B03"))
        roi = box(*lonlat_bounds(crops["B02"])).buffer(-0.002)
        grid = make_grid(roi)
        res = build_stack(inputs, grid, tmp_path / f"w{b03.stem}", ("B02", "B03"))
        with rasterio.open(res.stack_path) as src:
            return src.read(BAND_NAMES.index("B03") + 1)

    a, b = stack_for(crops["B03"]), stack_for(geo)
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.mean() > 0.9
    rel = np.abs(a[ok] - b[ok]) / a[ok]
    assert np.median(rel) < 0.03  # two bilinear resamplings of real texture


@pytest.mark.parametrize("problem", ["missing", "not_raster", "no_crs", "missing_band"])
def test_bad_rasters_are_named(tmp_path, problem):
    crops = t18svg_crops(tmp_path / "bands", bands=("B02", "B03", "B04"))
    if problem == "missing":
        crops["B03"] = tmp_path / "nope.tif"
        match = "does not exist"
    elif problem == "not_raster":
        crops["B03"] = tmp_path / "text.tif"
        crops["B03"].write_text("not a raster")
        match = "not a raster"
    elif problem == "no_crs":
        crops["B03"] = crop_raster(T18SVG / "s2_B03.jp2", tmp_path / "nocrs.tif",
                                   (440040.0, 4165020.0, 441000.0, 4166000.0), crs=None)
        match = "has no CRS"
    else:
        del crops["B04"]
        match = "cannot provide band.*B04"
    cat = load_catalog(write_catalog(tmp_path / "cat.yaml", {"s": local_source(crops)}))
    with pytest.raises(InputError, match=match):
        resolve_local_inputs(cat, "s", ("B02", "B03", "B04"))


def test_nan_in_band_becomes_nodata(tmp_path):
    crops = t18svg_crops(tmp_path / "bands", bands=("B02",))
    path = tmp_path / "bands" / "b02_float.tif"
    with rasterio.open(crops["B02"]) as src:
        data = src.read(1).astype(np.float32)
        profile = src.profile.copy()
    data[:50, :50] = np.nan
    profile.update(dtype="float32", nodata=None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    cat = load_catalog(write_catalog(tmp_path / "cat.yaml", {"s": local_source({"B02": path})}))
    inputs = resolve_local_inputs(cat, "s", ("B02",))
    grid = make_grid(box(*inputs.extent_lonlat))
    res = build_stack(inputs, grid, tmp_path / "w", ("B02",))
    assert res.band_stats["B02"]["nan_pixels_in_source"] == 2500
    with rasterio.open(res.valid_path) as v:
        valid = v.read(1)
    assert 0.9 < valid.mean() < 0.999  # the NaN corner is not analysed, the rest is


def test_stack_is_compressed_only_when_disk_is_short(tmp_path, monkeypatch):
    """stack.tif is written uncompressed where the disk has room, ZSTD where it does not, with the
    same values either way."""
    import shutil

    from tasks.raster import align

    crops = t18svg_crops(tmp_path / "bands")
    cat = load_catalog(write_catalog(tmp_path / "cat.yaml", {"s": local_source(crops)}))
    inputs = resolve_local_inputs(cat, "s", ("B02", "B11"))
    roi = resolve_roi(None, None, None, None, inputs.extent_lonlat)
    grid = make_grid(roi)
    n_bytes = grid.width * grid.height * len(BAND_NAMES) * 4
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real._replace(free=2 * n_bytes + 2**40))
    roomy = build_stack(inputs, grid, tmp_path / "roomy", ("B02", "B11"), roi_in_grid_crs(roi, grid))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real._replace(free=2 * n_bytes))
    assert align.compress_stack(tmp_path, n_bytes)
    short = build_stack(inputs, grid, tmp_path / "short", ("B02", "B11"), roi_in_grid_crs(roi, grid))
    with rasterio.open(roomy.stack_path) as a, rasterio.open(short.stack_path) as b:
        assert a.compression is None and b.compression.value == "ZSTD"
        assert a.read().tobytes() == b.read().tobytes()
