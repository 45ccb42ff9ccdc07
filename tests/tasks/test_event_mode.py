"""Event mode (pre/post): the band contract's PRE_ channels, scene choice around an event date on the
local catalog, the bi-temporal stack, per-polygon change evidence, and the plan's refusals.

The remote sources' event-date choice is tested against the local STAC and Sentinel Hub servers in
tests/servers/test_event_sources.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from tasks.core.bands import (
    BAND_NAMES,
    EVENT_BAND_NAMES,
    band_index,
    is_bitemporal,
    pre_event_request,
    spectral_request,
    validate_bands,
)
from tasks.core.errors import InputError
from tasks.core.grid import AnalysisGrid
from tasks.raster.event_stack import REDNESS, build_event_stack, change_index_for
from tasks.run.plan import ScanRequest, plan_scan
from tasks.sources.catalog import LocalScene, load_catalog
from tasks.sources.event import EventWindows, choose_event_scene, resolve_event_inputs
from tasks.vector.zonal import zonal_mean

REPO = Path(__file__).resolve().parents[2]
EVENT = dt.date(2018, 9, 6)
WEST_BBOX = (141.90, 42.70, 141.93, 42.74)


# ---- the band contract -----------------------------------------------------------------------

def test_pre_event_channels_follow_the_fourteen():
    assert EVENT_BAND_NAMES[:14] == BAND_NAMES and len(EVENT_BAND_NAMES) == 26
    assert EVENT_BAND_NAMES[14] == "PRE_B01" and EVENT_BAND_NAMES[-1] == "PRE_B12"
    assert band_index("pre_b4") == 14 + 3 and band_index("B04") == 3
    assert validate_bands(["PRE_B04", "DEM", "B02", "pre_b02"]) == ("B02", "DEM", "PRE_B02", "PRE_B04")
    assert is_bitemporal(["B02", "PRE_B02"]) and not is_bitemporal(["B02", "SLOPE"])
    assert pre_event_request(["B02", "SLOPE", "PRE_B03", "PRE_B04"]) == ("B03", "B04")
    with pytest.raises(InputError, match="terrain does not change"):
        validate_bands(["PRE_SLOPE"])
    with pytest.raises(InputError, match="pre-event scene"):
        spectral_request(["B02", "PRE_B02"])


# ---- scene choice on a local catalog ---------------------------------------------------------

def _scene(scene_id: str, first: str, last: str | None = None) -> LocalScene:
    if last is None:
        return LocalScene(scene_id=scene_id, acquired=f"{first}T01:00:00Z", band_template="x_{band}.tif", available_bands=("B02",))
    return LocalScene(scene_id=scene_id, acquired_range=[first, last], band_template="x_{band}.tif", available_bands=("B02",))


def test_choose_event_scene_rules():
    scenes = [_scene("early", "2018-05-01"), _scene("late-pre", "2018-08-30"),
              _scene("on-event", "2018-09-06"), _scene("after", "2018-09-20"),
              _scene("composite", "2018-08-01", "2019-07-31")]
    windows = EventWindows(EVENT, pre_days=120, post_days=60)
    assert windows.pre == (dt.date(2018, 5, 9), dt.date(2018, 9, 5))
    assert windows.post == (EVENT, dt.date(2018, 11, 5))
    pre, notes = choose_event_scene(scenes, windows, "pre")
    assert pre.scene_id == "late-pre" and notes == []  # the closest before; early is outside the window
    post, notes = choose_event_scene(scenes, windows, "post")
    assert post.scene_id == "on-event" and notes == []  # the closest on/after beats the composite
    # a composite that straddles the event is post-event only when nothing else is, and says so
    post, notes = choose_event_scene([scenes[4], scenes[1]], windows, "post")
    assert post.scene_id == "composite" and "straddles the event date 2018-09-06" in notes[0]
    # ... and never pre-event
    with pytest.raises(InputError, match=r"no pre-event scene .* pre-event window 2018-05-09\.\.2018-09-05"):
        choose_event_scene([scenes[4], scenes[3]], windows, "pre", "src")
    with pytest.raises(InputError, match=r"no post-event scene .* post-event window 2018-09-06\.\.2018-09-16"):
        choose_event_scene(scenes[:2] + [scenes[3]], EventWindows(EVENT, 120, 10), "post", "src")
    with pytest.raises(InputError, match="--pre-days must be >= 1"):
        EventWindows(EVENT, pre_days=0)


def test_bundled_catalog_gives_the_pre_and_post_mosaics():
    catalog = load_catalog(None)
    event = resolve_event_inputs(catalog, "iburi-2018-local", EventWindows(EVENT), ("B02", "B04"),
                                 ("B02", "B04"))
    assert event.post.scene_id == "iburi-2018-post-s2-mosaic"
    assert event.pre.scene_id == "iburi-2018-pre-s2-mosaic"
    assert event.post.dem_path and event.pre.dem_path is None  # terrain once, from the post inputs
    assert set(event.pre.band_paths) == {"B02", "B04"} and "s2_pre" in event.pre.band_paths["B04"]
    assert any("straddles" in n for n in event.post.notes)
    with pytest.raises(InputError, match="no pre-event scene"):
        resolve_event_inputs(catalog, "iburi-2018-local", EventWindows(dt.date(2017, 8, 1)),
                             ("B02",), ("B02",))


# ---- the bi-temporal stack and the change evidence -------------------------------------------

def _grid(h: int = 40, w: int = 50) -> AnalysisGrid:
    return AnalysisGrid(crs="EPSG:32654", res_m=10.0, xmin=500000.0, ymax=4700000.0, width=w, height=h)


def _write(path: Path, data: np.ndarray, grid: AnalysisGrid, nodata=np.nan) -> str:
    profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": data.shape[0],
               "dtype": data.dtype.name, "crs": grid.crs, "transform": grid.transform, "nodata": nodata,
               "tiled": True, "blockxsize": 16, "blockysize": 16}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def test_event_stack_vrt_valid_and_change(tmp_path):
    grid = _grid()
    rng = np.random.default_rng(0)
    post = rng.uniform(500, 1500, (14, grid.height, grid.width)).astype(np.float32)
    pre = np.full((14, grid.height, grid.width), np.nan, np.float32)
    pre[:12] = rng.uniform(500, 1500, (12, grid.height, grid.width))
    pre[:, :5] = np.nan  # the pre-event scene misses the top rows
    post_valid = np.ones((1, grid.height, grid.width), np.uint8)
    post_valid[0, :, -3:] = 0
    pre_valid = np.isfinite(pre[1])[None].astype(np.uint8)
    (tmp_path / "post").mkdir(), (tmp_path / "pre").mkdir(), (tmp_path / "event").mkdir()
    out = build_event_stack(
        _write(tmp_path / "post" / "stack.tif", post, grid), _write(tmp_path / "post" / "valid.tif", post_valid, grid, None),
        _write(tmp_path / "pre" / "stack.tif", pre, grid), _write(tmp_path / "pre" / "valid.tif", pre_valid, grid, None),
        tmp_path / "event", REDNESS, block_px=16)
    with rasterio.open(out["stack_path"]) as src:
        assert src.count == 26 and src.descriptions == EVENT_BAND_NAMES
        both = src.read()
    np.testing.assert_array_equal(both[:14], post)
    np.testing.assert_array_equal(both[14:], pre[:12])
    with rasterio.open(out["valid_path"]) as src:
        valid = src.read(1).astype(bool)
    expected_valid = post_valid[0].astype(bool) & pre_valid[0].astype(bool)
    np.testing.assert_array_equal(valid, expected_valid)
    assert out["valid_fraction"] == pytest.approx(expected_valid.mean())
    with rasterio.open(out["change_path"]) as src:
        change = src.read(1)
        assert "redness" in src.tags(1)["change_index"]
    r1, b1, r0, b0 = (x.astype(np.float64) for x in (post[3], post[1], pre[3], pre[1]))
    expected = (r1 - b1) / (r1 + b1) - (r0 - b0) / (r0 + b0)
    np.testing.assert_allclose(change[valid], expected[valid], rtol=1e-5)
    assert np.isnan(change[~valid]).all()


def test_change_index_choice():
    assert change_index_for(("B02", "B04", "B08"), ("B04", "B08")).name == "NDVI"
    assert change_index_for(("B02", "B03", "B04"), ("B02", "B04")).name == "redness"
    assert change_index_for(("B02", "B04"), ("B03",)) is None


def test_zonal_mean_matches_a_hand_count(tmp_path):
    grid = _grid(20, 20)
    values = np.arange(400, dtype=np.float32).reshape(1, 20, 20)
    values[0, 2, 2] = np.nan  # a NaN pixel is left out of its polygon's mean
    path = _write(tmp_path / "v.tif", values, grid)
    x0, y0 = grid.xmin, grid.ymax
    # polygon 7: rows 1..3, cols 1..3 (pixel edges); polygon 9: row 10, cols 12..13 (crosses a block seam)
    square = shapely.box(x0 + 10, y0 - 40, x0 + 40, y0 - 10)
    strip = shapely.box(x0 + 120, y0 - 110, x0 + 140, y0 - 100)
    geoms = gpd.GeoSeries([square, strip], crs=grid.crs)
    got = zonal_mean(geoms, np.array([7, 9]), path, grid, block_px=13)
    square_vals = [r * 20 + c for r in range(1, 4) for c in range(1, 4) if (r, c) != (2, 2)]
    assert got[0] == pytest.approx(np.mean(square_vals))
    assert got[1] == pytest.approx(np.mean([10 * 20 + 12, 10 * 20 + 13]))


# ---- the plan's refusals (before any pixel is read) ------------------------------------------

@pytest.fixture(scope="module")
def bitemporal_card(tmp_path_factory) -> str:
    """A bi-temporal card with random weights (its bands are what the plan checks)."""
    from models.checkpoint import InputTransform, ModelCard, save_checkpoint
    from models.registry import build_model

    bands = ["B02", "B03", "B04", "SLOPE", "DEM", "PRE_B02", "PRE_B03", "PRE_B04"]
    model = build_model("Unet", "mobilenet_v2", in_channels=len(bands))
    card = ModelCard(
        name="test-bitemporal", version="1", arch="Unet", encoder="mobilenet_v2", bands=bands,
        input_transform=InputTransform.from_stats([1000.0] * 3 + [10.0, 100.0] + [1000.0] * 3,
                                                  [200.0] * 3 + [5.0, 50.0] + [200.0] * 3),
        fill={b: "training mean" for b in bands}, patch_size=128, threshold=0.5,
        trained_on={"dataset": "none", "split": "none", "file_list_sha256": "0" * 64},
        metrics={}, training={"epochs": 0, "loss": "none", "seed": 0}, description="random weights for plan tests")
    _, card_path = save_checkpoint(model, card, tmp_path_factory.mktemp("bitemporal"))
    return str(card_path)


def _request(tmp_path, **kw) -> ScanRequest:
    return ScanRequest(out=str(tmp_path / "run"), region="iburi-2018", bbox=WEST_BBOX, progress=False, **kw)


def test_bitemporal_detector_needs_an_event_date(tmp_path, bitemporal_card):
    with pytest.raises(InputError, match=r"is bi-temporal .* pass --event-date"):
        plan_scan(_request(tmp_path, detector=bitemporal_card))
    assert not (tmp_path / "run").exists()


def test_event_date_needs_a_bitemporal_detector(tmp_path):
    with pytest.raises(InputError, match=r"--event-date needs a bi-temporal detector"):
        plan_scan(_request(tmp_path, detector="index", event_date=EVENT))
    with pytest.raises(InputError, match=r"--start/--end do not apply with --event-date"):
        plan_scan(_request(tmp_path, event_date=EVENT, start=dt.date(2018, 1, 1)))
    assert not (tmp_path / "run").exists()


def test_event_plan_names_both_scenes(tmp_path, bitemporal_card):
    plan = plan_scan(_request(tmp_path, detector=bitemporal_card, event_date=EVENT))
    event = plan.event_inputs
    assert event.post.scene_id == plan.scene_inputs.scene_id == "iburi-2018-post-s2-mosaic"
    assert event.pre.scene_id == "iburi-2018-pre-s2-mosaic"
    assert plan.window == (EVENT, dt.date(2018, 11, 5))  # the post-event window
    # the change evidence's bands are read from both scenes whatever the detector needs
    assert {"B02", "B04"} <= set(event.pre.band_paths)
    stored = json.loads(plan.paths.plan.read_text())
    assert stored["event"]["windows"]["event_date"] == "2018-09-06"
