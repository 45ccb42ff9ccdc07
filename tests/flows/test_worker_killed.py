"""A Dask worker killed (SIGKILL) while it predicts a block: the block runs again on a live worker
and the run's outputs equal an undisturbed run's (issue 6, "Bad input and faults").

The scan runs as the plain steps of ``tasks.run.steps`` (what the Prefect flow wraps), the
inference step pointed at a LocalCluster of this test through ``dask_address`` so the test can see
which worker executes which block and kill that worker's process.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from tasks.run import steps

BBOX = (141.93, 42.70, 142.02, 42.76)
BLOCK_PX = 256  # 3 x 3 blocks of ~20 patches: a block runs long enough to be caught running
COMPARE = ["landslide_id", "area_m2", "perimeter_m", "mean_prob", "max_prob", "uncertainty",
           "mean_slope_deg", "mean_elev_m", "centroid_lon", "centroid_lat", "scene_id", "model"]


def _request(out: Path, **extra) -> dict:
    return {"out": str(out), "region": "iburi-2018", "bbox": BBOX, "block_px": BLOCK_PX,
            "progress": False, "keep_work": True, "run_id": "worker-killed", **extra}


def _scan(request: dict, on_infer_start=None) -> Path:
    """All scan steps in order; ``on_infer_start(blocks_dir)`` runs beside the inference step."""
    started = time.time()
    work = steps.step_plan(request)
    stack = steps.step_stack(work)
    if on_infer_start is None:
        infer = steps.step_infer(work, stack)
    else:
        result: dict = {}

        def infer_in_thread():
            try:
                result["infer"] = steps.step_infer(work, stack)
            except BaseException as exc:  # re-raised in the test's thread
                result["error"] = exc

        thread = threading.Thread(target=infer_in_thread, daemon=True)
        thread.start()
        on_infer_start(Path(work) / "blocks", thread)
        thread.join(timeout=300)
        assert not thread.is_alive(), "the inference step did not finish after the kill"
        if "error" in result:
            raise result["error"]
        infer = result["infer"]
    cleaned = steps.step_clean(work, infer)
    vectors = steps.step_vectorize(work, infer, cleaned)
    rasters = steps.step_rasters(work, infer, cleaned)
    steps.step_finish(work, stack, infer, cleaned, vectors, rasters, started)
    return Path(request["out"])


@pytest.fixture(scope="module")
def one_thread():
    """Convolution sums depend on torch's thread count: the reference runs in this process with
    one thread, as each Dask worker does (the block jobs set it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, one_thread) -> Path:
    return _scan(_request(tmp_path_factory.mktemp("ref") / "run"))


def _executing_blocks(dask_worker) -> list[str]:
    """Keys of the block tasks this worker is executing right now (runs inside the worker)."""
    return [str(ts.key) for ts in dask_worker.state.executing if "-b_" in str(ts.key)]


def _kill_a_worker_mid_block(client, blocks_dir: Path, infer_thread: threading.Thread,
                             timeout_s: float = 240) -> dict:
    """Wait until a worker that already finished a block (its detector is loaded) executes
    another, SIGKILL that worker's process, and return what was killed. Retries when the block
    completed between the look and the kill (its record then names the killed process)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and infer_thread.is_alive():
        pids = client.run(os.getpid, on_error="ignore")
        executing = client.run(_executing_blocks, on_error="ignore")
        finished_by = {json.loads(p.read_text())["worker_pid"] for p in blocks_dir.glob("b_*.json")}
        for address, keys in executing.items():
            pid = pids.get(address)
            if not keys or pid not in finished_by:
                continue
            stem = keys[0].split("-", 2)[2]
            record = blocks_dir / f"{stem}.json"
            if record.exists():
                continue
            os.kill(pid, signal.SIGKILL)
            if record.exists() and json.loads(record.read_text())["worker_pid"] == pid:
                break  # finished just before the kill: try again on another block
            return {"pid": pid, "stem": stem, "address": address}
        time.sleep(0.05)
    pytest.fail("no block was caught running on a worker that had finished one before")


def _assert_same_outputs(a: Path, b: Path) -> None:
    for name in (".work/prob.tif", ".work/uncertainty_raw.tif", "probability.tif",
                 "uncertainty.tif", "mask.tif"):
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            xa, ya = x.read(1), y.read(1)
            assert xa.dtype == ya.dtype
            np.testing.assert_array_equal(xa, ya, err_msg=name)  # NaN == NaN here
    ga = gpd.read_file(a / "landslides.gpkg", layer="landslides")
    gb = gpd.read_file(b / "landslides.gpkg", layer="landslides")
    assert len(ga) == len(gb) > 0
    assert ga.geometry.geom_equals_exact(gb.geometry, tolerance=0).all()
    for col in COMPARE:
        assert ga[col].tolist() == gb[col].tolist(), col
    fa = gpd.read_file(a / "landslides.gpkg", layer="footprint")
    fb = gpd.read_file(b / "landslides.gpkg", layer="footprint")
    assert fa.geometry.geom_equals_exact(fb.geometry, tolerance=0).all()


def test_worker_killed_mid_block_is_retried_elsewhere_with_the_same_result(reference_run, tmp_path):
    from distributed import Client, LocalCluster

    killed: dict = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:

        def kill_one(blocks_dir: Path, thread: threading.Thread) -> None:
            killed.update(_kill_a_worker_mid_block(client, blocks_dir, thread))

        out = _scan(_request(tmp_path / "run", dask_address=cluster.scheduler_address),
                    on_infer_start=kill_one)

    assert killed, "no worker was killed"
    blocks_dir = out / ".work" / "blocks"
    record = json.loads((blocks_dir / f"{killed['stem']}.json").read_text())
    assert record["worker_pid"] != killed["pid"]  # the killed block was run again, elsewhere
    assert not list(blocks_dir.glob(".*tmp*")), "a temporary block file was left behind"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["execution"]["blocks"] == 9
    assert manifest["execution"]["blocks_resumed"] == 0
    _assert_same_outputs(out, reference_run)


@pytest.mark.slow
def test_block_killing_its_worker_every_time_is_a_clear_error_then_the_rerun_resumes(
        reference_run, tmp_path):
    import dask
    from distributed import Client, LocalCluster

    from tasks.core.errors import LandslideError

    out = tmp_path / "run"
    # no second try: the first kill is final for that block (as a block running out of memory on
    # every worker would be after the scheduler's allowed failures)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        request = _request(out, dask_address=cluster.scheduler_address)
        with pytest.raises(LandslideError, match=r"block b_\d{4}_\d{4}: every Dask worker that "
                                                 r"ran it died \(1 tries.*--block-px"):
            _scan(request, on_infer_start=lambda blocks_dir, thread: _kill_a_worker_mid_block(
                client, blocks_dir, thread))
    finished = len(list((out / ".work" / "blocks").glob("b_*.json")))
    assert 1 <= finished < 9
    assert not (out / "landslides.gpkg").exists()

    _scan(_request(out))  # the same run again, in this process: resumes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["execution"]["blocks_resumed"] >= finished
    _assert_same_outputs(out, reference_run)
