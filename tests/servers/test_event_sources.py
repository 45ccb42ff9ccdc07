"""Event mode's scene choice (``tasks.sources.event``) on the remote sources, against the local STAC
and Sentinel Hub servers: the pre-event scene comes from the window before the event date, the
post-event one from the window after it, and a window without a usable scene is named."""

from __future__ import annotations

import datetime as dt

import pytest
import shapely
import yaml

import tasks.sources.stac as acquire_stac
from tasks.core.errors import SourceError
from tasks.sources.catalog import load_catalog
from tasks.sources.event import EventWindows, resolve_event_inputs

# the served T18SVG scenes: 2016-01-12 (2.5 % cloud) and 2016-02-01 (71.3 % cloud)
EVENT = dt.date(2016, 1, 20)
WINDOWS = EventWindows(EVENT, pre_days=30, post_days=30)
STAC_ROI = shapely.box(-75.695, 37.718, -75.675, 37.733)
SH_ROI = shapely.box(-75.70, 37.62, -75.69, 37.628)


@pytest.fixture(autouse=True)
def _short_retry_delay(monkeypatch):
    monkeypatch.setattr(acquire_stac, "RETRY_DELAY_S", 0.1)


def _catalog(tmp_path, source: dict):
    path = tmp_path / "data_catalog.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "sources": {"remote": source}}))
    return load_catalog(path)


def test_stac_event_date_picks_a_scene_on_each_side(stac_api, tmp_path):
    pytest.importorskip("pystac_client")
    catalog = _catalog(tmp_path, {"kind": "stac", "url": stac_api.url, "max_retries": 2,
                                  "timeout_s": 10, "max_cloud_pct": 80})
    event = resolve_event_inputs(catalog, "remote", WINDOWS, ("B02", "B04"), ("B02", "B04"),
                                 STAC_ROI, tmp_path / "cache")
    assert event.pre.scene_id == "S2A_18SVG_20160112_0_L1C"
    assert event.post.scene_id == "S2A_18SVG_20160201_0_L1C"
    assert event.pre.acquired < EVENT.isoformat() <= event.post.acquired
    assert event.pre.dem_path is None and set(event.pre.band_paths) == {"B02", "B04"}
    assert event.post.notes[0] == "post-event scene (post-event window 2016-01-20..2016-02-19)"

    # under the default cloud limit the only post-event scene is refused: the window is named
    strict = _catalog(tmp_path, {"kind": "stac", "url": stac_api.url, "max_retries": 2,
                                 "timeout_s": 10})
    with pytest.raises(SourceError, match=r"no usable post-event scene in the post-event window "
                                          r"2016-01-20\.\.2016-02-19: .*eo:cloud_cover"):
        resolve_event_inputs(strict, "remote", WINDOWS, ("B02",), ("B02",), STAC_ROI, tmp_path / "c2")


@pytest.fixture
def creds_env(sentinelhub_api, monkeypatch):
    monkeypatch.setenv("SH_CLIENT_ID", sentinelhub_api.client_id)
    monkeypatch.setenv("SH_CLIENT_SECRET", sentinelhub_api.client_secret)
    return sentinelhub_api


def test_sentinelhub_event_date_picks_a_scene_on_each_side(creds_env, tmp_path):
    pytest.importorskip("sentinelhub")
    api = creds_env
    source = {"kind": "sentinelhub", "base_url": api.base_url, "token_url": api.token_url,
              "max_retries": 2, "timeout_s": 10, "dem_collection": None, "max_cloud_pct": 80}
    event = resolve_event_inputs(_catalog(tmp_path, source), "remote", WINDOWS, ("B02", "B04"),
                                 ("B02", "B04"), SH_ROI, tmp_path / "cache")
    assert event.pre.scene_id.startswith("S2A_MSIL1C_20160112")
    assert event.post.scene_id.startswith("S2A_MSIL1C_20160201")

    # a pre-event window with no scene at all (the server has none in December 2015)
    early = EventWindows(dt.date(2016, 1, 5), pre_days=20, post_days=30)
    with pytest.raises(SourceError, match=r"no usable pre-event scene in the pre-event window "
                                          r"2015-12-16\.\.2016-01-04"):
        resolve_event_inputs(_catalog(tmp_path, source), "remote", early, ("B02",), ("B02",),
                             SH_ROI, tmp_path / "c2")
