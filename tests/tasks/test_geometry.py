"""Polygon outlines (simplify, smooth) and the terrain attributes, on synthetic masks and DEMs.

Synthetic only where the mechanics need exact control: holes, an island in a hole, neighbours that
touch at a pixel corner, planes of known aspect. The sample-run checks are in
tests/flows/test_geometry_run.py.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from tasks.core.errors import InputError
from tasks.raster.terrain import aspect_deg
from tasks.vector.classes import CONFIDENCE_HIGH_MIN_PROB, CONFIDENCE_MEDIUM_MIN_PROB
from tasks.vector.geometry import (
    GeometryParams,
    _fallback,
    area_change_bound_m2,
    chaikin,
    default_simplify_m,
    simplify_coverage,
)
from tasks.vector.vectorize import mask_to_polygons, vectorize_raster

RES = 10.0
TRANSFORM = Affine(RES, 0, 500_000.0, 0, -RES, 4_700_000.0)
CRS = "EPSG:32654"
ATTRS = {"scene_id": "s", "acquired": None, "model": "m", "run_id": "r",
         "detected_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2


def coverage_mask() -> np.ndarray:
    """Objects whose outlines stress a coverage simplifier: a jagged ring (a hole) with an island
    in the hole touching the ring at one corner, two blobs touching each other at a corner, a
    diagonal staircase, and a 5-pixel plus sign."""
    m = np.zeros((80, 80), dtype=bool)
    m |= _disk(80, 80, 20, 20, 15) & ~_disk(80, 80, 20, 20, 8)
    island = _disk(80, 80, 20, 20, 4)
    m |= island
    # a spur of the island reaches (13, 20), diagonal to the ring's pixels (12, 19) and (12, 21):
    # two 4-connected objects that share two corners
    m[13:17, 20] = True
    # two jagged blobs that meet at one pixel corner, (55, 15)
    y, x = np.mgrid[0:10, 0:10]
    m[45:55, 5:15] = x + y >= 4
    m[55:65, 15:25] = x + y <= 14
    for k in range(25):  # staircase
        m[45 + k, 40 + k:44 + k] = True
    m[10, 60:63] = True
    m[9:12, 61] = True
    return m


def prob_layer(mask: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(18)
    return np.where(mask, rng.uniform(0.55, 0.95, mask.shape), 0.1)


def polygons(mask: np.ndarray, **geometry) -> np.ndarray:
    gdf = mask_to_polygons(mask, TRANSFORM, CRS, prob=prob_layer(mask), uncertainty=None,
                           slope_deg=None, elev_m=None, static_attrs=ATTRS,
                           geometry=GeometryParams(**geometry))
    return gdf


def touching_pairs(geoms: np.ndarray) -> set[tuple[int, int]]:
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    return {(a, b) for a, b in zip(i.tolist(), j.tolist()) if a < b}


def assert_clean_coverage(out: np.ndarray, exact: np.ndarray) -> None:
    """Valid, same holes, no overlaps, and every pair that touched still touches."""
    assert len(out) == len(exact)
    assert shapely.is_valid(out).all()
    np.testing.assert_array_equal(shapely.get_num_interior_rings(out),
                                  shapely.get_num_interior_rings(exact))
    pairs = touching_pairs(out)
    for a, b in pairs:
        assert shapely.area(shapely.intersection(out[a], out[b])) < 1e-6, (a, b)
    assert touching_pairs(exact) <= pairs


def test_the_synthetic_mask_has_what_it_is_meant_to():
    exact = polygons(coverage_mask(), simplify_m=0.0)
    geoms = exact.geometry.values
    assert len(geoms) == 6
    assert shapely.get_num_interior_rings(geoms).sum() == 1
    assert len(touching_pairs(geoms)) == 2  # ring-island (two corners) and blob-blob (one)
    # exact pixel outlines: the polygon area is the pixel area
    np.testing.assert_allclose(exact["area_m2"], exact["area_px_m2"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("simplify_m", [default_simplify_m(RES), 15.0, 40.0])
def test_simplify_keeps_the_coverage(simplify_m):
    mask = coverage_mask()
    exact = polygons(mask, simplify_m=0.0)
    simple = polygons(mask, simplify_m=simplify_m)
    assert_clean_coverage(simple.geometry.values, exact.geometry.values)
    assert (simple["landslide_id"] == exact["landslide_id"]).all()
    assert (simple["area_px_m2"] == exact["area_px_m2"]).all()
    bound = area_change_bound_m2(exact["perimeter_m"], simplify_m)
    assert (np.abs(simple["area_m2"] - exact["area_px_m2"]) <= bound * (1 + 1e-6)).all()
    # no point moved further than the tolerance
    moved = shapely.hausdorff_distance(shapely.boundary(simple.geometry.values),
                                       shapely.boundary(exact.geometry.values))
    assert (moved <= simplify_m * (1 + 1e-6)).all()
    assert (shapely.get_num_coordinates(simple.geometry.values)
            <= shapely.get_num_coordinates(exact.geometry.values)).all()


def test_half_the_pixel_diagonal_straightens_a_one_pixel_staircase():
    mask = np.zeros((40, 40), dtype=bool)
    for k in range(30):
        mask[5 + k, 5 + k:9 + k] = True
    exact = polygons(mask, simplify_m=0.0).geometry.values[0]
    simple = polygons(mask, simplify_m=default_simplify_m(RES)).geometry.values[0]
    assert shapely.get_num_coordinates(exact) > 100
    assert shapely.get_num_coordinates(simple) <= 10


def test_smoothing_keeps_the_coverage():
    mask = coverage_mask()
    exact = polygons(mask, simplify_m=0.0)
    smooth = polygons(mask, simplify_m=default_simplify_m(RES), smooth_iterations=2)
    assert_clean_coverage(smooth.geometry.values, exact.geometry.values)
    assert smooth["area_m2"].gt(0).all()


def test_chaikin_keeps_line_ends_and_cuts_ring_corners():
    line = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0]])
    out = chaikin(line, 1, closed=False)
    np.testing.assert_array_equal(out[0], line[0])
    np.testing.assert_array_equal(out[-1], line[-1])
    np.testing.assert_allclose(out[1:-1], [[3.0, 0.0], [4.0, 1.0]])
    square = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0], [0.0, 0.0]])
    ring = chaikin(square, 1, closed=True)
    assert np.array_equal(ring[0], ring[-1]) and len(ring) == 9
    assert shapely.Polygon(ring).area == pytest.approx(16.0 - 4 * 0.5)  # four 1x1/2 corners cut


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_a_negative_or_infinite_tolerance_is_refused(bad):
    with pytest.raises(InputError, match="simplify_m"):
        GeometryParams(simplify_m=bad)
    with pytest.raises(InputError):
        simplify_coverage(np.array([shapely.box(0, 0, 1, 1)]), bad)


@pytest.mark.parametrize(("dem_of", "expected"), [
    (lambda y, x: -x, 90.0),  # lower to the east: faces east
    (lambda y, x: x, 270.0),
    (lambda y, x: y, 0.0),  # rows run south: higher to the south, faces north
    (lambda y, x: -y, 180.0),
    (lambda y, x: -x - y, 135.0),
])
def test_aspect_of_planes(dem_of, expected):
    y, x = np.mgrid[0:6, 0:6].astype(float)
    a = aspect_deg(dem_of(y, x) * 3.0, RES, RES)
    np.testing.assert_allclose(a, expected, atol=1e-4)


def test_a_flat_dem_has_no_aspect():
    assert np.isnan(aspect_deg(np.full((4, 4), 12.0), RES, RES)).all()
    a = aspect_deg(np.array([[1.0, np.nan], [1.0, 2.0]]), RES, RES)
    assert np.isnan(a[0, 1])


def test_aspect_at_chosen_cells_has_the_whole_arrays_bits():
    """The polygons' aspect is taken at their pixels only (aspect_deg_at): the same float32 bits as
    aspect_deg over the whole block, next to holes, on flat ground and on the halo's border."""
    from tasks.raster.terrain import aspect_deg_at

    rng = np.random.default_rng(3)
    for shape in ((1, 1), (2, 7), (40, 33)):
        halo = rng.normal(0, 20, (shape[0] + 2, shape[1] + 2)).cumsum(0).cumsum(1)
        halo[rng.random(halo.shape) < 0.1] = np.nan
        halo[:, :3] = 50.0  # flat: no aspect
        halo[0] = np.nan  # outside the raster
        whole = aspect_deg(halo, RES, 12.0)[1:-1, 1:-1]
        idx = np.flatnonzero(rng.random(whole.size) < 0.4)
        rows, cols = np.divmod(idx, shape[1])
        at = aspect_deg_at(halo, rows, cols, RES, 12.0)
        assert at.dtype == np.float32
        np.testing.assert_array_equal(at.view(np.uint32), whole.ravel()[idx].view(np.uint32))
    assert np.isnan(whole).any() and np.isfinite(whole).any()
    with pytest.raises(InputError, match="res_x_m"):
        aspect_deg_at(halo, rows, cols, 0.0, 10.0)


