"""Resume after kill -9, Dask workers, and refused resumes (the real CLI, the shipped model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from flows.cli import main

ARGS = ["scan", "--region", "iburi-2018", "--bbox", "141.93,42.70,142.02,42.76", "--block-px", "160",
        "--no-progress"]
COMPARE = ["landslide_id", "area_m2", "perimeter_m", "mean_prob", "max_prob", "uncertainty",
           "mean_slope_deg", "mean_elev_m", "centroid_lon", "centroid_lat", "scene_id", "model"]


def _same_run_outputs(a: Path, b: Path) -> None:
    for name in ("probability.tif", "uncertainty.tif", "mask.tif"):
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            np.testing.assert_array_equal(x.read(1), y.read(1), err_msg=name)
    ga = gpd.read_file(a / "landslides.gpkg", layer="landslides")
    gb = gpd.read_file(b / "landslides.gpkg", layer="landslides")
    assert len(ga) == len(gb) > 0
    assert ga.geometry.symmetric_difference(gb.geometry, align=True).area.max() < 1e-6
    for col in COMPARE:
        if ga[col].dtype.kind == "f":
            np.testing.assert_allclose(ga[col], gb[col], rtol=1e-9, err_msg=col)
        else:
            assert ga[col].tolist() == gb[col].tolist(), col


@pytest.fixture(scope="module")
def one_thread():
    """Float sums in a convolution depend on torch's thread count; every run compared here (this
    process, the killed subprocess, the Dask workers) uses one thread so results are bitwise equal."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, prefect_harness, one_thread):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def test_kill_9_mid_run_then_rerun_resumes_to_the_same_result(reference_run, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "flows.cli", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    blocks = out / ".work" / "blocks"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(blocks.glob("b_*.json"))) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the scan finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = len(list(blocks.glob("b_*.json")))
    assert done_before >= 3
    assert not (out / "landslides.gpkg").exists() and not (out / "manifest.json").exists()

    assert main([*ARGS, "--out", str(out)]) == 0  # the same command again
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["execution"]["resumed"] is True
    assert manifest["execution"]["blocks_resumed"] >= done_before
    assert manifest["execution"]["blocks_resumed"] < manifest["execution"]["blocks"]
    _same_run_outputs(out, reference_run)


def test_two_dask_workers_give_the_same_result(reference_run, tmp_path):
    out = tmp_path / "run"
    assert main([*ARGS, "--out", str(out), "--workers", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["execution"]["workers"] == 2
    assert manifest["execution"]["worker_processes"] >= 1
    _same_run_outputs(out, reference_run)


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    from tasks.run.plan import ScanRequest, plan_scan

    out = tmp_path / "run"
    plan_scan(ScanRequest(out=str(out), region="iburi-2018", bbox=(141.95, 42.72, 141.97, 42.74),
                          detector="index"))  # an interrupted run: plan written, nothing published
    code = main(["scan", "--region", "iburi-2018", "--bbox", "141.95,42.72,141.97,42.74",
                 "--detector", "index", "--min-area-m2", "900", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "min_area_m2: 500.0 -> 900.0" in err and "--overwrite" in err
