"""``landslide scan --image FILE``: one multi-band GeoTIFF scanned through the real CLI.

The image is a ~1.5 km2 crop of the bundled Iburi sample's real post-event B2/B3/B4, written as ONE
3-band GeoTIFF (``tests.data.crops.iburi_multiband_image``); the DEM is the bundled AW3D30 DSM.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import geopandas as gpd
import pytest

from tasks.core.errors import InputError
from tasks.sources.image import acquisition_from_tags, name_image_bands, open_image
from tests.data.crops import IBURI, crop_raster, iburi_multiband_image
from tests.flows.test_cli import assert_refused, run_cli

DEM = IBURI / "dem" / "AW3D30_DSM.tif"
BOX = (141.95, 42.72, 141.965, 42.73)  # lon/lat, ~1.2 x 1.1 km of the Iburi landslide area


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """The 3-band crop, bands described B2/B3/B4 (the short spelling), dated by a metadata item."""
    folder = tmp_path_factory.mktemp("image")
    return iburi_multiband_image(folder / "iburi_post.tif", BOX,
                                 tags={"ACQUISITION_DATE": "2018-09-11T01:50:00Z",
                                       "TIFFTAG_DATETIME": "2024:01:02 03:04:05"})


@pytest.fixture(scope="module")
def bare_image(tmp_path_factory) -> Path:
    """The same pixels without band descriptions or dates."""
    return iburi_multiband_image(tmp_path_factory.mktemp("bare") / "bare.tif", BOX, descriptions=None)


@pytest.fixture
def no_flow(monkeypatch):
    """Bad input must be refused while planning: starting the steps fails the test."""
    import flows.scan
    import tasks.run.pipeline

    def refuse(*args, **kwargs):
        pytest.fail("the scan started although the input is bad")

    monkeypatch.setattr(flows.scan, "scan_flow", refuse)
    monkeypatch.setattr(tasks.run.pipeline, "scan_in_process", refuse)


def scan(image: Path, out: Path, *extra) -> list[str]:
    return ["scan", "--image", image, "--out", out, "--no-progress", *extra]


def test_scan_a_geotiff_directly(image, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(scan(image, out, "--dem", DEM, "--orchestration", "in-process"), capsys)
    assert code == 0, err
    assert "landslide polygons" in stdout
    polygons = gpd.read_file(out / "landslides.gpkg", layer="landslides")
    assert len(polygons) > 0
    assert (polygons["scene_id"] == "iburi_post").all()
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["inputs"]["image"]
    assert record["path"] == str(image.resolve())
    assert record["bands"] == ["B02", "B03", "B04"] and record["bands_from"] == "band descriptions"
    # the date comes from ACQUISITION_DATE, never from TIFFTAG_DATETIME (the file's writing time)
    assert record["acquired_from"] == "metadata ACQUISITION_DATE"
    assert manifest["inputs"]["acquired"] == "2018-09-11T01:50:00+00:00"
    assert manifest["inputs"]["source"] == "image" and manifest["inputs"]["dem_path"] == str(DEM.resolve())
    assert manifest["inputs"]["band_paths"]["B04"] == f"vrt://{image.resolve()}?bands=3"
    assert manifest["request"]["image"] == str(image)


def test_bands_option_wins_and_an_unknown_date_stays_unknown(bare_image):
    found = open_image(str(bare_image), ["b2", "B03", "B4"])
    assert found.bands == ("B02", "B03", "B04") and found.bands_from == "--bands"
    assert found.acquired is None and found.acquired_from == "unknown"
    scene = found.catalog().source("image").scenes[0]
    assert scene.acquired_unknown and scene.band_number("B04") == 3
    # --bands also wins over descriptions the file has
    assert name_image_bands("f.tif", ["B2", "B3", "B4"], ["B04", "B03", "B02"])[0] == ("B04", "B03", "B02")


def test_acquisition_tags():
    when, where = acquisition_from_tags({(None, "DATATAKE_1_DATATAKE_SENSING_START"): "2018-09-11T01:50:31.024Z"})
    assert when == dt.datetime(2018, 9, 11, 1, 50, 31, 24000, tzinfo=dt.timezone.utc)
    assert where == "metadata DATATAKE_1_DATATAKE_SENSING_START"
    assert acquisition_from_tags({(None, "TIFFTAG_DATETIME"): "2024:01:02 03:04:05"}) == (None, "unknown")
    assert acquisition_from_tags({(None, "ACQUISITION_DATE"): "not a date"}) == (None, "unknown")


def test_no_descriptions_and_no_bands(bare_image, tmp_path, capsys, no_flow):
    out = tmp_path / "run"
    code, _, err = run_cli(scan(bare_image, out, "--dem", DEM), capsys)
    assert_refused(code, err, out, "no band description", "--bands")


def test_wrong_band_count(bare_image, tmp_path, capsys, no_flow):
    out = tmp_path / "run"
    code, _, err = run_cli(scan(bare_image, out, "--dem", DEM, "--bands", "B02,B03"), capsys)
    assert_refused(code, err, out, "--bands names 2 band(s)", "has 3")


def test_unknown_band_name(bare_image, tmp_path, capsys, no_flow):
    out = tmp_path / "run"
    code, _, err = run_cli(scan(bare_image, out, "--dem", DEM, "--bands", "B02,B03,B13"), capsys)
    assert_refused(code, err, out, "'B13'", "B01, B02")


def test_not_a_raster(tmp_path, capsys, no_flow):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n")
    out = tmp_path / "run"
    code, _, err = run_cli(scan(text, out), capsys)
    assert_refused(code, err, out, str(text), "not a raster GDAL can read")


def test_bbox_outside_the_image(image, tmp_path, capsys, no_flow):
    out = tmp_path / "run"
    code, _, err = run_cli(scan(image, out, "--dem", DEM, "--bbox", "10,10,10.1,10.1"), capsys)
    assert_refused(code, err, out, "the ROI does not intersect the data", str(image.resolve()),
                   "lon 141.9500..141.9650", "the ROI lon 10.0000..10.1000")


def test_dem_that_does_not_cover_the_image(image, tmp_path, capsys, no_flow):
    west_dem = crop_raster(DEM, tmp_path / "west_dem.tif", (141.90, 42.70, 141.93, 42.74))
    out = tmp_path / "run"
    code, _, err = run_cli(scan(image, out, "--dem", west_dem), capsys)
    assert_refused(code, err, out, "DEM", str(west_dem.resolve()), "does not cover the ROI")


def test_terrain_detector_without_dem(image, tmp_path, capsys, no_flow):
    out = tmp_path / "run"
    code, _, err = run_cli(scan(image, out), capsys)
    assert_refused(code, err, out, "--dem FILE")


@pytest.mark.parametrize("extra, flag", [(("--region", "iburi-2018"), "--region"),
                                         (("--source", "iburi-2018-local"), "--source"),
                                         (("--event-date", "2018-09-06"), "--event-date")])
def test_image_excludes_catalog_options(image, tmp_path, capsys, no_flow, extra, flag):
    out = tmp_path / "run"
    code, _, err = run_cli(scan(image, out, *extra), capsys)
    assert_refused(code, err, out, "--image", flag)


def test_image_options_need_image(tmp_path, capsys, no_flow):
    out = tmp_path / "run"
    code, _, err = run_cli(["scan", "--region", "iburi-2018", "--dem", DEM, "--out", out], capsys)
    assert_refused(code, err, out, "--dem applies only with --image")


def test_bad_acquired(image, tmp_path, capsys, no_flow):
    out = tmp_path / "run"
    code, _, err = run_cli(scan(image, out, "--acquired", "11/09/2018"), capsys)
    assert_refused(code, err, out, "--acquired", "YYYY-MM-DD")


def test_name_image_bands_refusals():
    with pytest.raises(InputError, match="derived from a DEM"):
        name_image_bands("f.tif", ["B2", "B3", "DEM"], None)
    with pytest.raises(InputError, match="named twice"):
        name_image_bands("f.tif", ["B2", "B2"], None)


def test_band_indexes_in_a_catalog(image, tmp_path):
    """A multi-band file in data_catalog.yaml: ``band_indexes`` names each band's number in it."""
    from tasks.sources.catalog import load_catalog
    from tasks.sources.local import resolve_local_inputs, select_scene
    from tests.data.crops import local_source, write_catalog

    def catalog(indexes: dict, **scene) -> Path:
        source = local_source({b: image for b in ("B02", "B03", "B04")}, dem=DEM, band_indexes=indexes,
                              **scene)
        return write_catalog(tmp_path / "catalog.yaml", {"multi": source})

    cat = load_catalog(catalog({"B02": 1, "B03": 2, "B04": 3}))
    inputs = resolve_local_inputs(cat, "multi", ("B02", "B04"))
    assert inputs.band_paths == {"B02": str(image), "B04": f"vrt://{image}?bands=3"}
    with pytest.raises(InputError, match="has 3 band"):
        resolve_local_inputs(load_catalog(catalog({"B04": 4})), "multi", ("B04",))
    # a scene of unknown date is chosen only without a date window
    raw = local_source({"B02": image}, acquired=None)
    raw["scenes"][0].pop("acquired")
    raw["scenes"][0]["acquired_unknown"] = True
    source = load_catalog(write_catalog(tmp_path / "c2.yaml", {"s": raw})).source("s")
    assert select_scene(source, None, None).acquired_unknown
    with pytest.raises(InputError, match="date unknown"):
        select_scene(source, dt.date(2018, 1, 1), None, "s")
