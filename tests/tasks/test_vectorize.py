"""Vectorizing: real landslide scars rasterized and vectorized back; attributes; the GeoPackage."""

from __future__ import annotations

import datetime as dt

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.features import rasterize
from scipy import ndimage

from tasks.core.errors import InputError
from tasks.vector.clean import label_objects
from tasks.vector.vectorize import (
    LANDSLIDE_COLUMN_NAMES,
    LANDSLIDE_COLUMNS,
    STATUS_NO_VALID,
    mask_to_polygons,
    valid_to_footprint,
    write_geopackage,
)

SCARS = "serra_do_mar_relict_landslide_polygons/Cicatrizes_nova_area_inteira_CRS32723.geojson"
# A 3 km x 3 km box holding 70+ of the 276 scars; 5 m pixels -> 600 x 600.
BOX = (452_000.0, 7_386_500.0, 455_000.0, 7_389_500.0)
RES = 5.0
JST = dt.timezone(dt.timedelta(hours=9))
ATTRS = {"scene_id": "S2B_MSIL1C_20180911", "acquired": dt.datetime(2018, 9, 11, 10, 30, tzinfo=JST),
         "model": "unet-resnet34@3f2a9c1d", "run_id": "run-0001",
         "detected_at": dt.datetime(2024, 5, 1, 12, 0, 5, tzinfo=dt.timezone.utc)}


@pytest.fixture(scope="module")
def scars(shared_data) -> gpd.GeoDataFrame:
    gdf = gpd.read_file(shared_data / SCARS)
    assert len(gdf) == 276 and gdf.crs == CRS.from_epsg(32723)
    return gdf[gdf.within(shapely.box(*BOX))].reset_index(drop=True)


@pytest.fixture(scope="module")
def grid():
    width = int((BOX[2] - BOX[0]) / RES)
    height = int((BOX[3] - BOX[1]) / RES)
    return Affine(RES, 0.0, BOX[0], 0.0, -RES, BOX[3]), height, width


@pytest.fixture(scope="module")
def scar_mask(scars, grid) -> np.ndarray:
    transform, h, w = grid
    return rasterize(scars.geometry, out_shape=(h, w), transform=transform, dtype="uint8")


def _layers(shape, seed=0):
    h, w = shape
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0.5, 1.0, shape)
    prob[rng.random(shape) < 0.05] = np.nan  # NaN pixels must be skipped, not poison the means
    uncertainty = np.full(shape, 0.25)
    rows = np.arange(h, dtype=float)[:, None] * np.ones((1, w))
    return prob, uncertainty, rows * 0.01 + 10.0, rows * -RES + 900.0


