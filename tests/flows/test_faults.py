"""Fault injection through the real entry point: the failures that used to look like success.

Each case runs ``landslide scan`` (``flows.cli.main``) on the bundled Iburi sample with one input
broken the way users break them, and checks what a responder sees: exit status 2, one ``error:``
line that names the layer and file, no traceback and no file under a final name. Refusals found
while planning never start the Prefect flow (``_no_flow`` fails the test if one starts).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.windows
from rasterio.transform import Affine

from flows.cli import main
from tasks.core.files import FolderBusyError
from tasks.core.grid import read_aoi
from tasks.run.outputs import FINAL_NAMES, LOCK, run_folder_lock
from tasks.run.plan import ScanRequest, plan_scan
from tests.data.crops import SHARED, write_catalog
from tests.flows.test_cli import CATALOG, absolute_catalog, assert_refused, run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_flow(monkeypatch):
    """A refusal must come while planning: starting the scan (a Prefect flow, or its steps
    in-process) in this process fails the test."""
    import flows.scan
    import tasks.run.pipeline

    def refuse(*args, **kwargs):
        pytest.fail("a Prefect flow was started although the input is bad; it must be refused while "
                    "planning")

    monkeypatch.setattr(flows.scan, "scan_flow", refuse)
    monkeypatch.setattr(tasks.run.pipeline, "scan_in_process", refuse)

DEM = REPO / "data" / "iburi_2018" / "dem" / "AW3D30_DSM.tif"
POST_B3 = REPO / "data" / "iburi_2018" / "s2_post" / "S2_post_B3.tif"
# a 1.5 x 1.5 km ROI in the western part of the sample
BBOX = (141.90, 42.70, 141.918, 42.714)


def shifted_copy(src_path: Path, dst_path: Path, dx: float = 0.0, dy: float = 0.0,
                 crop_cols: tuple[float, float] | None = None, fill=None) -> Path:
    """A copy of a raster with its georeference moved by (dx, dy) CRS units; ``crop_cols`` keeps the
    column fraction [a, b); ``fill`` overwrites every pixel (e.g. with nodata)."""
    with rasterio.open(src_path) as src:
        data, profile = src.read(), src.profile.copy()
    if crop_cols is not None:
        a, b = (int(f * data.shape[2]) for f in crop_cols)
        data = data[:, :, a:b]
        profile["transform"] = profile["transform"] * Affine.translation(a, 0)
    if fill is not None:
        data = np.full_like(data, fill)
    profile.update(transform=Affine.translation(dx, dy) * profile["transform"], width=data.shape[2],
                   driver="GTiff")
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return dst_path


def iburi_catalog(tmp_path: Path, dem: Path | None = None, b3: Path | None = None) -> Path:
    """The shipped catalog (absolute paths), its Iburi source's DEM and/or post-event B03 replaced."""
    raw = absolute_catalog()
    source = raw["sources"]["iburi-2018-local"]
    if dem is not None:
        source["dem"] = str(dem)
    if b3 is not None:
        post = source["scenes"][0]
        template = post.pop("band_template")
        tokens = post.pop("band_tokens")
        post["bands"] = {b: template.replace("{band}", tok) for b, tok in tokens.items()}
        post["bands"]["B03"] = str(b3)
    return write_catalog(tmp_path / "cat.yaml", raw["sources"], raw["regions"])


def scan(catalog: Path, out: Path, *extra) -> list:
    return ["scan", "--catalog", catalog, "--region", "iburi-2018", "--bbox", ",".join(map(str, BBOX)),
            "--detector", "index", "--out", out, "--no-progress", *extra]


def test_dem_that_misses_the_roi_is_refused(tmp_path, capsys, no_flow):
    far = shifted_copy(DEM, tmp_path / "dem_far.tif", dx=0.5)  # 0.5 degrees east: beside the ROI
    out = tmp_path / "run"
    code, _, err = run_cli(scan(iburi_catalog(tmp_path, dem=far), out), capsys)
    line = assert_refused(code, err, out, "DEM", str(far), "does not cover the ROI", "lon 142.3902")
    assert "nodata or cloud" not in line


def test_band_that_misses_the_roi_is_refused(tmp_path, capsys, no_flow):
    far = shifted_copy(POST_B3, tmp_path / "b3_far.tif", dy=-1.0)
    out = tmp_path / "run"
    code, _, err = run_cli(scan(iburi_catalog(tmp_path, b3=far), out), capsys)
    assert_refused(code, err, out, "band B03", str(far), "does not cover the ROI")