def _write(path, arr, dtype):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1,
                       dtype=dtype, crs=CRS, transform=TRANSFORM) as dst:
        dst.write(arr.astype(dtype), 1)
    return str(path)


def test_terrain_attributes_blockwise_equal_whole_and_are_sane(tmp_path):
    """A cone (every aspect present) and a tilted plane: block-wise statistics with seams through
    the objects equal the whole-array ones; aspect circular, relief and max slope as built."""
    mask = coverage_mask()
    y, x = np.mgrid[0:80, 0:80].astype(float)
    dem = 100.0 + 0.5 * x - 60.0 * np.hypot(y - 20, x - 20) / 40.0  # a cone on a tilted plane
    from tasks.raster.terrain import slope_deg

    slope = slope_deg(dem, RES, RES)
    prob = prob_layer(mask)
    whole = mask_to_polygons(mask, TRANSFORM, CRS, prob=prob, uncertainty=None, slope_deg=slope,
                             elev_m=dem, static_attrs=ATTRS)
    layers = {"prob": (_write(tmp_path / "p.tif", prob, "float32"), 1),
              "slope_deg": (_write(tmp_path / "s.tif", slope, "float32"), 1),
              "elev_m": (_write(tmp_path / "e.tif", dem, "float64"), 1)}
    blocks = vectorize_raster(_write(tmp_path / "m.tif", mask, "uint8"), layers,
                              static_attrs=ATTRS, block_px=16)
    for col in ("aspect_deg", "relief_m", "max_slope_deg", "area_px_m2", "mean_elev_m"):
        np.testing.assert_allclose(blocks[col], whole[col], rtol=1e-5, atol=1e-4, err_msg=col)
    assert blocks["aspect_deg"].between(0, 360, inclusive="left").all()
    assert (blocks["relief_m"] >= 0).all()
    assert (blocks["max_slope_deg"] >= blocks["mean_slope_deg"]).all()
    assert (blocks["length_m"] >= blocks["width_m"]).all() and (blocks["elongation"] >= 1).all()
    # the ring around the cone's top faces every way in equal parts: its circular mean is the
    # direction the plane faces (west, rising to the east), whatever the ring's own aspects
    assert blocks.iloc[0]["aspect_deg"] == pytest.approx(270.0, abs=1.0)
    # the staircase on the cone's south-east flank: cone (south-east, 1.5 m/px) plus plane (west,
    # 0.5 m/px) faces about 152 degrees
    stair = blocks.loc[blocks["area_px_m2"] == 25 * 4 * RES * RES].iloc[0]
    assert 130 < stair["aspect_deg"] < 170
    expected = np.where(blocks["mean_prob"] >= CONFIDENCE_HIGH_MIN_PROB, "high",
                        np.where(blocks["mean_prob"] >= CONFIDENCE_MEDIUM_MIN_PROB, "medium", "low"))
    assert (blocks["confidence_class"].to_numpy() == expected).all()