def test_round_trip_of_real_scars(scars, grid, scar_mask):
    transform, h, w = grid
    assert len(scars) > 60
    labels, n = label_objects(scar_mask)
    prob, unc, slope, elev = _layers(scar_mask.shape)
    gdf = mask_to_polygons(scar_mask, transform, "EPSG:32723", prob=prob, uncertainty=unc,
                           slope_deg=slope, elev_m=elev, static_attrs=ATTRS, id_offset=1000)

    assert len(gdf) == n and 0.9 * len(scars) <= n <= len(scars)  # some scars touch and merge
    assert list(gdf.columns) == [*LANDSLIDE_COLUMN_NAMES, "geometry"]
    assert gdf.crs == CRS.from_epsg(32723)
    assert gdf.is_valid.all() and (gdf.geom_type == "Polygon").all()
    # exact: every polygon is its pixels
    pixel_counts = np.bincount(labels.ravel())[1:]
    np.testing.assert_allclose(gdf["area_m2"], pixel_counts * RES**2, rtol=1e-9)
    # and close to the mapped scars (rasterization at 5 m)
    assert gdf["area_m2"].sum() == pytest.approx(scars.area.sum(), rel=0.03)
    np.testing.assert_allclose(gdf["perimeter_m"], gdf.length)
    assert (gdf["perimeter_m"] >= 4 * np.sqrt(gdf["area_m2"]) - 1e-6).all()

    # ids in raster order of each object's first pixel
    assert gdf["landslide_id"].tolist() == list(range(1001, 1001 + n))
    first = ndimage.minimum(np.arange(labels.size).reshape(labels.shape), labels, range(1, n + 1))
    r, c = np.divmod(np.asarray(first, dtype=np.int64), w)
    x, y = transform @ (c + 0.5, r + 0.5)
    assert gdf.contains(gpd.GeoSeries(gpd.points_from_xy(x, y), crs=gdf.crs)).all()

    # attributes over each object's pixels, NaN-aware
    idx = range(1, n + 1)
    ok = np.isfinite(prob)
    np.testing.assert_allclose(gdf["mean_prob"], ndimage.mean(prob, np.where(ok, labels, 0), idx))
    np.testing.assert_allclose(gdf["max_prob"],
                               ndimage.maximum(np.where(ok, prob, -1), labels, idx))
    np.testing.assert_allclose(gdf["uncertainty"], 0.25)
    np.testing.assert_allclose(gdf["mean_slope_deg"], ndimage.mean(slope, labels, idx))
    np.testing.assert_allclose(gdf["mean_elev_m"], ndimage.mean(elev, labels, idx))

    # centroids: lon/lat of the polygon centroid, in Serra do Mar (Brazil, UTM 23S)
    back = gpd.GeoSeries(gpd.points_from_xy(gdf["centroid_lon"], gdf["centroid_lat"]),
                         crs="EPSG:4326").to_crs(32723)
    assert back.distance(gdf.centroid).max() < 1e-3
    assert gdf["centroid_lon"].between(-46.0, -45.0).all()
    assert gdf["centroid_lat"].between(-24.0, -23.0).all()

    # static attributes, datetimes in UTC
    assert (gdf["scene_id"] == ATTRS["scene_id"]).all() and (gdf["run_id"] == "run-0001").all()
    assert str(gdf["acquired"].dtype) == "datetime64[ns, UTC]"
    assert gdf["acquired"].iloc[0] == pd.Timestamp("2018-09-11T01:30:00Z")
    assert gdf["detected_at"].iloc[0] == pd.Timestamp("2024-05-01T12:00:05Z")


def test_geopackage_round_trip(scar_mask, grid, tmp_path):
    transform, h, w = grid
    prob, unc, slope, elev = _layers(scar_mask.shape)
    gdf = mask_to_polygons(scar_mask, transform, "EPSG:32723", prob=prob, uncertainty=unc,
                           slope_deg=slope, elev_m=elev, static_attrs=ATTRS)
    valid = np.ones(scar_mask.shape, bool)
    valid[:100, :100] = False  # a cloud
    foot = valid_to_footprint(valid, transform, "EPSG:32723",
                              attrs={"scene_id": ATTRS["scene_id"], "run_id": "run-0001"})
    out = write_geopackage(gdf, foot, tmp_path / "landslides.gpkg")
    assert out == tmp_path / "landslides.gpkg"
    assert [p.name for p in tmp_path.iterdir()] == ["landslides.gpkg"]  # no temp file left

    layers = dict(pyogrio.list_layers(out))
    # GDAL lists the default styles' table (QGIS's layer_styles) as a non-spatial layer
    assert layers == {"landslides": "Polygon", "footprint": "MultiPolygon", "layer_styles": None}
    info = pyogrio.read_info(out, layer="landslides")
    assert list(info["fields"]) == list(LANDSLIDE_COLUMN_NAMES)
    ogr = dict(zip(info["fields"], info["ogr_types"]))
    expected = {"int": "OFTInteger64", "real": "OFTReal", "text": "OFTString",
                "datetime": "OFTDateTime"}
    assert ogr == {name: expected[kind] for name, kind in LANDSLIDE_COLUMNS}

    back = gpd.read_file(out, layer="landslides", engine="pyogrio")
    assert back.crs == CRS.from_epsg(32723) and len(back) == len(gdf)
    assert pd.api.types.is_datetime64_any_dtype(back["acquired"])
    assert back["acquired"].dt.tz is not None
    assert (back["acquired"] == pd.Timestamp("2018-09-11T01:30:00Z")).all()
    assert (back["detected_at"] == pd.Timestamp("2024-05-01T12:00:05Z")).all()
    assert back["landslide_id"].tolist() == gdf["landslide_id"].tolist()
    np.testing.assert_allclose(back["mean_prob"], gdf["mean_prob"])
    np.testing.assert_allclose(back.area, gdf["area_m2"])

    fp = gpd.read_file(out, layer="footprint", engine="pyogrio")
    assert fp.crs == CRS.from_epsg(32723) and fp["status"].iloc[0] == "analysed"
    assert fp["area_m2"].iloc[0] == pytest.approx(valid.sum() * RES**2)
    assert fp.geom_type.iloc[0] == "MultiPolygon" and fp.is_valid.all()

    write_geopackage(gdf.iloc[:3], foot, out)  # replaces an existing file
    assert len(gpd.read_file(out, layer="landslides")) == 3


