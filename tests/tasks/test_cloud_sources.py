"""Cloud masks of local scenes: s2cloudless on the real T18SVG L1C bands, a cloud mask file, bad input."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import rasterio
import shapely

from tasks.core.bands import SPECTRAL_BAND_NAMES
from tasks.core.errors import InputError
from tasks.core.grid import make_grid, roi_in_grid_crs
from tasks.raster.align import build_stack
from tasks.sources.catalog import load_catalog
from tasks.sources.cloud import B8A_STANDIN, S2CLOUDLESS_CONTRACT_BANDS
from tasks.sources.local import resolve_local_inputs
from tests.data.crops import T18SVG, local_source, lonlat_bounds, t18svg_crops, write_catalog


def _stack(inputs, bounds_lonlat, work, bands=("B02", "B03", "B04")):
    roi = shapely.box(*bounds_lonlat)
    grid = make_grid(roi)
    build_stack(inputs, grid, work, bands, roi_in_grid_crs(roi, grid))
    return json.loads((work / "cloud_mask.json").read_text())


def test_s2cloudless_on_the_real_t18svg_scene_offline(tmp_path, monkeypatch):
    """The whole t18svg-2016 region of the shipped catalog (a clear winter scene: docs/clouds.md shows the
    mask over the RGB). The classifier ships in the package: no socket may connect."""
    def refuse(*args, **kwargs):
        raise AssertionError("the cloud detector tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    catalog = load_catalog()
    region = catalog.region("t18svg-2016")
    inputs = resolve_local_inputs(catalog, region.source, SPECTRAL_BAND_NAMES)
    assert inputs.cloud_detector["b8a"] == "B8A from the scene"
    record = _stack(inputs, region.bbox, tmp_path, tuple(SPECTRAL_BAND_NAMES))
    scene = record["scenes"]["S2A_MSIL1C_20160112_T18SVG"]
    assert record["applied"] and scene["method"]["method"] == "s2cloudless"
    assert scene["method"]["detection_res_m"] == 160.0
    sun = scene["method"]["shadows"]
    assert 150 < sun["sun_azimuth_deg"] < 170 and 55 < sun["sun_zenith_deg"] < 68
    # measured: one 160 m pixel on the bright beach (p 0.53) is called cloud; nothing else
    assert 0 < scene["class_fraction_of_grid"]["cloud"] < 0.001
    assert scene["class_fraction_of_grid"]["shadow"] < 0.001
    assert scene["cloud_masked_px"] <= scene["class_px"]["cloud"] + scene["class_px"]["shadow"]
    with rasterio.open(tmp_path / "clouds_S2A_MSIL1C_20160112_T18SVG.tif") as src:
        classes = src.read(1)
    with rasterio.open(tmp_path / "valid.tif") as src:
        valid = src.read(1)
    assert not valid[classes > 0].any()  # cloud and shadow pixels left the footprint


def test_b08_stands_in_for_a_missing_b8a(tmp_path):
    crops = t18svg_crops(tmp_path / "bands", bands=(*S2CLOUDLESS_CONTRACT_BANDS, "B03"))
    catalog = load_catalog(write_catalog(tmp_path / "c.yaml", {"s": local_source(crops, nodata=0)}))
    inputs = resolve_local_inputs(catalog, "s", ("B02", "B03", "B04"))
    assert inputs.cloud_detector["b8a"] == B8A_STANDIN
    assert inputs.cloud_detector["band_paths"]["B8A"] == inputs.cloud_detector["band_paths"]["B08"]
    record = _stack(inputs, lonlat_bounds(crops["B02"]), tmp_path / "w")
    assert record["scenes"]["test-scene"]["method"]["b8a"] == B8A_STANDIN


def test_s2cloudless_asked_for_without_its_bands_names_them(tmp_path):
    crops = t18svg_crops(tmp_path / "bands", bands=("B02", "B03", "B04"))
    source = {**local_source(crops), "cloud_detector": "s2cloudless"}
    catalog = load_catalog(write_catalog(tmp_path / "c.yaml", {"s": source}))
    with pytest.raises(InputError, match="lacks B01, B05, B08, B09, B10, B11, B12") as err:
        resolve_local_inputs(catalog, "s", ("B02", "B03", "B04"))
    assert "\n" not in str(err.value)


def test_auto_detector_is_off_with_a_reason_without_the_bands(tmp_path):
    crops = t18svg_crops(tmp_path / "bands", bands=("B02", "B03", "B04"))
    catalog = load_catalog(write_catalog(tmp_path / "c.yaml", {"s": local_source(crops)}))
    inputs = resolve_local_inputs(catalog, "s", ("B02", "B03", "B04"))
    assert inputs.cloud_detector is None and "lacks B01" in inputs.cloud_detector_off
    record = _stack(inputs, lonlat_bounds(crops["B02"]), tmp_path / "w")
    assert not record["applied"] and "lacks B01" in record["detector_off"]["test-scene"]
    assert not list((tmp_path / "w").glob("clouds_*.tif"))


def test_a_local_cloud_mask_file(tmp_path):
    crops = t18svg_crops(tmp_path / "bands", bands=("B02", "B03", "B04"))
    with rasterio.open(crops["B02"]) as src:
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8",
                       crs=src.crs, transform=src.transform)
    mask = np.zeros((profile["height"], profile["width"]), dtype=np.uint8)
    mask[:, : profile["width"] // 2] = 7  # the western half is cloud
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(mask, 1)
    source = local_source(crops, cloud_mask={"path": str(tmp_path / "mask.tif"), "cloud_values": [7]})
    catalog = load_catalog(write_catalog(tmp_path / "c.yaml", {"s": source}))
    inputs = resolve_local_inputs(catalog, "s", ("B02", "B03", "B04"))
    assert inputs.cloud_detector is None and "cloud_mask" in inputs.cloud_detector_off
    record = _stack(inputs, lonlat_bounds(crops["B02"]), tmp_path / "w")
    scene = record["scenes"]["test-scene"]
    assert record["applied"] and record["rule"] == {"cloud_values": [7]}
    assert "mask.tif" in record["origin"]
    assert 0.4 < scene["cloud_masked_fraction_of_grid"] < 0.6
    with rasterio.open(tmp_path / "w" / "valid.tif") as src:
        rows, cols = np.nonzero(src.read(1))
        xs, ys = rasterio.transform.xy(src.transform, rows, cols)
    with rasterio.open(tmp_path / "mask.tif") as src:  # the same CRS (EPSG:32618)
        r, c = rasterio.transform.rowcol(src.transform, xs, ys)
    inside = (np.asarray(r) >= 0) & (np.asarray(r) < mask.shape[0]) & (np.asarray(c) >= 0) & \
        (np.asarray(c) < mask.shape[1])
    assert inside.sum() > 1000
    assert not (mask[np.asarray(r)[inside], np.asarray(c)[inside]] == 7).any()  # no cloud pixel is analysed


@pytest.mark.parametrize(("extra", "message"), [
    ({"cloud_mask": {"path": "m.tif", "cloud_values": [1], "cloud_range": [1, 2]}}, "exactly one of"),
    ({"cloud_mask": {"path": "m.tif"}}, "exactly one of"),
    ({"sun_azimuth_deg": 150.0}, "together"),
    ({"b8a_path": "x.jp2"}, "unknown key"),
])
def test_catalog_refuses_bad_cloud_keys(tmp_path, extra, message):
    source = local_source({"B02": T18SVG / "s2_B02.jp2"}, **extra)
    with pytest.raises(InputError, match=message):
        load_catalog(write_catalog(tmp_path / "c.yaml", {"s": source}))


def test_catalog_refuses_reversed_cloud_heights(tmp_path):
    source = {**local_source({"B02": T18SVG / "s2_B02.jp2"}), "cloud_heights_m": [3000, 300]}
    with pytest.raises(InputError, match="cloud_heights_m"):
        load_catalog(write_catalog(tmp_path / "c.yaml", {"s": source}))


@pytest.mark.parametrize(("zenith", "projected"), [(40.0, True), (85.0, False)])
def test_sun_angles_from_the_catalog(tmp_path, zenith, projected):
    crops = t18svg_crops(tmp_path / "bands", bands=(*S2CLOUDLESS_CONTRACT_BANDS, "B03"))
    source = local_source(crops, nodata=0, sun_azimuth_deg=150.0, sun_zenith_deg=zenith)
    catalog = load_catalog(write_catalog(tmp_path / "c.yaml", {"s": source}))
    inputs = resolve_local_inputs(catalog, "s", ("B02", "B03", "B04"))
    shadows = _stack(inputs, lonlat_bounds(crops["B02"]), tmp_path / "w")["scenes"]["test-scene"]["method"]["shadows"]
    if projected:
        assert shadows["sun_from"].startswith("scene metadata") and shadows["sun_zenith_deg"] == 40.0
        assert "B08 >= B03" in shadows["rule"]
    else:  # a sun this low would throw shadows over 30 km: none are projected, and the record says why
        assert shadows["applied"] is False and "85" in shadows["reason"]
