"""Regional inventory merging, the region state ledger and the region lock."""

from __future__ import annotations

import threading
import time

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import MultiPolygon, box

from tasks.core.errors import InputError
from tasks.inventory.merge import SCANS_LAYER, match_polygons, merge_run, read_inventory
from tasks.inventory.region_state import RegionBusyError, RegionState, region_lock
from tasks.vector.vectorize import FOOTPRINT_LAYER, LANDSLIDES_LAYER

CRS = "EPSG:32654"


def _run_gpkg(path, boxes, acquired, run_id, scene="s1"):
    n = len(boxes)
    gdf = gpd.GeoDataFrame({
        "landslide_id": list(range(1, n + 1)), "area_m2": [b.area for b in boxes],
        "perimeter_m": [b.length for b in boxes], "mean_prob": [0.8] * n, "max_prob": [0.9] * n,
        "uncertainty": [0.1] * n, "mean_slope_deg": [20.0] * n, "mean_elev_m": [100.0] * n,
        "centroid_lon": [142.0] * n, "centroid_lat": [42.7] * n, "scene_id": [scene] * n,
        "acquired": pd.to_datetime([acquired] * n, utc=True), "model": ["m@abc"] * n,
        "run_id": [run_id] * n, "detected_at": pd.to_datetime(["2026-01-01"] * n, utc=True)},
        geometry=boxes, crs=CRS)
    gdf.to_file(path, layer=LANDSLIDES_LAYER, driver="GPKG")
    fp = gpd.GeoDataFrame({"status": ["analysed"]}, geometry=[MultiPolygon([box(0, 0, 1000, 1000)])],
                          crs=CRS)
    fp.to_file(path, layer=FOOTPRINT_LAYER, driver="GPKG")
    return path


A, B, C = box(0, 0, 100, 100), box(300, 300, 400, 420), box(600, 0, 700, 80)


def test_match_polygons_is_greedy_one_to_one_above_the_threshold():
    known = gpd.GeoSeries([A, B])
    detected = gpd.GeoSeries([box(10, 0, 110, 100), box(5, 0, 105, 100), C, box(300, 300, 330, 330)])
    m = match_polygons(known, detected, 0.3)
    assert m == {1: 0}  # the better of two overlapping detections wins A; B's overlap is too small
    assert match_polygons(known, detected, 0.05) == {1: 0, 3: 1}
    with pytest.raises(InputError):
        match_polygons(known, detected, 0)


def test_two_runs_new_then_known_and_idempotent(tmp_path):
    inv = tmp_path / "region" / "inventory.gpkg"
    r1 = _run_gpkg(tmp_path / "r1.gpkg", [A, B], "2024-05-01T10:00:00Z", "r1")
    res = merge_run(inv, r1, "r1", ["s1"], "m@abc")
    assert (res.merged, res.new, res.known_updated, res.total) == (True, 2, 0, 2)
    land, scans = read_inventory(inv)
    assert list(land["status"]) == ["new", "new"] and list(land["inventory_id"]) == [1, 2]
    assert list(scans["run_id"]) == ["r1"]

    # the second scene sees A slightly moved (IoU 0.82), not B, and a new landslide C
    r2 = _run_gpkg(tmp_path / "r2.gpkg", [box(0, 10, 100, 110), C], "2024-06-01T10:00:00Z", "r2", "s2")
    res = merge_run(inv, r2, "r2", ["s2"], "m@abc")
    assert (res.new, res.known_updated, res.total) == (1, 1, 3)
    assert res.new_area_m2 == pytest.approx(C.area)
    land, scans = read_inventory(inv)
    land = land.set_index("inventory_id")
    assert land.loc[1, "status"] == "known" and land.loc[1, "detections"] == 2
    assert land.loc[1, "first_seen"] == pd.Timestamp("2024-05-01T10:00:00Z")
    assert land.loc[1, "last_seen"] == pd.Timestamp("2024-06-01T10:00:00Z")
    assert land.loc[1, "scene_id"] == "s2" and land.loc[1].geometry.equals(box(0, 10, 100, 110))
    assert land.loc[2, "status"] == "known" and land.loc[2, "detections"] == 1
    assert land.loc[3, "status"] == "new" and land.loc[3, "first_seen"] == pd.Timestamp("2024-06-01T10:00:00Z")
    assert list(scans["run_id"]) == ["r1", "r2"] and list(scans["new"]) == [2, 1]
    assert list(scans["known"]) == [0, 1]

    before = inv.read_bytes()
    again = merge_run(inv, r2, "r2", ["s2"], "m@abc")
    assert not again.merged and inv.read_bytes() == before


