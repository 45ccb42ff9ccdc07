"""A published run's products for people and catalogs (issue 18): ``item.json`` (STAC),
``report.html``, ``quicklook.png`` and the ``--format`` exports, on one real scan of the Iburi sample
(``sample_run`` in tests/conftest.py: a small bbox, the shipped model, every export pyarrow allows).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import shapely
from PIL import Image
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from tasks.core.defaults import EXPORT_FILES
from tasks.raster.quicklook import QUICKLOOK_MAX_PX, quicklook_shape
from tasks.run.outputs import FINAL_NAMES, NODATA_U8, PROB_SCALE
from tasks.run.stac import (
    MEDIA_COG,
    MEDIA_GEOPACKAGE,
    MEDIA_HTML,
    MEDIA_JSON,
    MEDIA_PNG,
    PROCESSING_EXTENSION,
    PROJECTION_EXTENSION,
    RASTER_EXTENSION,
    stac_errors,
)
from tasks.vector.classes import CONFIDENCE_CLASSES, SLOPE_CLASSES_DEG, confidence_class, slope_class


@pytest.fixture(scope="module")
def item(sample_run) -> dict:
    return json.loads((sample_run / "item.json").read_text())


@pytest.fixture(scope="module")
def manifest(sample_run) -> dict:
    return json.loads((sample_run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def landslides(sample_run) -> gpd.GeoDataFrame:
    return gpd.read_file(sample_run / "landslides.gpkg", layer="landslides")


@pytest.fixture(scope="module")
def report(sample_run) -> str:
    return (sample_run / "report.html").read_text()


def exported(sample_run: Path) -> list[str]:
    return sorted(n for n in EXPORT_FILES.values() if (sample_run / n).exists())


def test_the_run_folder_holds_the_final_files_and_the_asked_exports_only(sample_run):
    names = sorted(p.name for p in sample_run.iterdir())
    assert names == sorted([*FINAL_NAMES, *exported(sample_run)])
    assert {"landslides.geojson", "landslides.csv"} <= set(names)


# ---------------------------------------------------------------------------------------------
# item.json


def test_item_validates_against_stac_1_1_and_names_its_extensions(item):
    assert stac_errors(item) == []
    assert item["stac_version"] == "1.1.0" and item["type"] == "Feature"
    assert set(item["stac_extensions"]) == {PROJECTION_EXTENSION, RASTER_EXTENSION, PROCESSING_EXTENSION}


def test_item_id_and_processing_fields_come_from_the_manifest(item, manifest):
    props = item["properties"]
    assert item["id"] == manifest["run_id"]
    assert props["processing:level"] == "L4"
    assert props["processing:software"]["landslide-pipeline"] == manifest["versions"]["landslide-pipeline"]
    assert props["processing:software"]["gdal"] == manifest["versions"]["gdal"]
    assert manifest["detector"]["ref"] in props["processing:lineage"]
    assert props["landslide:polygons"] == manifest["counts"]["polygons"]


def test_item_geometry_is_the_footprint_in_lonlat(sample_run, item):
    fp = gpd.read_file(sample_run / "landslides.gpkg", layer="footprint").to_crs("EPSG:4326")
    footprint = shapely.union_all(fp.geometry.values)
    geom = shapely.geometry.shape(item["geometry"])
    assert geom.is_valid
    # simplified by half a pixel before reprojection: the difference is a thin sliver
    assert geom.symmetric_difference(footprint).area / footprint.area < 0.01
    assert np.allclose(item["bbox"], footprint.bounds, atol=2e-4)  # ~ 2 pixels at 10 m
    minx, miny, maxx, maxy = item["bbox"]
    assert 141.9 < minx < maxx < 142.1 and 42.6 < miny < maxy < 42.8  # lon/lat order, Iburi


def test_a_composite_without_scene_date_gets_the_asked_window(item, manifest):
    inputs, props = manifest["inputs"], item["properties"]
    assert inputs["acquired"] is None  # the bundled Iburi sample is a composite
    assert props["datetime"] is None
    window, composite = inputs["date_window"], inputs["acquired_range"]
    assert props["start_datetime"] == f"{window[0]}T00:00:00Z"
    # the region's window is open at the end: the composite's last day closes it
    assert props["end_datetime"] == f"{window[1] or composite[1]}T23:59:59Z"
    assert "composite" in props["landslide:time_basis"] and "date window" in props["landslide:time_basis"]


def test_item_assets_exist_with_relative_hrefs_roles_and_media_types(sample_run, item):
    assets = item["assets"]
    want = {"landslides": MEDIA_GEOPACKAGE, "probability": MEDIA_COG, "uncertainty": MEDIA_COG,
            "mask": MEDIA_COG, "manifest": MEDIA_JSON, "quicklook": MEDIA_PNG, "report": MEDIA_HTML}
    for key, media in want.items():
        assert assets[key]["type"] == media, key
    for key, asset in assets.items():
        assert asset["href"].startswith("./") and "://" not in asset["href"], key
        assert (sample_run / asset["href"]).is_file(), key
        assert asset["roles"], key
    for name in exported(sample_run):
        assert any(a["href"] == f"./{name}" for a in assets.values()), name


def test_cog_assets_carry_the_grid_and_encoding_as_pystac_reads_them(sample_run, item):
    loaded = pystac.Item.from_dict(item)
    for key in ("probability", "uncertainty", "mask"):
        asset = loaded.assets[key]
        proj = ProjectionExtension.ext(asset)
        band = RasterExtension.ext(asset).bands[0]
        with rasterio.open(sample_run / f"{key}.tif") as src:
            assert proj.code == src.crs.to_string()
            assert list(proj.shape) == [src.height, src.width]
            assert proj.transform == pytest.approx(list(src.transform)[:6])
            assert band.nodata == NODATA_U8 == src.nodata
            assert str(getattr(band.data_type, "value", band.data_type)) == src.dtypes[0] == "uint8"
        if key == "mask":
            assert band.scale is None
        else:
            assert band.scale == pytest.approx(1 / PROB_SCALE)
    assert RasterExtension.ext(loaded.assets["probability"]).bands[0].unit == "1"


# ---------------------------------------------------------------------------------------------
# report.html


RESOURCE = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


def test_report_loads_nothing_from_elsewhere_and_inlines_its_images(report):
    refs = RESOURCE.findall(report)
    assert refs, "the report links its files"
    assert not [r for r in refs if r.lower().startswith(("http:", "https:", "//", "ftp:"))]
    assert "<script" not in report.lower() and "<link" not in report.lower() and "@import" not in report
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report)
    assert len(images) >= 2  # the map and the histogram
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def _rows(report: str, kind: str) -> dict[str, tuple[int, float]]:
    pattern = rf'data-{kind}-class="([^"]+)" data-count="(\d+)" data-area-m2="([\d.]+)"'
    return {html.unescape(name): (int(n), float(a)) for name, n, a in re.findall(pattern, report)}


def test_report_counts_and_areas_match_the_geopackage(report, landslides):
    conf = _rows(report, "confidence")
    classes = confidence_class(landslides["mean_prob"])
    assert set(conf) == {c.name for c in CONFIDENCE_CLASSES}
    for name, (count, area) in conf.items():
        assert count == int((classes == name).sum()), name
        assert area == pytest.approx(landslides["area_m2"][classes == name].sum(), abs=0.1)
        # the visible table cell shows the same count
        assert re.search(rf'data-confidence-class="{re.escape(html.escape(name))}"[^>]*>.*?<td class="n">{count}</td>',
                         report)
    slopes = _rows(report, "slope")
    sclasses = slope_class(landslides["mean_slope_deg"])
    assert {c.name for c in SLOPE_CLASSES_DEG} <= set(slopes)
    for name, (count, _) in slopes.items():
        assert count == int((sclasses == name).sum()), name
    assert sum(n for n, _ in conf.values()) == sum(n for n, _ in slopes.values()) == len(landslides) > 0
    assert f'id="total-polygons" data-count="{len(landslides)}"' in report


def test_report_shows_inputs_model_card_and_caveats_without_calling_agreement_accuracy(report, manifest):
    card = manifest["detector"]["card"]
    assert manifest["inputs"]["scene_ids"][0] in report
    assert manifest["grid"]["crs"] in report
    assert card["name"] in report and ", ".join(card["bands"]) in report
    assert f"{card['metrics']['val']['f1']:.3f}" in report
    assert "Caveats the card states" in report and "somewhat optimistic" in report
    headers = " ".join(re.findall(r"<th>(.*?)</th>", report)).lower()
    assert "accuracy" not in headers


# ---------------------------------------------------------------------------------------------
# quicklook.png


def test_quicklook_is_a_small_true_colour_image_of_the_grid(sample_run, manifest):
    with Image.open(sample_run / "quicklook.png") as im:
        assert im.format == "PNG" and im.mode == "RGBA"
        rgba = np.asarray(im)
    grid = manifest["grid"]
    assert rgba.shape[:2] == quicklook_shape(grid["height"], grid["width"])
    assert max(rgba.shape[:2]) <= QUICKLOOK_MAX_PX
    seen = rgba[..., 3] == 255
    assert seen.mean() > 0.9
    rgb = rgba[..., :3][seen].astype(float)
    assert rgb.std(axis=0).min() > 10  # a stretched picture, not a constant
    assert rgb.min() == 0 and rgb.max() == 255  # 2-98 % stretch saturates the tails


# ---------------------------------------------------------------------------------------------
# --format exports


@pytest.mark.parametrize("fmt", ["geojson", "csv", "parquet"])
def test_each_export_holds_the_layer_s_features_and_ids(sample_run, landslides, fmt):
    path = sample_run / EXPORT_FILES[fmt]  # the test extras install pyarrow: every format is written
    got = gpd.read_parquet(path) if fmt == "parquet" else gpd.read_file(path)
    assert len(got) == len(landslides) > 0
    assert list(got["landslide_id"].astype(int)) == list(landslides["landslide_id"])
    assert got.geometry.notna().all()
    if fmt == "geojson":
        assert got.crs.to_epsg() == 4326
        assert got.total_bounds[0] > 141 and got.total_bounds[1] > 42  # lon, lat
        assert got.geometry.iloc[0].equals_exact(
            landslides.to_crs(4326).geometry.iloc[0], tolerance=1e-6)
    if fmt == "parquet":
        assert got.crs == landslides.crs
