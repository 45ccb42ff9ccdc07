"""Incremental regional scans from a STAC API (the rustac test server), and an unreachable API."""

from __future__ import annotations

import pytest
import yaml

from devservers.session import write_mechanics_checkpoint
from flows.regional import regional_scan_flow
from tasks.core.errors import SourceError
from tasks.inventory.region_state import RegionState
from tests.servers.regional_checks import check_scans_new_scenes_once

BBOX = [-75.695, 37.718, -75.675, 37.733]
CLEAR = "S2A_18SVG_20160112_0_L1C"


def _catalog(tmp_path, url: str) -> str:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "sources": {
        "s2": {"kind": "stac", "url": url, "max_retries": 1, "timeout_s": 5, "dem_collection": None}},
        "regions": {"coast": {"source": "s2", "bbox": BBOX, "start": "2016-01-01",
                              "end": "2016-12-31"}}}))
    return str(path)


def test_stac_region_scans_new_scenes_once(stac_api, prefect_harness, tmp_path):
    check_scans_new_scenes_once(tmp_path, _catalog(tmp_path, stac_api.url), "coast", CLEAR)


def test_unreachable_stac_api_fails_clearly_and_changes_no_state(prefect_harness, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ckpt = write_mechanics_checkpoint(tmp_path / "ckpt")
    with pytest.raises(SourceError, match=f"127.0.0.1:{port}"):
        regional_scan_flow("coast", state_dir=str(tmp_path / "state"), runs_dir=str(tmp_path / "runs"),
                           detector=str(ckpt), catalog=_catalog(tmp_path, f"http://127.0.0.1:{port}"))
    with RegionState(tmp_path / "state" / "coast") as st:
        assert st.runs() == [] and st.processed("anything") == set()
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "state" / "coast" / "inventory.gpkg").exists()