def test_a_failed_write_leaves_the_inventory_as_it_was(tmp_path, monkeypatch):
    inv = tmp_path / "inventory.gpkg"
    merge_run(inv, _run_gpkg(tmp_path / "r1.gpkg", [A], "2024-05-01", "r1"), "r1", ["s1"], "m")
    before = inv.read_bytes()
    real = gpd.GeoDataFrame.to_file

    def failing(self, path, *args, layer=None, **kwargs):
        if layer == SCANS_LAYER:
            raise OSError("disk full (simulated)")
        return real(self, path, *args, layer=layer, **kwargs)

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", failing)
    with pytest.raises(OSError, match="simulated"):
        merge_run(inv, _run_gpkg(tmp_path / "r2.gpkg", [C], "2024-06-01", "r2"), "r2", ["s2"], "m")
    assert inv.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inventory.gpkg", "r1.gpkg", "r2.gpkg"]


def test_region_lock_refuses_or_waits(tmp_path):
    with region_lock(tmp_path):
        with pytest.raises(RegionBusyError, match="another run of this region"):
            with region_lock(tmp_path, wait_s=0.2, poll_s=0.05):
                pass
    held = threading.Event()

    def hold_briefly():
        with region_lock(tmp_path):
            held.set()
            time.sleep(0.5)

    t = threading.Thread(target=hold_briefly)
    t.start()
    held.wait(5)
    t0 = time.monotonic()
    with region_lock(tmp_path, wait_s=10, poll_s=0.05):
        waited = time.monotonic() - t0
    t.join()
    assert waited > 0.1  # it waited for the holder instead of failing


def test_state_ledger_counts_scenes_only_once_merged(tmp_path):
    with RegionState(tmp_path) as st:
        st.start_run("r1", ["s1"], "m@abc", str(tmp_path / "runs" / "r1"))
        st.set_status("r1", "published")
        assert [r.run_id for r in st.unmerged_runs()] == ["r1"]
        assert st.processed("m@abc") == set()
        st.mark_merged("r1", [("s1", "2024-05-01T10:00:00+00:00")], "m@abc")
        assert st.unmerged_runs() == [] and st.processed("m@abc") == {"s1"}
        assert st.processed("other@def") == set()
        assert st.last_acquired("m@abc") == "2024-05-01T10:00:00+00:00"
    with RegionState(tmp_path) as st:  # persisted
        assert [r.status for r in st.runs()] == ["merged"]


def test_change_drops_scars_already_there_before(tmp_path, capsys):
    from flows.cli import main

    pre = _run_gpkg(tmp_path / "pre.gpkg", [box(0, 0, 100, 100), box(600, 0, 640, 80)], "2018-07-01", "pre")
    # post: A grew a little (pre covers 0.83: dropped), C is new (pre covers 0.4: kept), D is new
    post = _run_gpkg(tmp_path / "post.gpkg", [box(0, 0, 100, 120), C, box(300, 300, 400, 420)],
                     "2018-09-10", "post")
    out = tmp_path / "new.gpkg"
    assert main(["change", "--post", str(post), "--pre", str(pre), "--out", str(out)]) == 0
    assert "kept 2 polygons" in capsys.readouterr().out
    kept = gpd.read_file(out, layer=LANDSLIDES_LAYER)
    assert sorted(kept["landslide_id"]) == [2, 3]
    assert kept.set_index("landslide_id").loc[2, "pre_overlap"] == pytest.approx(0.4)
    assert set(kept["pre_looked"]) == {1.0}  # the synthetic pre footprint covers all of them
    assert len(gpd.read_file(out, layer=FOOTPRINT_LAYER)) == 1
    assert main(["change", "--post", str(post), "--pre", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "x.gpkg")]) != 0
    assert not (tmp_path / "x.gpkg").exists()
    # an event date is checked against the polygons' acquisition dates (no manifest beside these)
    capsys.readouterr()
    assert main(["change", "--post", str(post), "--pre", str(pre), "--out", str(out),
                 "--event-date", "2018-08-01"]) == 0
    assert "pre scenes 2018-07-01..2018-07-01, post scenes 2018-09-10..2018-09-10" in capsys.readouterr().out
    assert main(["change", "--post", str(post), "--pre", str(pre), "--out", str(tmp_path / "y.gpkg"),
                 "--event-date", "2018-06-01"]) == 2
    assert "the --pre run's scenes end 2018-07-01, not before the event date 2018-06-01" in \
        capsys.readouterr().err
    assert main(["change", "--post", str(post), "--pre", str(pre), "--out", str(tmp_path / "y.gpkg"),
                 "--event-date", "June"]) == 2
    assert not (tmp_path / "y.gpkg").exists()
