"""The check both remote regional-scan tests make (STAC and Sentinel Hub test servers)."""

from __future__ import annotations

from pathlib import Path

from devservers.session import write_mechanics_checkpoint
from flows.regional import regional_scan_flow
from tasks.inventory.merge import read_inventory
from tasks.inventory.region_state import RegionState


def check_scans_new_scenes_once(tmp_path: Path, catalog: str, region: str, clear_scene: str) -> None:
    """Two regional runs: the first scans only ``clear_scene`` (the region's other scene is above
    max_cloud_pct) and records it; the second finds nothing new."""
    ckpt = write_mechanics_checkpoint(tmp_path / "ckpt")
    kw = dict(state_dir=str(tmp_path / "state"), runs_dir=str(tmp_path / "runs"), detector=str(ckpt),
              catalog=catalog, options={"cache_dir": str(tmp_path / "cache")})
    first = regional_scan_flow(region, **kw)
    assert [r["scene_id"] for r in first["runs"]] == [clear_scene]
    _, scans = read_inventory(first["inventory"])
    assert list(scans["scenes"]) == [clear_scene]
    second = regional_scan_flow(region, **kw)
    assert second["runs"] == [] and "Nothing new" in second["summary"]
    with RegionState(tmp_path / "state" / region) as st:
        assert st.processed(first["model"]) == {clear_scene}