def test_dem_that_is_all_nodata_over_the_roi_is_refused(tmp_path, capsys, no_flow):
    blank = shifted_copy(DEM, tmp_path / "dem_blank.tif", fill=-32768)
    out = tmp_path / "run"
    code, _, err = run_cli(scan(iburi_catalog(tmp_path, dem=blank), out), capsys)
    assert_refused(code, err, out, "DEM", str(blank), "no data in the ROI")


def test_dem_that_covers_part_of_the_roi_is_analysed_there_with_a_note(tmp_path, caplog):
    # the western 16 % of the DEM's columns ends inside the ROI: part of it has terrain, part none
    part = shifted_copy(DEM, tmp_path / "dem_part.tif", crop_cols=(0.0, 0.16))
    with rasterio.open(part) as src:
        dem_east = src.bounds.right
    assert BBOX[0] < dem_east < BBOX[2]
    expected = (dem_east - BBOX[0]) / (BBOX[2] - BBOX[0])
    plan = plan_scan(ScanRequest(out=str(tmp_path / "run"), catalog=str(iburi_catalog(tmp_path, dem=part)),
                                 region="iburi-2018", bbox=BBOX, detector="index"))
    notes = [n for n in plan.scene_inputs.notes if n.startswith("DEM covers")]
    assert len(notes) == 1, plan.scene_inputs.notes
    share = float(notes[0].split()[2]) / 100  # "DEM covers 37.5 % of the ROI; ..."
    assert share == pytest.approx(expected, abs=0.03)
    assert "pixels outside it are not analysed" in notes[0]
    assert any("DEM covers" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# one run per output folder


def _wait_for_holder(lock: Path, proc: subprocess.Popen, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = lock.read_text().strip() if lock.exists() else ""
        if text.startswith("pid "):
            return text
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError(f"{lock} never named a holder")


def test_a_second_scan_into_a_busy_folder_is_refused_and_the_first_finishes(tmp_path, capsys, no_flow):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, scan(CATALOG, out))],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        holder = _wait_for_holder(out / LOCK, first)
        assert f"pid {first.pid} " in holder
        code, _, err = run_cli(scan(CATALOG, out), capsys)
        assert_refused(code, err, None, "another scan is writing into --out", f"pid {first.pid}",
                       "--wait")
        _, first_err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, first_err[-3000:]
    assert all((out / name).exists() for name in FINAL_NAMES)
    assert not (out / LOCK).exists()  # released cleanly: the run folder holds the outputs only


