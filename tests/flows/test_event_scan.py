"""An event-mode scan end to end (``landslide scan --event-date``) on the bundled Iburi sample, with
the shipped bi-temporal detector: both scenes in the manifest, the change evidence on each polygon,
and the polygons' change agreeing with the pre/post rasters."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.features import rasterize

from models.cards import DEFAULT_EVENT_CHECKPOINT
from tasks.core.bands import is_bitemporal
from tasks.vector.clean import label_objects
from tests.flows.test_scan_flow import LANDSLIDE_SCHEMA, POST_SCENE, PRE_SCENE, bbox_arg, run_scan

BBOX = (141.905, 42.705, 141.93, 42.735)  # west, where the pre-event mosaic has data


@pytest.fixture(scope="module")
def event_run(tmp_path_factory, prefect_harness):
    out = tmp_path_factory.mktemp("event") / "run"
    return run_scan(out, "--region", "iburi-2018", "--bbox", bbox_arg(BBOX), "--event-date",
                    "2018-09-06", "--keep-work")


def test_event_scan_names_both_scenes_and_uses_the_bitemporal_default(event_run):
    manifest = json.loads((event_run / "manifest.json").read_text())
    assert manifest["detector"]["ref"].startswith(DEFAULT_EVENT_CHECKPOINT + "@")
    assert is_bitemporal(manifest["detector"]["card"]["bands"])
    event = manifest["inputs"]["event"]
    assert event["event_date"] == "2018-09-06"
    assert event["post_scene"]["scene_id"] == POST_SCENE and event["pre_scene"]["scene_id"] == PRE_SCENE
    assert event["pre_window"] == ["2018-05-09", "2018-09-05"]
    assert event["change_index"].startswith("redness")
    assert any("straddles" in n for n in event["post_scene"]["notes"])


def test_event_polygons_carry_the_change_evidence(event_run):
    gpkg = event_run / "landslides.gpkg"
    info = pyogrio.read_info(gpkg, layer="landslides")
    names = list(info["fields"])
    assert names == [n for n, _ in LANDSLIDE_SCHEMA] + ["pre_scene_id", "change_index", "mean_change"]
    polys = gpd.read_file(gpkg, layer="landslides")
    assert len(polys) > 0
    assert (polys["pre_scene_id"] == PRE_SCENE).all()
    assert polys["mean_change"].notna().all()
    # landslides strip vegetation: on average the detected pixels redden from pre to post
    with rasterio.open(event_run / ".work" / "event" / "change.tif") as src:
        change, transform = src.read(1), src.transform
    inside = rasterize(((g, 1) for g in polys.geometry), out_shape=change.shape, transform=transform) > 0
    assert np.nanmean(change[inside]) > np.nanmean(change[~inside]) + 0.02
    # each polygon's mean_change is the mean of change.tif over its pixels: those of its object in
    # mask.tif (the written outline is simplified, so its own pixel centres differ at the border)
    first = polys.iloc[int(np.argmax(polys["area_m2"].to_numpy()))]
    with rasterio.open(event_run / "mask.tif") as src:
        labels, _ = label_objects(src.read(1) == 1)
    drawn = rasterize([(first.geometry, 1)], out_shape=change.shape, transform=transform) > 0
    mask = labels == np.bincount(labels[drawn & (labels > 0)]).argmax()
    assert mask.sum() * 100.0 == first["area_px_m2"]
    assert first["mean_change"] == pytest.approx(float(np.nanmean(change[mask])), rel=1e-5)
