"""Incremental regional scans from Sentinel Hub (the local OAuth + Catalog + Process server)."""

from __future__ import annotations

import pytest
import yaml

from devservers.session import write_mechanics_checkpoint
from flows.regional import regional_scan_flow
from tasks.core.errors import InputError
from tasks.inventory.region_state import RegionState
from tasks.sources.listing import region_scenes
from tests.servers.regional_checks import check_scans_new_scenes_once

pytest.importorskip("sentinelhub")

BBOX = [-75.695, 37.718, -75.675, 37.733]  # inside the served T18SVG subset
CLEAR = "S2A_MSIL1C_20160112T155612_N0201_R097_T18SVG_20160112T160000"  # 2.5 % cloud
CLOUDY = "S2A_MSIL1C_20160201T155612_N0201_R097_T18SVG_20160201T160000"  # 71.3 % cloud


def _catalog(tmp_path, api, max_cloud_pct: float = 30.0) -> str:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "sources": {
        "sh": {"kind": "sentinelhub", "base_url": api.base_url, "token_url": api.token_url,
               "max_retries": 1, "timeout_s": 10, "dem_collection": None, "max_cloud_pct": max_cloud_pct}},
        "regions": {"coast": {"source": "sh", "bbox": BBOX, "start": "2016-01-01", "end": "2016-12-31"}}}))
    return str(path)


@pytest.fixture
def creds_env(sentinelhub_api, monkeypatch):
    monkeypatch.setenv("SH_CLIENT_ID", sentinelhub_api.client_id)
    monkeypatch.setenv("SH_CLIENT_SECRET", sentinelhub_api.client_secret)
    return sentinelhub_api


def test_listing_applies_the_window_and_the_cloud_limit(creds_env, tmp_path):
    cache = str(tmp_path / "cache")
    scenes, source = region_scenes(_catalog(tmp_path, creds_env, max_cloud_pct=80), "coast", cache_dir=cache)
    assert source == "sh" and [s.scene_id for s in scenes] == [CLEAR, CLOUDY]  # oldest first
    assert scenes[0].acquired.startswith("2016-01-12T") and scenes[0].first == scenes[0].last
    later, _ = region_scenes(_catalog(tmp_path, creds_env, max_cloud_pct=80), "coast",
                             after=scenes[0].last.replace(day=13), cache_dir=cache)
    assert [s.scene_id for s in later] == [CLOUDY]
    clear_only, _ = region_scenes(_catalog(tmp_path, creds_env), "coast", cache_dir=cache)
    assert [s.scene_id for s in clear_only] == [CLEAR]


def test_sentinelhub_region_scans_new_scenes_once(creds_env, prefect_harness, tmp_path):
    check_scans_new_scenes_once(tmp_path, _catalog(tmp_path, creds_env), "coast", CLEAR)


def test_missing_credentials_fail_before_any_state(sentinelhub_api, prefect_harness, tmp_path, monkeypatch):
    monkeypatch.delenv("SH_CLIENT_ID", raising=False)
    monkeypatch.delenv("SH_CLIENT_SECRET", raising=False)
    ckpt = write_mechanics_checkpoint(tmp_path / "ckpt")
    with pytest.raises(InputError, match="SH_CLIENT_ID and SH_CLIENT_SECRET"):
        regional_scan_flow("coast", state_dir=str(tmp_path / "state"), runs_dir=str(tmp_path / "runs"),
                           detector=str(ckpt), catalog=_catalog(tmp_path, sentinelhub_api))
    with RegionState(tmp_path / "state" / "coast") as st:
        assert st.runs() == []
    assert not (tmp_path / "runs").exists()
    assert sentinelhub_api.faults.records == []  # no request was made