def test_wait_takes_the_folder_when_the_holder_is_done(tmp_path):
    lock = tmp_path / "run" / LOCK
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tasks.run.outputs import run_folder_lock\n"
        f"with run_folder_lock({str(tmp_path / 'run')!r}):\n"
        "    print('held', flush=True); time.sleep(1.5)\n")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusyError, match=f"pid {holder.pid} host"):
        with run_folder_lock(tmp_path / "run"):
            pass
    seen = []
    t0 = time.monotonic()
    with run_folder_lock(tmp_path / "run", wait=True, on_wait=seen.append):
        waited_s = time.monotonic() - t0
        assert lock.read_text().startswith(f"pid {os.getpid()} ")
    assert holder.wait(timeout=60) == 0
    assert waited_s > 1.0  # the holder kept it for 1.5 s after saying so
    assert len(seen) == 1 and f"pid {holder.pid}" in seen[0]


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_log_line(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK).write_text(f"pid {dead} host {socket.gethostname()} since 2026-12-04T00:00:00+00:00\n")
    with caplog.at_level(logging.WARNING), run_folder_lock(tmp_path / "run"):
        pass
    assert any(f"left by pid {dead}" in r.getMessage() and "no longer running" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# broken files: named with what is wrong, before any stage reads them


def test_a_truncated_band_is_named_as_truncated_up_front(tmp_path, capsys, no_flow):
    cut = tmp_path / "S2_post_B3_cut.tif"
    cut.write_bytes(POST_B3.read_bytes()[:1_000_000])  # an interrupted copy
    with rasterio.open(cut) as src:  # GDAL still opens it: only reading the pixels would fail
        assert src.shape == (970, 1533)
    out = tmp_path / "run"
    code, _, err = run_cli(scan(iburi_catalog(tmp_path, b3=cut), out), capsys)
    assert_refused(code, err, out, "band B03", str(cut), "looks truncated", "1000000 bytes")


def test_a_png_renamed_tif_is_named_as_png(tmp_path, capsys, no_flow):
    with rasterio.open(POST_B3) as src:
        data = src.read(1, window=rasterio.windows.Window(0, 0, 300, 200))
    fake = tmp_path / "S2_post_B3.tif"
    with rasterio.open(fake, "w", driver="PNG", width=300, height=200, count=1, dtype=data.dtype) as dst:
        dst.write(data, 1)
    out = tmp_path / "run"
    code, _, err = run_cli(scan(iburi_catalog(tmp_path, b3=fake), out), capsys)
    line = assert_refused(code, err, out, "band B03", str(fake), "is a PNG file", "not a GeoTIFF")
    assert "gdal_edit" not in line  # a fix that cannot work on a PNG


# ---------------------------------------------------------------------------------------------
# the machine says no: a full disk at the publish step, a file name too long


def test_a_full_disk_at_publish_is_one_line_and_a_rerun_resumes_to_the_clean_result(
        prefect_harness, tmp_path, capsys, monkeypatch):
    import tasks.run.steps

    clean, out = tmp_path / "clean", tmp_path / "run"
    assert main([str(a) for a in scan(CATALOG, clean)]) == 0

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    with monkeypatch.context() as patch:
        patch.setattr(tasks.run.steps, "write_manifest", disk_full)
        code = main([str(a) for a in scan(CATALOG, out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1, err
    assert "no space left on the device of --out" in lines[0] and "MB free now" in lines[0]
    assert "needs up to ~" in lines[0] and "it resumes" in lines[0]
    assert "Traceback" not in err and "INSERT" not in err
    assert not any((out / name).exists() for name in FINAL_NAMES)
    assert (out / ".work" / "plan.json").exists()  # what resume needs is kept

    assert main([str(a) for a in scan(CATALOG, out)]) == 0  # the same command, space freed
    assert "resuming the interrupted run" in capsys.readouterr().err
    for name in ("mask.tif", "probability.tif"):
        with rasterio.open(clean / name) as a, rasterio.open(out / name) as b:
            assert np.array_equal(a.read(), b.read()), name
    ref = gpd.read_file(clean / "landslides.gpkg", layer="landslides")
    got = gpd.read_file(out / "landslides.gpkg", layer="landslides")
    assert len(got) == len(ref) and got["area_m2"].sum() == pytest.approx(ref["area_m2"].sum())


def test_an_out_path_with_a_component_too_long_is_one_line(tmp_path, capsys, no_flow):
    out = tmp_path / ("x" * 300) / "run"
    code, _, err = run_cli(scan(CATALOG, out), capsys)
    assert_refused(code, err, None, "--out", "cannot be created or written", "File name too long")


# ---------------------------------------------------------------------------------------------
# catalog diagnostics


def _catalog_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cat.yaml"
    path.write_text(text)
    return path


def test_a_duplicate_catalog_key_is_refused_with_both_lines(tmp_path, capsys, no_flow):
    cat = _catalog_text(tmp_path, "version: 1\nsources:\n  s:\n    kind: local\n    dem: a.tif\n"
                                  "    dem: b.tif\n    scenes: []\nregions: {}\n")
    code, _, err = run_cli(["regions", "--catalog", cat], capsys)
    assert_refused(code, err, None, str(cat), "duplicate key 'dem'", "line 6", "first on line 5")


def test_a_yaml_syntax_error_gives_its_line(tmp_path, capsys, no_flow):
    cat = _catalog_text(tmp_path, "version: 1\nsources:\n  s:\n    kind: local\n     scenes: []\n")
    code, _, err = run_cli(["regions", "--catalog", cat], capsys)
    assert_refused(code, err, None, str(cat), "not valid YAML", "line 5, column")


def test_a_misspelled_key_is_named_before_the_required_key_it_hides(tmp_path, capsys, no_flow):
    cat = _catalog_text(tmp_path, "version: 1\nsources:\n  s:\n    kind: local\n    scenes: []\n"
                                  "regions:\n  r:\n    sorce: s\n    bbox: [141.9, 42.7, 142.0, 42.75]\n")
    code, _, err = run_cli(["regions", "--catalog", cat], capsys)
    line = assert_refused(code, err, None, "unknown key 'regions.r.sorce'", "did you mean 'source'?",
                          "more problem")
    assert "Field required" not in line


# ---------------------------------------------------------------------------------------------
# DEM holes written as numbers without a nodata tag


def _holed_dem(path: Path, tag_nodata: bool) -> tuple[Path, int]:
    """The sample DEM with two -9999 holes inside the test ROI; tagged as nodata, or not."""
    with rasterio.open(DEM) as src:
        data, profile = src.read(1), src.profile.copy()
        row, col = src.index(BBOX[0] + 0.006, BBOX[3] - 0.005)
    data[row:row + 8, col:col + 10] = -9999
    data[row + 20:row + 25, col + 20:col + 40] = -9999
    profile.update(nodata=-9999 if tag_nodata else None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path, 8 * 10 + 5 * 20


def test_untagged_dem_holes_are_nodata_with_a_counted_warning(prefect_harness, tmp_path, capsys, caplog):
    untagged, n_holes = _holed_dem(tmp_path / "dem_untagged.tif", tag_nodata=False)
    tagged, _ = _holed_dem(tmp_path / "dem_tagged.tif", tag_nodata=True)
    with rasterio.open(untagged) as src:
        assert src.nodata is None
    runs = {}
    for name, dem in (("untagged", untagged), ("tagged", tagged)):
        cat_dir = tmp_path / name
        cat_dir.mkdir()
        runs[name] = cat_dir / "run"
        with caplog.at_level(logging.WARNING):
            assert main([str(a) for a in scan(iburi_catalog(cat_dir, dem=dem), runs[name])]) == 0
    warnings = [r.getMessage() for r in caplog.records if "impossible elevations" in r.getMessage()]
    assert len(warnings) == 1 and f": {n_holes} pixels" in warnings[0] and "-9999" in warnings[0]
    # the holes are nodata exactly as if the file had said so: same mask, same polygons
    for out_name in ("mask.tif", "probability.tif"):
        with rasterio.open(runs["untagged"] / out_name) as a, rasterio.open(runs["tagged"] / out_name) as b:
            assert np.array_equal(a.read(), b.read()), out_name
    with rasterio.open(runs["untagged"] / "mask.tif") as src:
        assert (src.read(1) == 255).sum() > 0  # the holes were not analysed
    a = gpd.read_file(runs["untagged"] / "landslides.gpkg", layer="landslides")
    b = gpd.read_file(runs["tagged"] / "landslides.gpkg", layer="landslides")
    assert len(a) == len(b) and a["area_m2"].sum() == pytest.approx(b["area_m2"].sum())
    assert a["mean_elev_m"].min() > -500


# ---------------------------------------------------------------------------------------------
# an AOI across the antimeridian


def test_an_aoi_across_the_antimeridian_is_refused_not_read_round_the_globe(tmp_path, capsys, no_flow):
    aoi = tmp_path / "fiji.geojson"
    ring = [[179.8, -17.0], [-179.9, -17.0], [-179.9, -16.8], [179.8, -16.8], [179.8, -17.0]]
    aoi.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": {"type": "Polygon", "coordinates": [ring]}}))
    out = tmp_path / "run"
    code, _, err = run_cli(["scan", "--catalog", CATALOG, "--region", "iburi-2018", "--aoi", aoi,
                            "--detector", "index", "--out", out, "--no-progress"], capsys)
    assert_refused(code, err, out, str(aoi), "crosses the antimeridian", "lon 179.8 to -179.9",
                   "split it at 180 degrees")


def test_an_aoi_with_parts_on_both_sides_of_the_antimeridian_is_refused(tmp_path, capsys, no_flow):
    aoi = tmp_path / "fiji_split.geojson"
    east = [[179.8, -17.0], [180.0, -17.0], [180.0, -16.8], [179.8, -16.8], [179.8, -17.0]]
    west = [[-180.0, -17.0], [-179.9, -17.0], [-179.9, -16.8], [-180.0, -16.8], [-180.0, -17.0]]
    aoi.write_text(json.dumps({"type": "MultiPolygon", "coordinates": [[east], [west]]}))
    out = tmp_path / "run"
    code, _, err = run_cli(["scan", "--catalog", CATALOG, "--region", "iburi-2018", "--aoi", aoi,
                            "--detector", "index", "--out", out, "--no-progress"], capsys)
    assert_refused(code, err, out, str(aoi), "both sides of the antimeridian", "each side")


def test_a_relative_pickle_checkpoint_is_named_as_a_pickle_not_looked_up_as_shipped(
        tmp_path, capsys, no_flow, monkeypatch):
    import torch

    torch.save({"w": torch.zeros(3)}, tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["scan", "--catalog", CATALOG, "--region", "iburi-2018", "--checkpoint",
                            "model.pt", "--out", tmp_path / "run", "--no-progress"], capsys)
    line = assert_refused(code, err, tmp_path / "run", str(tmp_path / "model.pt"), "PyTorch pickle",
                          "safetensors")
    assert "models/checkpoints" not in line


# ---------------------------------------------------------------------------------------------
# Ctrl-C at several stages, and what kill -9 leaves behind


def _start_scan(out: Path, orchestration: str = "prefect") -> subprocess.Popen:
    """``landslide scan`` in its own process group (as a terminal runs it), stderr into stdout."""
    argv = scan(CATALOG, out, "--orchestration", orchestration)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, argv)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _read_until(proc: subprocess.Popen, marker: str, timeout_s: float = 300.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the scan ended before {marker!r}:\n" + "".join(lines[-30:]))
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} within {timeout_s} s")


def _group(pgid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter() if _safe_pgid(p.pid) == pgid]


def _running_in_group(pgid: int, wait_s: float) -> list[int]:
    """The group's processes still running (zombies waiting for init to collect them are not)
    after up to ``wait_s`` for them to go."""
    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        running = []
        for pid in _group(pgid):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    running.append(pid)
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.2)


def _describe(pids: list[int]) -> list[str]:
    import psutil

    described = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            described.append(f"{pid} {proc.status()} ppid {proc.ppid()}: {' '.join(proc.cmdline())[:200]}")
        except psutil.Error as exc:
            described.append(f"{pid} ({type(exc).__name__})")
    return described


def _safe_pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.fixture(scope="module")
def clean_index_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "run"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *map(str, scan(CATALOG, out))], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("orchestration, stage", [
    ("prefect", "Task run 'plan"), ("prefect", "Task run 'align"), ("prefect", "Task run 'infer"),
    # in-process (no Prefect server): while planning, and once aligning has finished
    ("in-process", "loading the detector and planning"), ("in-process", "aligned:")])
def test_ctrl_c_stops_everything_in_seconds_and_a_rerun_resumes_to_the_clean_result(
        tmp_path, orchestration, stage, clean_index_run):
    out = tmp_path / "run"
    proc = _start_scan(out, orchestration)
    try:
        seen = _read_until(proc, stage)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        rest, _ = proc.communicate(timeout=60)
        took_s = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(seen) + rest
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in text, text[-3000:]
    assert took_s < 15, f"{took_s:.1f} s to stop"
    left = _running_in_group(proc.pid, wait_s=5.0)
    assert left == [], f"processes of the interrupted scan are still running: {_describe(left)}"
    if all((out / name).exists() for name in FINAL_NAMES):  # it finished before the signal came
        assert "interrupted after the run was published" in text
    else:
        assert proc.returncode == 130 and len(errors) == 1, text[-3000:]
        assert "interrupted; nothing was published" in errors[0] and "run the same command" in errors[0]
        assert not any((out / name).exists() for name in FINAL_NAMES) and not (out / ".staging").exists()
        assert not (out / LOCK).exists()
        again = subprocess.run([sys.executable, "-m", "flows.cli", *map(str, scan(CATALOG, out))],
                               cwd=REPO, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
    for name in ("mask.tif", "probability.tif"):
        with rasterio.open(clean_index_run / name) as a, rasterio.open(out / name) as b:
            assert np.array_equal(a.read(), b.read()), name


def test_the_server_of_a_scan_killed_with_kill_9_is_stopped_by_the_next_scan(tmp_path):
    import psutil

    from flows.interrupts import reap_orphaned_servers

    proc = _start_scan(tmp_path / "run", "prefect")
    try:
        _read_until(proc, "Beginning flow run")
        server = [c for c in psutil.Process(proc.pid).children(recursive=True) if "uvicorn" in " ".join(c.cmdline())]
        assert server, "no Prefect server child found"
        proc.kill()  # kill -9: the CLI cannot clean up
        proc.wait(timeout=30)
        time.sleep(0.5)
        assert server[0].is_running() and server[0].status() != psutil.STATUS_ZOMBIE  # the orphan
        assert reap_orphaned_servers() >= 1
        psutil.wait_procs(server, timeout=10)
        assert not server[0].is_running() or server[0].status() == psutil.STATUS_ZOMBIE
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("found_by", ["plan", "align"])
def test_a_band_damaged_in_the_middle_is_one_line_naming_the_file(prefect_harness, tmp_path, capsys,
                                                                   monkeypatch, found_by):
    """A block in the middle of the file is garbage: the first/last-block check passes; the read of
    the layer over the ROI while planning finds it, and should that miss it, aligning reports it
    (``align``: the planning read is switched off) - one line either way, not a GDAL traceback."""
    if found_by == "align":
        import tasks.sources.coverage

        monkeypatch.setattr(tasks.sources.coverage, "layer_has_data", lambda *args, **kwargs: True)
    data = bytearray(POST_B3.read_bytes())
    with rasterio.open(POST_B3) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_2", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_2_2", "TIFF", bidx=1))
    data[offset:offset + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    bad = tmp_path / "S2_post_B3_damaged.tif"
    bad.write_bytes(bytes(data))
    out = tmp_path / "run"
    code = main(["scan", "--catalog", str(iburi_catalog(tmp_path, b3=bad)), "--region", "iburi-2018",
                 "--bbox", "141.93,42.70,141.965,42.73", "--detector", "index", "--out", str(out),
                 "--no-progress"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, errors
    expected = ("band B03" if found_by == "plan" else "reading the input rasters failed while aligning")
    assert expected in errors[0] and str(bad) in errors[0] and "damaged" in errors[0]
    assert not any((out / name).exists() for name in FINAL_NAMES)


# ---------------------------------------------------------------------------------------------
# AOI formats (issue 21): any vector format, any declared CRS


SERRA = SHARED / "serra_do_mar_relict_landslide_polygons" / "Cicatrizes_nova_area_inteira_CRS32723.geojson"


def test_aois_in_geopackage_shapefile_and_projected_geojson_are_read_in_lon_lat(tmp_path):
    frame = gpd.read_file(SERRA)
    assert frame.crs.to_epsg() == 32723 and len(frame) == 276
    expected = frame.to_crs("EPSG:4326").geometry.union_all()
    frame.to_file(tmp_path / "scars.gpkg", layer="scars")
    frame.iloc[:10].to_file(tmp_path / "scars.gpkg", layer="first_ten")
    frame.to_file(tmp_path / "scars.shp")
    for spec in (SERRA, f"{tmp_path / 'scars.gpkg'}:scars", tmp_path / "scars.shp",
                 tmp_path / "scars.gpkg"):  # no layer: the first one
        aoi = read_aoi(spec)
        assert aoi.symmetric_difference(expected).area < 1e-6 * expected.area, spec
        assert -45.6 < aoi.bounds[0] < aoi.bounds[2] < -45.3 and -23.8 < aoi.bounds[1] < -23.5
    assert read_aoi(f"{tmp_path / 'scars.gpkg'}:first_ten").area < expected.area / 5


def test_aoi_mistakes_are_one_line(tmp_path, capsys, no_flow):
    gpd.read_file(SERRA).to_file(tmp_path / "scars.gpkg", layer="scars")
    out = tmp_path / "run"
    code, _, err = run_cli(["scan", "--catalog", CATALOG, "--region", "iburi-2018", "--aoi",
                            f"{tmp_path / 'scars.gpkg'}:roads", "--out", out, "--no-progress"], capsys)
    assert_refused(code, err, out, "has no layer 'roads'", "its layers: scars")
    # read in lon/lat correctly, it lies in Brazil: outside the Iburi data, said so
    code, _, err = run_cli(["scan", "--catalog", CATALOG, "--region", "iburi-2018", "--aoi",
                            SERRA, "--out", out, "--no-progress"], capsys)
    assert_refused(code, err, out, "the ROI does not intersect the data")
    frame = gpd.read_file(SERRA).iloc[:3]
    frame.to_file(tmp_path / "noprj.shp")
    (tmp_path / "noprj.prj").unlink()
    code, _, err = run_cli(["scan", "--catalog", CATALOG, "--region", "iburi-2018", "--aoi",
                            tmp_path / "noprj.shp", "--out", out, "--no-progress"], capsys)
    assert_refused(code, err, out, "declares no CRS")
