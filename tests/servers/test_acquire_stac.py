"""The ``stac`` source against the local STAC API (rustac serve) + COG server, with the real clients."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import yaml
from rasterio.warp import transform_bounds
from rasterio.windows import from_bounds

import tasks.sources.stac as acquire_stac
from devservers.stac_server import (
    ASSET_KEY_BY_BAND,
    BASELINE_OFFSET_DN,
    DEM_CROP_BOUNDS,
    DEM_ITEM_ID,
    GLO30_TIF,
    SPLIT_EAST_DN_DELTA,
)
from tasks.core.bands import BAND_NAMES
from tasks.core.errors import InputError, SourceError
from tasks.sources.catalog import StacSource
from tasks.sources.stac import (
    Candidate,
    choose_item,
    datetime_range,
    fetch_dem,
    fetch_stac_inputs,
    http_status,
)

pytest.importorskip("pystac_client")

ROI = shapely.box(-75.695, 37.718, -75.675, 37.733)  # ~1.8 x 1.7 km inside the served 3 km crop
BBOX_TEXT = "-75.695,37.718,-75.675,37.733"
CLEAR, CLOUDY, BASELINE4 = "S2A_18SVG_20160112_0_L1C", "S2A_18SVG_20160201_0_L1C", "S2B_18SVG_20220125_0_L1C"
Y2016 = (dt.date(2016, 1, 1), dt.date(2016, 12, 31))


@pytest.fixture(autouse=True)
def _short_retry_delay(monkeypatch):
    monkeypatch.setattr(acquire_stac, "RETRY_DELAY_S", 0.1)


def _source(stac_api, **kw) -> StacSource:
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout_s", 5)
    return StacSource(kind="stac", url=stac_api.url, **kw)


def _path(href: str) -> str:
    return "/" + href.split("/", 3)[3]


def _served_window(local_cog: Path, fetched: str) -> np.ndarray:
    """The served COG's pixels under the fetched file's bounds (0 outside the COG)."""
    with rasterio.open(fetched) as got, rasterio.open(local_cog) as src:
        assert got.crs == src.crs and got.res == src.res  # native CRS and resolution kept
        win = from_bounds(*got.bounds, transform=src.transform).round_offsets().round_lengths()
        return src.read(1, window=win, boundless=True, fill_value=0)


def _read(path: str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_pure_helpers():
    assert datetime_range(None, None) is None
    assert datetime_range(dt.date(2016, 1, 1), None) == "2016-01-01T00:00:00Z/.."
    assert datetime_range(None, dt.date(2016, 1, 2)) == "../2016-01-02T23:59:59.999Z"
    with pytest.raises(InputError, match="after"):
        datetime_range(dt.date(2016, 2, 1), dt.date(2016, 1, 1))
    cands = [Candidate("a", 5.0, "2016-01-01T00:00:00+00:00", 1.0),
             Candidate("b", 5.0, "2016-02-01T00:00:00+00:00", 1.0),
             Candidate("c", 1.0, "2016-03-01T00:00:00+00:00", 0.5),
             Candidate("d", 50.0, "2016-04-01T00:00:00+00:00", 1.0)]
    assert choose_item(cands, 30) == (cands[1], 1)  # full cover beats less cloud; ties -> most recent
    assert choose_item(cands[2:], 30) == (cands[2], 1)  # partial cover only when nothing covers fully
    assert choose_item(cands[3:], 30) == (None, 1)
    assert http_status("HTTP response code: 401") == 401


def test_fetch_reads_roi_windows_of_the_least_cloudy_scene(stac_api, tmp_path):
    bands = ("B02", "B03", "B04", "B11", "B10")
    inputs = fetch_stac_inputs(_source(stac_api, max_cloud_pct=80), "stac-test", bands, ROI, *Y2016, tmp_path)
    assert inputs.scene_id == CLEAR  # 2.5 % beats 71.3 %
    assert inputs.acquired == "2016-01-12T16:00:32+00:00" and inputs.acquired_range is None
    assert inputs.offset_dn == 0 and inputs.processing_baseline == "02.01"
    assert inputs.band_nodata == 0 and inputs.dem_path is None
    assert any("DEM" in n for n in inputs.notes)
    assert len(inputs.available_bands) == 12 and "B10" in inputs.available_bands
    assert sorted(inputs.band_paths) == sorted(bands)
    for band, key in (("B02", "blue"), ("B11", "swir16"), ("B10", "cirrus")):
        path = inputs.band_paths[band]
        assert Path(path).is_relative_to(tmp_path)
        got = _read(path)
        np.testing.assert_array_equal(got, _served_window(stac_api.cog_paths[CLEAR][key], path))
        assert (got > 0).mean() > 0.9
    # the extent covers the ROI, and only a window was fetched (not the 3 km crop)
    w, s, e, n = inputs.extent_lonlat
    assert w <= -75.695 and s <= 37.718 and e >= -75.675 and n >= 37.733
    assert _read(inputs.band_paths["B02"]).shape[1] < 300


def test_cloud_limit_and_date_window(stac_api, tmp_path):
    # February only: the cloudy scene, which the default 30 % limit excludes
    feb = (dt.date(2016, 1, 20), dt.date(2016, 2, 28))
    with pytest.raises(SourceError) as err:
        fetch_stac_inputs(_source(stac_api), "stac-test", ("B02",), ROI, *feb, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "'sentinel-2-l1c'" in msg and "<= 30%" in msg
    assert "-75.69500" in msg and "2016-01-20" in msg and "1 over the cloud limit" in msg
    inputs = fetch_stac_inputs(_source(stac_api, max_cloud_pct=80), "stac-test", ("B02",), ROI, *feb, tmp_path)
    assert inputs.scene_id == CLOUDY
    # a limit below the clear scene's 2.5 % leaves nothing in 2016
    with pytest.raises(SourceError, match="no item"):
        fetch_stac_inputs(_source(stac_api, max_cloud_pct=2), "stac-test", ("B02",), ROI, *Y2016, tmp_path)


def test_baseline_04_scene_gives_offset(stac_api, tmp_path):
    inputs = fetch_stac_inputs(_source(stac_api), "stac-test", ("B04",), ROI, dt.date(2022, 1, 1), None, tmp_path)
    assert inputs.scene_id == BASELINE4 and inputs.processing_baseline == "04.00"
    assert inputs.offset_dn == BASELINE_OFFSET_DN
    assert any("1000 DN offset removed" in n for n in inputs.notes)
    original = _served_window(stac_api.cog_paths[CLEAR]["red"], inputs.band_paths["B04"])
    np.testing.assert_array_equal(_read(inputs.band_paths["B04"]),
                                  np.where(original > 0, original + BASELINE_OFFSET_DN, 0))


def test_band_errors_name_the_band(stac_api, tmp_path):
    with pytest.raises(InputError, match="B08"):
        fetch_stac_inputs(_source(stac_api, assets={"B02": "blue"}), "stac-test", ("B02", "B08"), ROI,
                          *Y2016, tmp_path)
    with pytest.raises(InputError, match=r"B03 \('no-such-asset'\)"):
        fetch_stac_inputs(_source(stac_api, assets={"B03": "no-such-asset"}), "stac-test", ("B03",), ROI,
                          *Y2016, tmp_path)


def test_rerun_makes_no_new_requests(stac_api, tmp_path):
    first = fetch_stac_inputs(_source(stac_api), "stac-test", ("B02", "B08"), ROI, *Y2016, tmp_path)
    assert stac_api.faults.records
    stac_api.faults.clear_log()
    again = fetch_stac_inputs(_source(stac_api), "stac-test", ("B02", "B08"), ROI, *Y2016, tmp_path)
    assert again == first
    assert stac_api.faults.records == []


@pytest.mark.parametrize("mode", ["500", "429", "truncate"])
def test_transient_faults_are_retried(stac_api, tmp_path, mode):
    clean = fetch_stac_inputs(_source(stac_api), "stac-test", ("B03",), ROI, *Y2016, tmp_path / "clean")
    href = stac_api.item(CLEAR)["assets"]["green"]["href"]
    stac_api.faults.clear_log()
    stac_api.faults.set(mode, count=2 if mode != "truncate" else 1, retry_after=0, path_prefix=_path(href))
    faulty = fetch_stac_inputs(_source(stac_api), "stac-test", ("B03",), ROI, *Y2016, tmp_path / "faulty")
    assert stac_api.faults.pending == 0
    if mode != "truncate":
        assert stac_api.faults.statuses(_path(href)).count(int(mode)) == 2
    np.testing.assert_array_equal(_read(faulty.band_paths["B03"]), _read(clean.band_paths["B03"]))


@pytest.mark.parametrize("mode, pattern", [("500", "failed after 2 retries"),
                                           ("401", "HTTP 401: the credentials or the URL are wrong")])
def test_persistent_faults_stop_cleanly(stac_api, tmp_path, mode, pattern):
    href = stac_api.item(CLEAR)["assets"]["red"]["href"]
    stac_api.faults.set(mode, count=100, path_prefix=_path(href))
    with pytest.raises(SourceError, match=pattern) as err:
        fetch_stac_inputs(_source(stac_api), "stac-test", ("B02", "B04"), ROI, *Y2016, tmp_path)
    assert "\n" not in str(err.value) and "B04" in str(err.value)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [n for n in leftovers if n.startswith("B04") or ".part" in n], leftovers
    stac_api.faults.clear()
    inputs = fetch_stac_inputs(_source(stac_api), "stac-test", ("B02", "B04"), ROI, *Y2016, tmp_path)
    assert Path(inputs.band_paths["B04"]).exists()


def test_dem_mosaic_of_intersecting_items(stac_api, tmp_path):
    roi = shapely.box(6.55, 0.25, 6.60, 0.30)  # inside the served GLO-30 crop over Sao Tome
    notes: list[str] = []
    path, nodata = fetch_dem(_source(stac_api), roi, roi.bounds, tmp_path, notes)
    assert path is not None and DEM_ITEM_ID in notes[-1]
    with rasterio.open(path) as got, rasterio.open(GLO30_TIF) as src:
        assert got.crs == src.crs and got.res == pytest.approx(src.res)
        assert got.nodata == nodata
        win = from_bounds(*got.bounds, transform=src.transform).round_offsets().round_lengths()
        np.testing.assert_array_equal(got.read(1), src.read(1, window=win))
        assert got.read(1).max() > 100
    stac_api.faults.clear_log()
    assert fetch_dem(_source(stac_api), roi, roi.bounds, tmp_path, [])[0] == path
    assert stac_api.faults.records == []
    # an ROI outside the crop: no DEM, a note, no error
    notes = []
    far = shapely.box(*(v + 1.0 for v in DEM_CROP_BOUNDS))
    assert fetch_dem(_source(stac_api), far, far.bounds, tmp_path, notes) == (None, None)
    assert "no item of DEM collection" in notes[0]


def test_unreachable_api_is_a_source_error(tmp_path):
    source = StacSource(kind="stac", url="http://127.0.0.1:9", max_retries=0, timeout_s=2)
    with pytest.raises(SourceError, match="STAC search") as err:
        fetch_stac_inputs(source, "stac-test", ("B02",), ROI, *Y2016, tmp_path)
    assert "\n" not in str(err.value)


@pytest.fixture
def faulty_api(stac_api):
    """A proxy in front of the STAC API answering scripted statuses first (the root ``/`` goes through it;
    pystac-client then follows the root's absolute links to the real server)."""
    import http.server
    import threading

    import requests

    script: list[tuple[int, dict]] = []
    seen: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802
            if script:
                status, headers = script.pop(0)
                body = b'{"code": "scripted"}'
            else:
                upstream = requests.get(stac_api.url + self.path, timeout=5)
                status, headers, body = upstream.status_code, {}, upstream.content
            seen.append(status)
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script, seen
    finally:
        server.shutdown()
        server.server_close()


def test_search_retries_429_and_5xx(faulty_api, tmp_path):
    url, script, seen = faulty_api
    script += [(429, {"Retry-After": "0"}), (503, {}), (500, {})]
    source = StacSource(kind="stac", url=url, max_retries=3, timeout_s=5, dem_collection=None)
    inputs = fetch_stac_inputs(source, "stac-test", ("B02",), ROI, *Y2016, tmp_path)
    assert inputs.scene_id == CLEAR and seen[:4] == [429, 503, 500, 200]


@pytest.mark.parametrize("status, pattern", [(401, "HTTP 401: the credentials or the URL are wrong"),
                                             (500, "failed after 1 retries")])
def test_search_failures_are_one_line_source_errors(faulty_api, tmp_path, status, pattern):
    url, script, _ = faulty_api
    script += [(status, {})] * 5
    source = StacSource(kind="stac", url=url, max_retries=1, timeout_s=5)
    with pytest.raises(SourceError, match=pattern) as err:
        fetch_stac_inputs(source, "stac-test", ("B02",), ROI, *Y2016, tmp_path)
    assert "\n" not in str(err.value) and not any(tmp_path.rglob("*.tif"))


# ---------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory):
    """Random weights over B02, B03, B04 only (the served DEM is elsewhere: no SLOPE/DEM here)."""
    import torch

    from models.checkpoint import InputTransform, ModelCard, save_checkpoint
    from models.registry import build_model

    torch.manual_seed(0)
    model = build_model("Unet", "mobilenet_v2", in_channels=3)
    card = ModelCard(
        name="random-rgb", version="0", arch="Unet", encoder="mobilenet_v2", bands=["B02", "B03", "B04"],
        input_transform=InputTransform.from_stats([1500.0] * 3, [800.0] * 3), threshold=0.5,
        trained_on={"dataset": "none (random weights: a mechanics test)", "split": "none",
                    "file_list_sha256": "0" * 64, "labels": "none"},
        training={"epochs": 0, "loss": "none", "seed": 0}, description="random weights; not a detector")
    _, card_path = save_checkpoint(model, card, tmp_path_factory.mktemp("ckpt"))
    return card_path


def test_scan_through_stac_matches_local_source(stac_api, prefect_harness, tmp_path, rgb_checkpoint):
    from flows.cli import main

    repo = Path(__file__).resolve().parents[2]
    shipped = yaml.safe_load((repo / "data_catalog.yaml").read_text())
    local = shipped["sources"]["t18svg-2016-local"]
    for scene in local["scenes"]:
        scene["band_template"] = str((repo / scene["band_template"]).resolve())
        scene["b8a"] = str((repo / scene["b8a"]).resolve())
    catalog = {"version": 1, "sources": {
        "t18svg-local": local,
        "t18svg-stac": {"kind": "stac", "url": stac_api.url, "max_retries": 2, "timeout_s": 10}}}
    catalog_path = tmp_path / "data_catalog.yaml"
    catalog_path.write_text(yaml.safe_dump(catalog))
    stacks = {}
    for name in ("t18svg-stac", "t18svg-local"):
        out = tmp_path / name
        code = main(["scan", "--source", name, "--bbox", BBOX_TEXT, "--start", "2016-01-01",
                     "--end", "2016-12-31", "--detector", str(rgb_checkpoint), "--catalog", str(catalog_path),
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--keep-work",
                     "--no-progress"])
        assert code == 0, name
        with rasterio.open(out / ".work" / "stack.tif") as src:
            stacks[name] = (src.read(), src.transform, src.crs)
    (remote, t_remote, crs_remote), (local_stack, t_local, crs_local) = stacks["t18svg-stac"], stacks["t18svg-local"]
    assert crs_remote == crs_local and t_remote == t_local and remote.shape == local_stack.shape
    for channel in (1, 2, 3):  # B02, B03, B04 in contract order
        a, b = remote[channel], local_stack[channel]
        assert np.isfinite(a).mean() > 0.95
        both = np.isfinite(a) & np.isfinite(b)
        assert both.mean() > 0.95
        np.testing.assert_allclose(a[both], b[both], rtol=0, atol=1.0)
    assert list(Path(tmp_path / "cache" / "stac").iterdir())  # downloads went to --cache-dir


# ---------------------------------------------------------------------------------- cloud mask

def test_cloud_mask_asset_is_read_like_a_band(stac_api, tmp_path):
    """A mapped cloud-mask asset is fetched over the ROI window and handed to alignment with its values.

    The served L1C items have no mask asset (as Earth Search's); the cirrus band stands in for one here
    (a mechanics test of the mapping, not a cloud rule)."""
    from tasks.sources.cloud import cloud_pixels

    source = _source(stac_api, cloud_mask_asset="cirrus", cloud_mask_values=(20, 21, 22))
    inputs = fetch_stac_inputs(source, "stac-test", ("B02",), ROI, *Y2016, tmp_path)
    spec = inputs.cloud_mask
    assert spec is not None and spec["cloud_values"] == [20, 21, 22] and "cirrus" in spec["origin"]
    mask = _read(spec["path"])
    np.testing.assert_array_equal(mask, _served_window(stac_api.cog_paths[CLEAR]["cirrus"], spec["path"]))
    assert 0 < cloud_pixels(mask, spec).sum() < mask.size
    # no mapping: no mask asset, s2cloudless runs on the item's bands instead (test below); with the
    # detector off, or an item without the asset: no mask, and the notes say so
    plain = fetch_stac_inputs(_source(stac_api, cloud_detector="none"), "stac-test", ("B02",), ROI, *Y2016,
                              tmp_path)
    assert plain.cloud_mask is None and any("no cloud mask" in n for n in plain.notes)
    absent = fetch_stac_inputs(_source(stac_api, cloud_mask_asset="scl", cloud_mask_values=(8, 9)),
                               "stac-test", ("B02",), ROI, *Y2016, tmp_path)
    assert absent.cloud_mask is None and any("no asset 'scl'" in n for n in absent.notes)
    with pytest.raises(ValueError, match="go together"):
        _source(stac_api, cloud_mask_asset="scl")


def test_s2cloudless_runs_on_an_l1c_item_without_a_mask_asset(stac_api, tmp_path):
    """Earth Search's L1C has no mask asset: the detector's bands (and B8A, asset nir08) are fetched
    over the ROI like the model's, and alignment computes the mask and records it."""
    from tasks.core.grid import make_grid, roi_in_grid_crs
    from tasks.raster.align import build_stack

    inputs = fetch_stac_inputs(_source(stac_api), "stac-test", ("B02", "B03", "B04"), ROI, *Y2016, tmp_path)
    plan = inputs.cloud_detector
    assert inputs.cloud_mask is None and plan["method"] == "s2cloudless"
    assert plan["b8a"] == "B8A from asset 'nir08'" and plan["band_paths"]["B8A"] != plan["band_paths"]["B08"]
    assert set(plan["band_paths"]) == {"B01", "B02", "B03", "B04", "B05", "B08", "B8A", "B09", "B10", "B11",
                                       "B12"}
    assert plan["band_paths"]["B02"] == inputs.band_paths["B02"]  # the model's bands are not fetched twice
    assert any("s2cloudless" in n for n in inputs.notes)
    grid = make_grid(ROI)
    build_stack(inputs, grid, tmp_path / "work", ("B02", "B03", "B04"), roi_in_grid_crs(ROI, grid))
    record = json.loads((tmp_path / "work" / "cloud_mask.json").read_text())
    scene = record["scenes"][inputs.scene_id]
    assert record["applied"] and scene["method"]["method"] == "s2cloudless"
    assert "computed for 2016-01-12" in scene["method"]["shadows"]["sun_from"]  # the items carry no sun angles
    assert set(scene["class_px"]) == {"cloud", "shadow"}


def test_s2cloudless_asked_for_on_items_without_its_bands(stac_api, tmp_path):
    assets = {"B02": "blue", "B03": "green", "B04": "red"}
    source = _source(stac_api, assets=assets, cloud_detector="s2cloudless")
    with pytest.raises(InputError, match="lacks B01, B05, B08, B09, B10, B11, B12"):
        fetch_stac_inputs(source, "stac-test", ("B02",), ROI, *Y2016, tmp_path)
    auto = fetch_stac_inputs(_source(stac_api, assets=assets), "stac-test", ("B02",), ROI, *Y2016, tmp_path)
    assert auto.cloud_detector is None and "lacks B01" in auto.cloud_detector_off


def test_cloud_rules():
    from tasks.sources.cloud import check_cloud_mask, cloud_pixels

    values = np.array([[0, 1, 3], [8, 128, 255]])
    np.testing.assert_array_equal(cloud_pixels(values, {"cloud_values": [3, 8]}),
                                  [[False, False, True], [True, False, False]])
    np.testing.assert_array_equal(cloud_pixels(values, {"cloud_range": [1, 254]}),
                                  [[False, True, True], [True, True, False]])
    with pytest.raises(InputError, match="exactly one"):
        check_cloud_mask({"path": "m.tif", "cloud_values": [1], "cloud_range": [1, 2]})
    with pytest.raises(InputError, match="no 'path'"):
        check_cloud_mask({"cloud_values": [1]})


# ---------------------------------------------------------------------------------- search cache

@pytest.fixture
def counting_api(stac_api):
    """A pass-through proxy in front of rustac that logs every request (links rewritten to itself,
    so pagination and the search link come back through it too)."""
    import http.server
    import threading

    import requests

    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            seen.append((self.command, self.path.split("?", 1)[0]))
            upstream = requests.request(self.command, stac_api.url + self.path, data=body, timeout=10,
                                        headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
            payload = upstream.content.replace(stac_api.url.encode(), own_url.encode())
            self.send_response(upstream.status_code)
            self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _forward  # noqa: N815

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    own_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield own_url, seen
    finally:
        server.shutdown()
        server.server_close()


def test_rerun_of_a_closed_window_makes_no_search_request(stac_api, counting_api, tmp_path):
    url, seen = counting_api
    source = StacSource(kind="stac", url=url, max_retries=2, timeout_s=5, max_cloud_pct=80)
    first = fetch_stac_inputs(source, "stac-test", ("B02",), ROI, *Y2016, tmp_path)
    assert ("POST", "/search") in seen or ("GET", "/search") in seen  # the proxy saw the searches
    searches = [r for r in seen if r[1] == "/search"]
    assert len(searches) == 2  # scenes and DEM
    stac_api.faults.clear_log()
    seen.clear()
    again = fetch_stac_inputs(source, "stac-test", ("B02",), ROI, *Y2016, tmp_path)
    assert again == first and seen == [] and stac_api.faults.records == []  # no API, no COG request
    # another date window is another request: one scene search (the DEM answer is reused)
    fetch_stac_inputs(source, "stac-test", ("B02",), ROI, dt.date(2016, 1, 1), dt.date(2016, 1, 31), tmp_path)
    assert [r for r in seen if r[1] == "/search"] == [searches[0]]
    # a window still open is searched again (new scenes may appear)
    seen.clear()
    for _ in range(2):
        fetch_stac_inputs(source, "stac-test", ("B02",), ROI, dt.date(2016, 1, 1), None, tmp_path)
    assert len([r for r in seen if r[1] == "/search"]) == 2


# ---------------------------------------------------------------------------------- per-pixel mosaic

WEST, EAST = "S2A_18SVG_20170110_0_L1C", "S2B_18SVG_20170120_0_L1C"
JAN2017 = (dt.date(2017, 1, 1), dt.date(2017, 1, 31))
# 2.1 x 1.6 km crossing both partial footprints (west x < 440220, east x >= 439020, EPSG:32618)
SPLIT_ROI = shapely.box(*transform_bounds("EPSG:32618", "EPSG:4326", 438620, 4174880, 440720, 4176480))
RGB = ("B02", "B03", "B04")


def _on_grid(cog: Path, grid) -> np.ndarray:
    """A served 10 m COG's pixels on the (10 m-aligned) analysis grid."""
    with rasterio.open(cog) as src:
        win = from_bounds(*grid.bounds, transform=src.transform).round_offsets().round_lengths()
        data = src.read(1, window=win)
    assert data.shape == grid.shape
    return data


def test_partial_scenes_make_a_per_pixel_mosaic(stac_api, tmp_path):
    """No item covers the ROI: the west (less cloudy) and east items are both read, and each grid pixel
    takes the first-ranked one with data there; values are each scene's own (harmonized) values."""
    from tasks.core.grid import make_grid, roi_in_grid_crs
    from tasks.raster.align import build_stack, roi_mask
    from tasks.sources.mosaic import read_scenes

    inputs = fetch_stac_inputs(_source(stac_api), "stac-test", RGB, SPLIT_ROI, *JAN2017, tmp_path / "cache")
    assert [m["scene_id"] for m in inputs.mosaic] == [WEST, EAST]
    assert [m["offset_dn"] for m in inputs.mosaic] == [0.0, BASELINE_OFFSET_DN]
    assert [m["cloud_pct"] for m in inputs.mosaic] == [3.1, 5.6]
    assert inputs.scene_id == f"{WEST}+{EAST}" and inputs.acquired is None
    assert inputs.acquired_range == ("2017-01-10", "2017-01-20")
    assert any("per-pixel mosaic of 2" in n for n in inputs.notes)
    grid = make_grid(SPLIT_ROI)
    roi_grid = roi_in_grid_crs(SPLIT_ROI, grid)
    res = build_stack(inputs, grid, tmp_path / "work", RGB, roi_grid)
    with rasterio.open(tmp_path / "work" / "scene_index.tif") as src:
        index = src.read(1)
    with rasterio.open(res.stack_path) as src:
        stack = src.read()
    with rasterio.open(res.valid_path) as src:
        valid = src.read(1).astype(bool)

    inside = roi_mask(roi_grid, grid) > 0
    west = {b: _on_grid(stac_api.cog_paths[WEST][ASSET_KEY_BY_BAND[b]], grid).astype(np.float32) for b in RGB}
    east = {b: _on_grid(stac_api.cog_paths[EAST][ASSET_KEY_BY_BAND[b]], grid).astype(np.float32) for b in RGB}
    has_west = np.all([west[b] > 0 for b in RGB], axis=0)
    has_east = np.all([east[b] > 0 for b in RGB], axis=0)
    expected = np.where(inside & has_west, 1, np.where(inside & has_east, 2, 0))
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(valid, index > 0)
    # the footprints decide: west of x = 440220 the west scene, east of it the east scene
    xs = np.broadcast_to(grid.xmin + (np.arange(grid.width) + 0.5) * grid.res_m, grid.shape)
    assert (index[inside & (xs < 440220)] == 1).mean() > 0.99
    assert (index[inside & (xs >= 440220)] == 2).mean() > 0.99
    overlap = inside & (xs >= 439020) & (xs < 440220)
    assert overlap.sum() > 10_000 and (index[overlap] == 1).all()  # both have data; the less cloudy wins
    for b in RGB:
        got = stack[BAND_NAMES.index(b)]
        np.testing.assert_array_equal(got[index == 1], west[b][index == 1])
        np.testing.assert_array_equal(got[index == 2], east[b][index == 2] - BASELINE_OFFSET_DN)
        # the east scene's own values differ (+37 DN): the overlap really came from the west scene
        assert (east[b][overlap] - BASELINE_OFFSET_DN - got[overlap] == SPLIT_EAST_DN_DELTA).mean() > 0.99
    record = read_scenes(tmp_path / "work")
    assert record["mosaic"] is True
    assert [(e["index"], e["scene_id"], e["acquired"][:10]) for e in record["scenes"]] == [
        (1, WEST, "2017-01-10"), (2, EAST, "2017-01-20")]
    assert [e["pixels"] for e in record["scenes"]] == [int((index == 1).sum()), int((index == 2).sum())]
    assert record["analysed_px"] == int(valid.sum()) == sum(e["pixels"] for e in record["scenes"])
    assert record["analysed_px"] + record["no_scene_px"] == grid.width * grid.height
    assert [e["offset_removed_dn"] for e in record["scenes"]] == [0.0, BASELINE_OFFSET_DN]


def test_mosaic_limit_and_single_scene_record(stac_api, tmp_path):
    """max_mosaic_scenes: 1 keeps the old rule (the scene covering most; the rest nodata); a covered ROI
    reads one scene and still writes a one-entry scenes.json."""
    from tasks.core.grid import make_grid, roi_in_grid_crs
    from tasks.raster.align import build_stack
    from tasks.sources.mosaic import read_scenes

    single = fetch_stac_inputs(_source(stac_api, max_mosaic_scenes=1), "stac-test", ("B02",), SPLIT_ROI,
                               *JAN2017, tmp_path / "cache")
    assert single.mosaic is None and single.scene_id == EAST  # 1.7 of the 2.1 km (west: 1.6)
    assert any("covers only" in n for n in single.notes)
    covered = fetch_stac_inputs(_source(stac_api), "stac-test", ("B02",), SPLIT_ROI, *Y2016, tmp_path / "cache")
    assert covered.mosaic is None and covered.scene_id == CLEAR and covered.cloud_pct == 2.5
    grid = make_grid(SPLIT_ROI)
    build_stack(covered, grid, tmp_path / "work", ("B02",), roi_in_grid_crs(SPLIT_ROI, grid))
    record = read_scenes(tmp_path / "work")
    assert record["mosaic"] is False and [e["scene_id"] for e in record["scenes"]] == [CLEAR]
    assert record["scenes"][0]["pixels"] == record["analysed_px"] > 0


@pytest.mark.slow
def test_scan_over_partial_scenes_runs_on_the_mosaic(stac_api, prefect_harness, tmp_path, rgb_checkpoint):
    """The whole scan over the split ROI: the plan carries the mosaic, alignment writes scene_index.tif and
    scenes.json in the work folder, and the footprint is what both scenes cover."""
    from flows.cli import main
    from tasks.sources.mosaic import read_scenes

    catalog_path = tmp_path / "data_catalog.yaml"
    catalog_path.write_text(yaml.safe_dump({"version": 1, "sources": {
        "split": {"kind": "stac", "url": stac_api.url, "max_retries": 2, "timeout_s": 10}}}))
    out = tmp_path / "run"
    bbox = ",".join(f"{v:.6f}" for v in SPLIT_ROI.bounds)
    code = main(["scan", "--source", "split", f"--bbox={bbox}", "--start", "2017-01-01", "--end", "2017-01-31",
                 "--detector", str(rgb_checkpoint), "--catalog", str(catalog_path), "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(out), "--keep-work", "--no-progress"])
    assert code == 0
    record = read_scenes(out / ".work")
    assert [e["scene_id"] for e in record["scenes"]] == [WEST, EAST] and all(e["pixels"] > 0 for e in record["scenes"])
    with rasterio.open(out / ".work" / "scene_index.tif") as src, rasterio.open(out / ".work" / "valid.tif") as v:
        index, valid = src.read(1), v.read(1)
    np.testing.assert_array_equal(index > 0, valid > 0)
    assert record["analysed_px"] == int(valid.sum())
    manifest = yaml.safe_load((out / "manifest.json").read_text())
    assert manifest["inputs"]["acquired_range"] == ["2017-01-10", "2017-01-20"]
    assert any("per-pixel mosaic of 2" in n for n in manifest["inputs"]["notes"])
    assert manifest["inputs"]["kind"] == "stac" and manifest["inputs"]["mosaic"] is True
    assert manifest["inputs"]["scene_ids"] == [WEST, EAST]
    dem = manifest["inputs"]["dem_product"]  # which DEM product the slope and DEM came from
    assert (dem is None) == (manifest["inputs"]["dem_path"] is None)
    if dem is not None:
        assert dem["collection"] == "cop-dem-glo-30", dem
    assert [e["pixels"] for e in manifest["inputs"]["scenes"]] == [e["pixels"] for e in record["scenes"]]
    # every polygon names the scene most of its pixels came from, never the joined "A+B"
    import geopandas as gpd

    polygons = gpd.read_file(out / "landslides.gpkg", layer="landslides")
    assert len(polygons) and set(polygons["scene_id"]) <= {WEST, EAST}
    expected_dem = f"{dem['collection']}: {dem['product']}" if dem else None
    assert (polygons["dem"].isna() if dem is None else polygons["dem"] == expected_dem).all()
    assert polygons["acquired"].notna().all()
