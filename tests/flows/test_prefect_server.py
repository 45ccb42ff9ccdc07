"""The regional deployment on a real Prefect server with a process worker (not ephemeral mode).

Starts `prefect server start` on 127.0.0.1, creates the process pool, deploys
`iburi-2018-regional-weekly` from prefect.yaml, and triggers two runs through
`prefect worker start --run-once`: the first with a catalog that knows only the pre-event scene,
the second with the post-event scene added. The inventory then holds the first run's landslides
as seen twice or once, the second run's new ones as `new`, nothing twice, and the ledger both scenes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.inventory.merge import read_inventory
from tasks.inventory.region_state import RegionState
from tests.flows.test_regional import POST, PRE, _catalog

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOYMENT = "landslide-regional-scan/iburi-2018-regional-weekly"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "LANDSLIDE_HOME": str(REPO),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_KEY", None)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--analytics-off"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield env
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


def _prefect(env, *args, timeout=300) -> str:
    r = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _run_and_work(env, params: dict) -> None:
    _prefect(env, "deployment", "run", DEPLOYMENT, "--params", json.dumps(params))
    _prefect(env, "worker", "start", "--pool", "landslide-process", "--run-once", timeout=600)


def _flow_run_states(env) -> list[str]:
    r = httpx.post(env["PREFECT_API_URL"] + "/flow_runs/filter", json={"limit": 50}, timeout=10)
    r.raise_for_status()
    return [fr["state_type"] for fr in r.json() if fr["name"] and fr.get("deployment_id")]


def test_two_scheduled_runs_through_a_process_worker(server, tmp_path):
    env = server
    _prefect(env, "work-pool", "create", "landslide-process", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--name", "iburi-2018-regional-weekly")
    state, runs = tmp_path / "state", tmp_path / "runs"
    base = {"region": "atsuma", "state_dir": str(state), "runs_dir": str(runs), "detector": "index",
            "lock_wait_s": 0}

    _run_and_work(env, {**base, "catalog": _catalog(tmp_path, [PRE])})
    land, scans = read_inventory(state / "atsuma" / "inventory.gpkg")
    assert land is not None and len(land) > 0, (tmp_path / "server.log").read_text()[-2000:]
    n_first = len(land)
    assert set(land["status"]) == {"new"} and list(scans["scenes"]) == [PRE]

    _run_and_work(env, {**base, "catalog": _catalog(tmp_path, [PRE, POST])})
    land, scans = read_inventory(state / "atsuma" / "inventory.gpkg")
    assert list(scans["scenes"]) == [PRE, POST]  # the second run scanned only the added scene
    new2, known2 = int(scans["new"].iloc[1]), int(scans["known"].iloc[1])
    assert len(land) == n_first + new2 and (land["status"] == "new").sum() == new2
    assert (land["detections"] == 2).sum() == known2 and land["inventory_id"].is_unique
    with RegionState(state / "atsuma") as st:
        assert {r.status for r in st.runs()} == {"merged"} and len(st.runs()) == 2
    assert len(list(runs.iterdir())) == 2
    states = _flow_run_states(env)
    assert states.count("COMPLETED") >= 2 and "FAILED" not in states
    arts = httpx.post(env["PREFECT_API_URL"] + "/artifacts/filter", json={"limit": 10}, timeout=10).json()
    assert any("new landslides" in (a.get("data") or "") for a in arts)
