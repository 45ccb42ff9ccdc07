"""Block-wise cleanup and vectorization equal the whole-scene versions (real Iburi run)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import rasterio

from tasks.core.bands import BAND_NAMES
from tasks.vector.clean import CleanParams, clean_halo_px, clean_mask, clean_raster
from tasks.vector.vectorize import footprint_raster, mask_to_polygons, valid_to_footprint, vectorize_raster

ATTRS = {"scene_id": "s", "acquired": None, "model": "index", "run_id": "r",
         "detected_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}


@pytest.fixture(scope="module")
def iburi_work(tmp_path_factory):
    """prob/valid/stack rasters of an index-rule run over part of the sample (no Prefect)."""
    from types import SimpleNamespace

    from tests.data.crops import iburi_stack, predict_blocks

    work = tmp_path_factory.mktemp("work")
    res, grid = iburi_stack(work, (141.94, 42.70, 142.00, 42.75))
    prob, unc, _ = predict_blocks(res.stack_path, res.valid_path, work)
    inf = SimpleNamespace(prob_path=str(prob), uncertainty_path=str(unc))
    return work, res, inf, grid


@pytest.mark.parametrize("params", [CleanParams(), CleanParams(opening_radius_px=2, closing_radius_px=0,
                                                               fill_holes_max_area_m2=0, min_area_m2=2000)])
def test_blockwise_clean_equals_whole(iburi_work, tmp_path, params):
    work, res, inf, grid = iburi_work
    with rasterio.open(inf.prob_path) as p, rasterio.open(res.valid_path) as v:
        whole = clean_mask(np.nan_to_num(p.read(1), nan=0.0), v.read(1).astype(bool), 10.0, params)
    assert clean_halo_px(params, 10.0) < 64
    n = clean_raster(inf.prob_path, res.valid_path, tmp_path / "m.tif", 10.0, params, block_px=97)
    with rasterio.open(tmp_path / "m.tif") as m:
        blocks = m.read(1)
    assert n == int(whole.sum()) > 1000
    np.testing.assert_array_equal(blocks, whole)


def test_blockwise_vectorize_equals_whole(iburi_work, tmp_path):
    work, res, inf, grid = iburi_work
    clean_raster(inf.prob_path, res.valid_path, tmp_path / "m.tif", 10.0, block_px=10_000)
    with rasterio.open(tmp_path / "m.tif") as m, rasterio.open(inf.prob_path) as p, \
            rasterio.open(inf.uncertainty_path) as u, rasterio.open(res.stack_path) as s:
        mask = m.read(1)
        whole = mask_to_polygons(mask, m.transform, m.crs, prob=p.read(1), uncertainty=u.read(1),
                                 slope_deg=s.read(BAND_NAMES.index("SLOPE") + 1),
                                 elev_m=s.read(BAND_NAMES.index("DEM") + 1), static_attrs=ATTRS)
    layers = {"prob": (inf.prob_path, 1), "uncertainty": (inf.uncertainty_path, 1),
              "slope_deg": (res.stack_path, BAND_NAMES.index("SLOPE") + 1),
              "elev_m": (res.stack_path, BAND_NAMES.index("DEM") + 1)}
    blocks = vectorize_raster(tmp_path / "m.tif", layers, static_attrs=ATTRS, block_px=61)
    assert len(whole) > 50 and len(blocks) == len(whole)
    assert blocks["landslide_id"].tolist() == whole["landslide_id"].tolist()
    assert blocks.is_valid.all() and (blocks.geom_type == "Polygon").all()
    # the same shapes, object by object (pixel-exact polygons: symmetric difference has no area)
    sym = blocks.geometry.symmetric_difference(whole.geometry, align=True).area
    assert sym.max() < 1e-6
    for col in ("area_m2", "perimeter_m", "mean_prob", "max_prob", "uncertainty",
                "mean_slope_deg", "mean_elev_m", "centroid_lon", "centroid_lat"):
        np.testing.assert_allclose(blocks[col], whole[col], rtol=1e-6, atol=1e-9, err_msg=col)
    # objects really crossed seams in this test
    assert any(g.bounds[2] - g.bounds[0] > 61 * 10 for g in whole.geometry)


def test_blockwise_footprint_equals_whole(iburi_work):
    work, res, inf, grid = iburi_work
    with rasterio.open(res.valid_path) as v:
        whole = valid_to_footprint(v.read(1), v.transform, v.crs, attrs={"run_id": "r"})
    blocks = footprint_raster(res.valid_path, attrs={"run_id": "r"}, block_px=77)
    assert blocks.geometry.iloc[0].symmetric_difference(whole.geometry.iloc[0]).area < 1e-6
    assert blocks["area_m2"].iloc[0] == pytest.approx(whole["area_m2"].iloc[0])
    assert blocks["status"].iloc[0] == whole["status"].iloc[0]


@pytest.mark.parametrize("block_px", [37, 64, 500])
def test_blockwise_footprint_with_holes_and_seams_equals_whole(tmp_path, block_px):
    # synthetic mechanics: a valid area with cloud holes inside blocks, holes cut by seams, valid
    # islands inside holes, a block with no valid pixel and one valid everywhere
    import shapely
    from scipy import ndimage

    rng = np.random.default_rng(3)
    valid = ~ndimage.binary_dilation(rng.random((300, 280)) < 0.004, iterations=3)
    valid[100:140, 100:140] = False
    valid[115:125, 115:125] = True  # an island in a hole
    valid[150:230, 150:230] = False
    valid[160:220, 160:220] = True  # an island across seams, with a hole of its own
    valid[185:190, 175:180] = False
    valid[:, 250:] = False  # the right edge: no data
    valid[200:264, :64] = True
    transform = rasterio.Affine(10, 0, 500000, 0, -10, 4700000)
    path = tmp_path / "valid.tif"
    with rasterio.open(path, "w", driver="GTiff", width=280, height=300, count=1, dtype="uint8",
                       crs="EPSG:32654", transform=transform) as dst:
        dst.write(valid.astype(np.uint8), 1)
    whole = valid_to_footprint(valid, transform, "EPSG:32654", attrs={}).geometry.iloc[0]
    blocks = footprint_raster(path, attrs={}, block_px=block_px).geometry.iloc[0]
    assert blocks.is_valid and whole.is_valid
    assert blocks.symmetric_difference(whole).area == 0
    assert blocks.area == whole.area == valid.sum() * 100
    holes = sum(len(p.interiors) for p in whole.geoms)
    assert holes > 20 and sum(len(p.interiors) for p in blocks.geoms) == holes
    assert len(blocks.geoms) == len(whole.geoms)
    assert shapely.normalize(shapely.simplify(blocks, 0)).equals_exact(shapely.normalize(shapely.simplify(whole, 0)), 0)


@pytest.mark.parametrize("block_px", [128, 100])
def test_blockwise_footprint_island_with_a_hole_inside_anothers_hole(tmp_path, block_px):
    # an island across a seam, inside the hole of the polygon around it, with a hole of its own:
    # that hole lies inside both polygons' outer rings and belongs to the island (the innermost)
    valid = np.ones((256, 256), bool)
    valid[40:220, 40:220] = False
    valid[60:200, 60:200] = True
    valid[90:100, 90:100] = False
    transform = rasterio.Affine(10, 0, 500000, 0, -10, 4700000)
    path = tmp_path / "valid.tif"
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8",
                       crs="EPSG:32654", transform=transform) as dst:
        dst.write(valid.astype(np.uint8), 1)
    blocks = footprint_raster(path, attrs={}, block_px=block_px).geometry.iloc[0]
    whole = valid_to_footprint(valid, transform, "EPSG:32654", attrs={}).geometry.iloc[0]
    assert blocks.is_valid and blocks.symmetric_difference(whole).area == 0
    assert sorted(len(p.interiors) for p in blocks.geoms) == [1, 1]