def test_empty_mask_gives_a_typed_empty_layer(grid, tmp_path):
    transform, h, w = grid
    mask = np.zeros((h, w), np.uint8)
    gdf = mask_to_polygons(mask, transform, "EPSG:32723", prob=None, uncertainty=None,
                           slope_deg=None, elev_m=None, static_attrs=ATTRS)
    assert len(gdf) == 0 and list(gdf.columns) == [*LANDSLIDE_COLUMN_NAMES, "geometry"]
    assert gdf.crs == CRS.from_epsg(32723)
    assert str(gdf["landslide_id"].dtype) == "int64" and str(gdf["area_m2"].dtype) == "float64"
    assert str(gdf["detected_at"].dtype) == "datetime64[ns, UTC]"

    foot = valid_to_footprint(np.ones((h, w), bool), transform, "EPSG:32723", attrs={})
    path = write_geopackage(gdf, foot, tmp_path / "empty.gpkg")
    info = pyogrio.read_info(path, layer="landslides")
    assert info["features"] == 0 and info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == list(LANDSLIDE_COLUMN_NAMES)
    assert info["ogr_types"][LANDSLIDE_COLUMN_NAMES.index("acquired")] == "OFTDateTime"
    assert CRS.from_user_input(info["crs"]) == CRS.from_epsg(32723)


def test_footprint_of_all_invalid_input(grid, tmp_path):
    transform, h, w = grid
    foot = valid_to_footprint(np.zeros((h, w), bool), transform, "EPSG:32723",
                              attrs={"scene_id": "s", "run_id": "r"})
    assert len(foot) == 1 and foot["status"].iloc[0] == STATUS_NO_VALID
    assert STATUS_NO_VALID.startswith("no valid data") and "cloud" not in STATUS_NO_VALID
    geom = foot.geometry.iloc[0]
    assert geom.geom_type == "MultiPolygon" and geom.is_empty and foot["area_m2"].iloc[0] == 0.0
    assert foot["scene_id"].iloc[0] == "s"
    empty = mask_to_polygons(np.zeros((h, w)), transform, "EPSG:32723", prob=None,
                             uncertainty=None, slope_deg=None, elev_m=None, static_attrs=ATTRS)
    path = write_geopackage(empty, foot, tmp_path / "nothing.gpkg")
    back = gpd.read_file(path, layer="footprint")
    assert back["status"].iloc[0] == STATUS_NO_VALID
    assert dict(pyogrio.list_layers(path))["footprint"] == "MultiPolygon"


def test_footprint_is_the_valid_area(grid):
    transform, h, w = grid
    valid = np.zeros((h, w), bool)
    valid[10:50, 10:50] = True
    valid[50:60, 50:60] = True  # touches the first block at one corner only
    valid[20:25, 20:25] = False  # a hole
    foot = valid_to_footprint(valid, transform, "EPSG:32723", attrs={"run_id": "r"})
    geom = foot.geometry.iloc[0]
    assert geom.geom_type == "MultiPolygon" and geom.is_valid and len(geom.geoms) == 2
    assert foot["area_m2"].iloc[0] == pytest.approx(valid.sum() * RES**2)
    with pytest.raises(InputError, match="status"):
        valid_to_footprint(valid, transform, "EPSG:32723", attrs={"status": "x"})