def test_acquired_note_only_where_the_date_is_missing():
    mask = coverage_mask()
    note = "composite 2018-08-01..2019-07-31, no scene date"
    without = mask_to_polygons(mask, TRANSFORM, CRS, prob=None, uncertainty=None, slope_deg=None,
                               elev_m=None, static_attrs={**ATTRS, "acquired_note": note})
    assert (without["acquired_note"] == note).all() and without["acquired"].isna().all()
    dated = mask_to_polygons(mask, TRANSFORM, CRS, prob=None, uncertainty=None, slope_deg=None,
                             elev_m=None, static_attrs={**ATTRS, "acquired_note": note,
                                                        "acquired": "2018-09-11T01:30:00Z"})
    assert dated["acquired_note"].isna().all() and dated["acquired"].notna().all()
    assert (dated["confidence_class"] == "no value").all()  # no probability layer


def test_a_polygon_that_breaks_the_coverage_keeps_its_previous_outline():
    """The safety net behind both operations: an invalid or overlapping result is replaced by the
    input outline, together with the polygons near it."""
    ref = np.array([shapely.box(0, 0, 10, 10), shapely.box(10, 10, 20, 20),
                    shapely.box(100, 100, 110, 110)], dtype=object)
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-intersecting
    overlapping = shapely.box(5, 5, 20, 20)  # into the first box
    out = _fallback(np.array([bowtie, overlapping, shapely.box(101, 101, 109, 109)], dtype=object),
                    ref, "tested")
    assert shapely.equals(out[:2], ref[:2]).all()
    assert shapely.equals(out[2], shapely.box(101, 101, 109, 109))  # far away: kept as drawn


