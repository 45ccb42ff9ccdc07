"""Pure parts of a run's products (issue 18), without a scan: the confidence and slope classes, the
STAC time rules and validator, the quicklook stretch, the export formats and publishing's handling
of an earlier run's export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.core.errors import InputError
from tasks.raster.quicklook import quicklook_shape, stretch_band
from tasks.run.outputs import FINAL_NAMES, STAGING, publish
from tasks.run.stac import (
    PROJECTION_EXTENSION,
    RASTER_EXTENSION,
    build_collection,
    scene_time,
    stac_errors,
)
from tasks.vector.classes import (
    CONFIDENCE_HIGH_MIN_PROB,
    CONFIDENCE_MEDIUM_MIN_PROB,
    NO_VALUE_CLASS,
    confidence_class,
    slope_class,
)
from tasks.vector.export import check_formats


def test_confidence_classes_at_their_thresholds():
    assert (CONFIDENCE_HIGH_MIN_PROB, CONFIDENCE_MEDIUM_MIN_PROB) == (0.85, 0.70)
    got = confidence_class([0.99, 0.85, 0.8499, 0.70, 0.6999, 0.0, np.nan])
    assert list(got) == ["high", "high", "medium", "medium", "low", "low", NO_VALUE_CLASS]


def test_slope_classes_at_their_bounds():
    got = slope_class([0.0, 14.99, 15.0, 29.9, 30.0, 45.0, 80.0, np.nan])
    assert list(got) == ["<15°", "<15°", "15-30°", "15-30°", "30-45°", "≥45°", "≥45°", NO_VALUE_CLASS]


def test_scene_time_for_one_scene_a_mosaic_and_a_composite():
    one = scene_time({"scenes": [{"acquired": "2018-09-11T01:50:00+00:00"}]})
    assert one["datetime"] == "2018-09-11T01:50:00Z" and "start_datetime" not in one
    mosaic = scene_time({"scenes": [{"acquired": "2018-09-21"}, {"acquired": "2018-09-11"}]})
    assert mosaic["datetime"] is None
    assert (mosaic["start_datetime"], mosaic["end_datetime"]) == ("2018-09-11T00:00:00Z", "2018-09-21T00:00:00Z")
    composite = scene_time({"scenes": [{"acquired": None}], "acquired": None,
                            "date_window": ["2018-09-07", None], "acquired_range": ["2018-08-01", "2019-07-31"]})
    assert (composite["start_datetime"], composite["end_datetime"]) == ("2018-09-07T00:00:00Z",
                                                                        "2019-07-31T23:59:59Z")
    assert "composite" in composite["landslide:time_basis"]
    with pytest.raises(InputError, match="STAC needs a time"):
        scene_time({"scenes": [], "date_window": [None, None], "acquired_range": None})


def _item(**props) -> dict:
    return {"type": "Feature", "stac_version": "1.1.0", "stac_extensions": [PROJECTION_EXTENSION, RASTER_EXTENSION],
            "id": "r1", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
            "bbox": [0, 0, 1, 1], "properties": {"datetime": "2020-01-01T00:00:00Z", **props}, "links": [],
            "assets": {"p": {"href": "./p.tif", "proj:shape": [2, 3], "proj:transform": [1, 0, 0, 0, -1, 0],
                             "raster:bands": [{"data_type": "uint8", "nodata": 255, "scale": 0.5}]}}}


def test_the_validator_accepts_a_valid_item_and_names_what_is_wrong():
    assert stac_errors(_item()) == []
    no_time = _item()
    no_time["properties"] = {"datetime": None}  # null datetime needs start and end
    assert stac_errors(no_time)
    bad = _item()
    bad["assets"]["p"]["proj:shape"] = [2.5, 3]
    bad["assets"]["p"]["raster:bands"][0]["data_type"] = "byte"
    bad["stac_extensions"] = [RASTER_EXTENSION]
    errors = " ".join(stac_errors(bad))
    assert "proj:shape" in errors and "data_type" in errors and "projection extension" in errors
    assert stac_errors({"type": "Catalog"})


def test_a_collection_links_items_relatively_and_spans_their_extents(tmp_path):
    runs = tmp_path / "runs"
    for i, (bbox, t) in enumerate([([1, 2, 3, 4], "2020-01-01T00:00:00Z"), ([0, 3, 2, 5], "2021-06-01T00:00:00Z")]):
        (runs / f"r{i}").mkdir(parents=True)
        item = _item()
        item.update(id=f"r{i}", bbox=bbox)
        item["properties"]["datetime"] = t
        (runs / f"r{i}" / "item.json").write_text(json.dumps(item))
    state = tmp_path / "state" / "region"
    state.mkdir(parents=True)
    (state / "inventory.gpkg").write_bytes(b"")
    coll = build_collection(state, "region", sorted(runs.glob("*/item.json")))
    assert stac_errors(coll) == []
    assert coll["extent"]["spatial"]["bbox"] == [[0, 2, 3, 5]]
    assert coll["extent"]["temporal"]["interval"] == [["2020-01-01T00:00:00Z", "2021-06-01T00:00:00Z"]]
    hrefs = [link["href"] for link in coll["links"] if link["rel"] == "item"]
    assert hrefs == ["../../runs/r0/item.json", "../../runs/r1/item.json"]
    assert all((state / h).resolve().exists() for h in hrefs)
    assert coll["assets"]["inventory"]["href"] == "./inventory.gpkg"


def test_quicklook_stretch_and_size():
    assert quicklook_shape(981, 1139) == (882, 1024)
    assert quicklook_shape(300, 200) == (300, 200)  # never upsampled
    values = np.arange(10000, dtype=np.float32).reshape(100, 100)
    values[0, :10] = np.nan
    out, (lo, hi) = stretch_band(values)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert lo == pytest.approx(np.nanpercentile(values, 2)) and hi == pytest.approx(np.nanpercentile(values, 98))


def test_check_formats_keeps_order_drops_repeats_and_refuses_unknown_names():
    assert check_formats(["GeoJSON", "csv", "geojson", "gpkg"]) == ("geojson", "csv", "gpkg")
    with pytest.raises(InputError, match="'shp' is not one of gpkg, geojson, csv, parquet"):
        check_formats(["shp"])


def test_publish_removes_an_earlier_run_s_export_this_run_was_not_asked_for(tmp_path):
    out = tmp_path / "run"
    (out / STAGING).mkdir(parents=True)
    for name in FINAL_NAMES:
        (out / STAGING / name).write_text("new")
    (out / STAGING / "landslides.csv").write_text("new")
    (out / "landslides.geojson").write_text("from an earlier run")
    publish(out)
    assert not (out / "landslides.geojson").exists()
    assert (out / "landslides.csv").read_text() == "new"
    assert sorted(p.name for p in out.iterdir()) == sorted([*FINAL_NAMES, "landslides.csv"])