def test_diagonal_contact_gives_two_valid_polygons():
    mask = np.zeros((6, 6), np.uint8)
    mask[1:3, 1:3] = 1
    mask[3:5, 3:5] = 1  # touches the first square at one corner
    mask[0, 5] = 1
    transform = Affine(10.0, 0.0, 400_000.0, 0.0, -10.0, 7_400_000.0)
    gdf = mask_to_polygons(mask, transform, "EPSG:32723", prob=np.full(mask.shape, 0.7),
                           uncertainty=None, slope_deg=None, elev_m=None, static_attrs=ATTRS)
    assert len(gdf) == 3 == label_objects(mask)[1]
    assert gdf.is_valid.all() and (gdf.geom_type == "Polygon").all()
    assert gdf["area_m2"].tolist() == [100.0, 400.0, 400.0]  # raster order: (0,5), (1,1), (3,3)
    assert gdf["mean_prob"].tolist() == pytest.approx([0.7] * 3)
    assert gdf["uncertainty"].isna().all() and gdf["mean_slope_deg"].isna().all()


def test_object_with_hole_keeps_it():
    mask = np.zeros((7, 7), np.uint8)
    mask[1:6, 1:6] = 1
    mask[3, 3] = 0
    gdf = mask_to_polygons(mask, Affine(10, 0, 0, 0, -10, 70), "EPSG:32723", prob=None,
                           uncertainty=None, slope_deg=None, elev_m=None, static_attrs=ATTRS)
    geom = gdf.geometry.iloc[0]
    assert len(geom.interiors) == 1 and geom.area == 2400.0 == gdf["area_m2"].iloc[0]


def test_bad_input_is_rejected(grid, scar_mask, tmp_path):
    transform, h, w = grid
    kw = dict(prob=None, uncertainty=None, slope_deg=None, elev_m=None)
    naive = {**ATTRS, "acquired": dt.datetime(2018, 9, 11)}
    with pytest.raises(InputError, match="timezone"):
        mask_to_polygons(scar_mask, transform, "EPSG:32723", static_attrs=naive, **kw)
    with pytest.raises(InputError, match="missing run_id"):
        mask_to_polygons(scar_mask, transform, "EPSG:32723",
                         static_attrs={k: v for k, v in ATTRS.items() if k != "run_id"}, **kw)
    with pytest.raises(InputError, match="unknown sceneid"):
        mask_to_polygons(scar_mask, transform, "EPSG:32723", static_attrs={**ATTRS, "sceneid": 1},
                         **kw)
    with pytest.raises(InputError, match="shape"):
        mask_to_polygons(scar_mask, transform, "EPSG:32723", static_attrs=ATTRS,
                         **{**kw, "prob": np.zeros((3, 3))})
    with pytest.raises(InputError, match="crs"):
        mask_to_polygons(scar_mask, transform, None, static_attrs=ATTRS, **kw)
    # unknown acquisition date is allowed (GEE mosaics carry none)
    gdf = mask_to_polygons(scar_mask[:50, :50], transform, "EPSG:32723",
                           static_attrs={**ATTRS, "acquired": None}, **kw)
    assert gdf["acquired"].isna().all()
    foot = valid_to_footprint(np.ones((4, 4), bool), transform, "EPSG:32723", attrs={})
    with pytest.raises(InputError, match="schema"):
        write_geopackage(gdf.drop(columns=["model"]), foot, tmp_path / "x.gpkg")
    with pytest.raises(InputError, match="CRS"):
        write_geopackage(gdf, foot.to_crs(32722), tmp_path / "x.gpkg")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("origin", [(435720.0, 4179460.0), (500000.5, 4700000.25), (-3.7, 51.3)])
@pytest.mark.parametrize("res, height, width", [(10.0, 2048, 2048), (10.0, 300, 517), (0.0001, 7, 1)])
def test_a_block_valid_everywhere_is_the_rectangle_shapes_traces(origin, res, height, width):
    from rasterio.features import shapes
    from shapely.geometry import shape

    from tasks.vector.vectorize import _block_rectangle

    transform = rasterio.Affine(res, 0, origin[0], 0, -res, origin[1]) * rasterio.Affine.translation(2048, 1024)
    ones = np.ones((height, width), np.uint8)
    (traced,) = [shape(g) for g, _ in shapes(ones, mask=ones.astype(bool), connectivity=4, transform=transform)]
    assert _block_rectangle(transform, height, width).wkb == traced.wkb