def test_drawing_afterwards_equals_drawing_while_vectorizing(tmp_path):
    """The scan vectorizes exact outlines, takes its per-polygon statistics on them, and draws
    last (draw_landslides): the same polygons and shape columns as drawing in vectorize_raster."""
    from tasks.vector.vectorize import draw_landslides

    mask = _write(tmp_path / "m.tif", coverage_mask(), "uint8")
    params = GeometryParams(simplify_m=default_simplify_m(RES), smooth_iterations=2)
    at_once = vectorize_raster(mask, {}, static_attrs=ATTRS, geometry=params)
    exact = vectorize_raster(mask, {}, static_attrs=ATTRS)
    later = draw_landslides(exact, params)
    assert list(later.columns) == list(at_once.columns)
    assert shapely.equals(later.geometry.values, at_once.geometry.values).all()
    for col in ("area_m2", "perimeter_m", "length_m", "width_m", "elongation", "centroid_lon",
                "area_px_m2"):
        np.testing.assert_allclose(later[col], at_once[col], rtol=1e-12, err_msg=col)
    assert draw_landslides(exact, GeometryParams()) is exact


def test_edges_simplified_by_group_equal_one_call_on_all_edges():
    """Simplifying the edges in groups whose bounding boxes do not meet (tasks.vector.geometry.
    _simplify_edges) gives, bit for bit, what one GEOS call on all edges gives: scattered blobs, a
    ring with an island in its hole, diagonal neighbours touching at a corner."""
    from rasterio.features import shapes
    from scipy import ndimage
    from shapely.geometry import LineString, MultiLineString

    from tasks.vector.geometry import _simplify_edges, coverage_edges

    rng = np.random.default_rng(5)
    mask = (ndimage.gaussian_filter(rng.random((300, 300)), 2.5) > 0.515).astype(np.uint8)
    mask[200:260, 20:80] = 1
    mask[215:245, 35:65] = 0
    mask[225:235, 45:55] = 1  # an island in the ring's hole
    mask[270:275, 100:105] = 1
    mask[275:280, 105:110] = 1  # touches the block above at one corner
    labels, _ = ndimage.label(mask)  # 4-connected objects, as the scan's
    transform = Affine(10, 0, 500000, 0, -10, 4700000)
    polys = shapely.orient_polygons(np.array(
        [shapely.geometry.shape(g) for g, v in shapes(labels.astype(np.int32), mask=labels > 0,
                                                      transform=transform)], dtype=object))
    lines = [LineString(e) for rings in coverage_edges(polys) for ring in rings for e in ring]
    one_call = shapely.get_parts(shapely.simplify(MultiLineString(lines), 7.07, preserve_topology=True))
    grouped = _simplify_edges(lines, 7.07)
    assert len(polys) > 20 and len(grouped) == len(one_call) == len(lines)
    assert [shapely.to_wkb(g) for g in grouped] == [shapely.to_wkb(g) for g in one_call]
    assert sum(shapely.get_num_coordinates(grouped)) < sum(shapely.get_num_coordinates(lines))
