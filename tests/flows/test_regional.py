"""Incremental regional scans into one inventory (Prefect ephemeral mode, the bundled Iburi pair).

Run 1 knows only the pre-event scene; run 2 finds the post-event scene added to the catalog and
processes only it; run 3 has nothing new. A merge killed after the run folder was published is
completed by the next run without duplicates; a second run of the region at once is refused.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import yaml

from flows.regional import detector_ref, regional_scan_flow
from tasks.inventory import merge as inventory_mod
from tasks.inventory.merge import read_inventory
from tasks.inventory.region_state import RegionBusyError, RegionState, region_lock

REPO = Path(__file__).resolve().parents[2]
BBOX = [141.95, 42.72, 141.965, 42.735]


def _catalog(tmp_path: Path, scene_ids: list[str], event_date: str | None = None) -> str:
    cat = yaml.safe_load((REPO / "data_catalog.yaml").read_text())
    src = copy.deepcopy(cat["sources"]["iburi-2018-local"])
    src["dem"] = str(REPO / src["dem"])
    src["scenes"] = [dict(s, band_template=str(REPO / s["band_template"]))
                     for s in src["scenes"] if s["scene_id"] in scene_ids]
    region = {"source": "iburi", "bbox": BBOX, **({"event_date": event_date} if event_date else {})}
    path = tmp_path / f"catalog-{len(scene_ids)}{'-event' if event_date else ''}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "sources": {"iburi": src},
                                    "regions": {"atsuma": region}}))
    return str(path)


PRE, POST = "iburi-2018-pre-s2-mosaic", "iburi-2018-post-s2-mosaic"


def test_incremental_runs_recovery_and_lock(prefect_harness, tmp_path, monkeypatch):
    state, runs = tmp_path / "state", tmp_path / "runs"
    kw = dict(state_dir=str(state), runs_dir=str(runs), detector="index")

    first = regional_scan_flow("atsuma", catalog=_catalog(tmp_path, [PRE]), **kw)
    assert [r["scene_id"] for r in first["runs"]] == [PRE]
    land, scans = read_inventory(first["inventory"])
    n_pre = len(land)
    assert n_pre > 0 and set(land["status"]) == {"new"} and set(land["detections"]) == {1}
    assert first["runs"][0]["new"] == n_pre

    # run 2 is killed after publishing its folder, before the inventory update
    real_merge = inventory_mod.merge_run

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between publishing and the inventory update (simulated)")

    monkeypatch.setattr("flows.regional.merge_run", killed)
    both = _catalog(tmp_path, [PRE, POST])
    with pytest.raises(BaseException, match="simulated"):
        regional_scan_flow("atsuma", catalog=both, **kw)
    monkeypatch.setattr("flows.regional.merge_run", real_merge)
    with RegionState(state / "atsuma") as st:
        assert [r.status for r in st.runs()] == ["merged", "published"]
        assert st.processed(first["model"]) == {PRE}
    published = [p for p in runs.iterdir() if p.name != first["runs"][0]["run_id"]]
    assert len(published) == 1 and (published[0] / "landslides.gpkg").exists()

    # run 3 completes the interrupted merge and finds nothing else new: the post scene is not rescanned
    third = regional_scan_flow("atsuma", catalog=both, **kw)
    assert third["recovered"] == [published[0].name] and third["runs"] == []
    assert "Nothing new" in third["summary"]
    land, scans = read_inventory(third["inventory"])
    assert list(scans["run_id"]) == [first["runs"][0]["run_id"], published[0].name]
    assert len(list(runs.iterdir())) == 2
    post_new = int(scans["new"].iloc[1])
    post_known = int(scans["known"].iloc[1])
    assert len(land) == n_pre + post_new  # nothing duplicated
    assert (land["status"] == "new").sum() == post_new
    assert (land["detections"] == 2).sum() == post_known
    with RegionState(state / "atsuma") as st:
        assert st.processed(first["model"]) == {PRE, POST} and st.unmerged_runs() == []

    # a second run of the region while one holds the lock is refused, and changes nothing
    before = Path(third["inventory"]).read_bytes()
    with region_lock(state / "atsuma"):
        with pytest.raises(RegionBusyError, match="another run of this region"):
            regional_scan_flow("atsuma", catalog=both, **kw)
    assert Path(third["inventory"]).read_bytes() == before


def test_unknown_region_changes_no_state(prefect_harness, tmp_path):
    from tasks.core.errors import InputError

    with pytest.raises(InputError, match="nowhere"):
        regional_scan_flow("nowhere", state_dir=str(tmp_path / "state"), runs_dir=str(tmp_path / "r"),
                           catalog=_catalog(tmp_path, [PRE]), detector="index")
    assert not (tmp_path / "state" / "nowhere" / "state.sqlite").exists()
    assert not (tmp_path / "r").exists()


def test_summary_goes_to_a_webhook_block(prefect_harness, tmp_path):
    """A CustomWebhookNotificationBlock pointed at a server on 127.0.0.1 receives the summary."""
    import http.server
    import json
    import threading

    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        CustomWebhookNotificationBlock(name="ops", url=f"http://127.0.0.1:{server.server_port}/hook",
                                       json_data={"text": "{{subject}}: {{body}}"}).save(
            "landslide-ops", overwrite=True)
        result = regional_scan_flow("atsuma", state_dir=str(tmp_path / "state"),
                                    runs_dir=str(tmp_path / "runs"), detector="index",
                                    catalog=_catalog(tmp_path, [PRE]),
                                    webhook_block="custom-webhook/landslide-ops")
    finally:
        server.shutdown()
    assert len(received) == 1
    assert received[0]["text"].startswith("landslide scan: # Landslide scan of atsuma")
    assert f"**{result['runs'][0]['new']} new landslides" in received[0]["text"]


def test_region_event_date_leaves_out_pre_event_scenes_and_checks_change(prefect_harness, tmp_path,
                                                                        capsys):
    """A region with an event_date: the regional scan scans only the scene that does not end before
    the event (the post-event composite straddles it), and `landslide change` takes the date from
    the catalog to check its pre and post runs, refusing them swapped."""
    import json

    from flows.cli import main

    catalog = _catalog(tmp_path, [PRE, POST], event_date="2018-09-06")
    result = regional_scan_flow("atsuma", state_dir=str(tmp_path / "state"),
                                runs_dir=str(tmp_path / "runs"), detector="index", catalog=catalog)
    assert [r["scene_id"] for r in result["runs"]] == [POST]
    assert "Event date 2018-09-06" in result["summary"]
    post_run = Path(result["runs"][0]["run_dir"])
    assert json.loads((post_run / "manifest.json").read_text())["request"]["region"] == "atsuma"

    pre_run = tmp_path / "pre_run"  # the pre-event scene, scanned on its own
    assert main(["scan", "--catalog", catalog, "--region", "atsuma", "--start", "2017-07-01",
                 "--end", "2018-07-31", "--checkpoint", "index", "--out", str(pre_run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "new.gpkg"
    assert main(["change", "--post", str(post_run), "--pre", str(pre_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "event date 2018-09-06 (from region 'atsuma' in the catalog)" in printed
    assert "pre scenes 2017-07-01..2018-07-31, post scenes 2018-08-01..2019-07-31" in printed
    assert out.exists()

    swapped = tmp_path / "swapped.gpkg"
    assert main(["change", "--post", str(pre_run), "--pre", str(post_run), "--out",
                 str(swapped), "--event-date", "2018-09-06"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the --pre run's scenes end 2019-07-31")
    assert not swapped.exists()


def test_a_run_left_by_a_killed_regional_scan_is_resumed_and_stale_ones_removed(
        prefect_harness, tmp_path, caplog):
    """kill -9 leaves the run 'running' in the state and a half-done folder: the next regional run
    resumes that folder (same run id, finished work reused) instead of starting a second one, and
    removes an unfinished folder whose scene is no longer to do."""
    from tasks.run import plan as plan_module
    from tasks.run.plan import ScanRequest, plan_scan

    state, runs = tmp_path / "state", tmp_path / "runs"
    cat = _catalog(tmp_path, [POST])
    model = detector_ref("index")
    killed_id, stale_id = "20261204T000000Z-aaaaaa", "20261204T000001Z-bbbbbb"
    killed_dir, stale_dir = runs / killed_id, runs / stale_id
    with region_lock(state / "atsuma"), RegionState(state / "atsuma") as st:
        st.start_run(killed_id, [POST], model, str(killed_dir))
        st.start_run(stale_id, ["a-scene-no-longer-listed"], model, str(stale_dir))
    # what the killed scan had done: planned (the same request the regional flow makes)
    plan_scan(ScanRequest(out=str(killed_dir), region="atsuma", start="2018-08-01", end="2019-07-31",
                          detector="index", catalog=cat, run_id=killed_id, progress=False))
    plan_module._PLANNED_HERE.clear()  # it was planned by the killed process, not this one
    (stale_dir / ".work").mkdir(parents=True)
    with caplog.at_level(logging.INFO):
        result = regional_scan_flow("atsuma", state_dir=str(state), runs_dir=str(runs), detector="index",
                                    catalog=cat)
    assert [r["run_id"] for r in result["runs"]] == [killed_id]
    assert sorted(p.name for p in runs.iterdir()) == [killed_id]  # no second folder, stale one gone
    assert (killed_dir / "landslides.gpkg").exists()
    manifest = json.loads((killed_dir / "manifest.json").read_text())
    assert manifest["execution"]["resumed"] is True
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"resuming run {killed_id}" in messages and f"removed {stale_dir}" in messages
    with RegionState(state / "atsuma") as st:
        assert [(r.run_id, r.status) for r in st.runs()] == [(killed_id, "merged")]
