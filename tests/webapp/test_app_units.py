"""The web app's plain-Python parts: the map's data (tasks/run/view.py), scan jobs, uploads and
band-file stacking. The browser tests drive the same parts through the page."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tasks.core.errors import InputError
from tasks.raster.vrt import band_names_from_filenames, stack_band_files
from tasks.run.view import (
    bbox_text,
    canvas_to_lonlat,
    fit_view,
    list_runs,
    lonlat_to_canvas,
    pick_grid,
    prob_class_colour,
    probability_rgba,
    read_run_view,
    span_bbox,
    zip_run,
)
from tasks.vector.styles import PROB_CLASSES
from webapp import uploads
from webapp.jobs import JobStore, error_of, progress_of, stage_of

REPO = Path(__file__).resolve().parents[2]


def test_fit_view_shows_the_bounds_and_inverts_to_them():
    bounds = (141.95, 42.70, 141.98, 42.72)
    view = fit_view(bounds, 640, 560, margin=0.05)
    # the bounds' corners land inside the canvas, and one pair of edges touches the margin
    xs, ys = np.meshgrid(np.arange(640) + 0.5, np.arange(560) + 0.5)
    lon, lat = canvas_to_lonlat(xs, ys, view, 640, 560)
    assert lon.min() < bounds[0] < bounds[2] < lon.max()
    assert lat.min() < bounds[1] < bounds[3] < lat.max()
    span_x = (bounds[2] - bounds[0]) / (lon.max() - lon.min())
    span_y = (bounds[3] - bounds[1]) / (lat.max() - lat.min())
    assert max(span_x, span_y) == pytest.approx(0.9, abs=0.01)
    # the canvas centre is the view's centre
    c_lon, c_lat = canvas_to_lonlat(np.array([320.0]), np.array([280.0]), view, 640, 560)
    assert c_lon[0] == pytest.approx(view["longitude"], abs=1e-9)
    assert c_lat[0] == pytest.approx(view["latitude"], abs=1e-9)
    # and back
    x, y = lonlat_to_canvas(lon[::37, ::41], lat[::37, ::41], view, 640, 560)
    np.testing.assert_allclose(x, xs[::37, ::41], atol=1e-6)
    np.testing.assert_allclose(y, ys[::37, ::41], atol=1e-6)


def test_pick_grid_and_span():
    grid = pick_grid((141.8903, 42.6824, 142.0280, 42.7695), cells_across=24)
    cells = grid["features"]
    assert 24 * 10 < len(cells) <= 24 * 24
    first, last = cells[0]["properties"]["bbox"], cells[-1]["properties"]["bbox"]
    assert first[0] == pytest.approx(141.8903) and first[3] == pytest.approx(42.7695)
    assert last[2] == pytest.approx(142.0280) and last[1] == pytest.approx(42.6824)
    assert span_bbox(last, first) == pytest.approx((141.8903, 42.6824, 142.0280, 42.7695))
    assert bbox_text((141.95, 42.7, 141.98, 42.72)) == "141.95,42.7,141.98,42.72"


def test_probability_colours_follow_the_qgis_ramp():
    values = np.array([[0, 51, 127], [254, 255, 203]], dtype=np.uint8)
    rgba = probability_rgba(values)
    assert rgba.shape == (2, 3, 4) and rgba.dtype == np.uint8
    assert rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 0  # p <= 0.2 transparent
    assert rgba[1, 1].tolist() == [0, 0, 0, 0]  # not analysed
    assert rgba[1, 0].tolist() == [189, 0, 38, 170]  # p = 1
    assert 0 < rgba[0, 2, 3] < rgba[1, 2, 3] < 170  # alpha grows with p
    assert prob_class_colour(0.9) == (PROB_CLASSES[-1].fill, PROB_CLASSES[-1].outline)
    assert prob_class_colour(0.6)[0] == PROB_CLASSES[1].fill
    assert prob_class_colour(float("nan"))[0] == PROB_CLASSES[0].fill


def test_run_view_of_a_real_run(iburi_run, tmp_path):
    view = read_run_view(iburi_run)
    geojson = view.polygons_geojson()
    assert len(geojson["features"]) == len(view.polygons) > 0
    first = geojson["features"][0]["properties"]
    assert first["fill"] == list(prob_class_colour(first["mean_prob"])[0])
    west, south, east, north = view.bounds_lonlat
    lon, lat = np.array(view.corners_lonlat).T
    assert west == lon.min() and north == lat.max() and 141 < west < east < 143
    assert view.quicklook_png.startswith(b"\x89PNG") and view.probability_png.startswith(b"\x89PNG")
    assert view.summary["polygons"] == len(view.polygons)
    # every polygon lies inside the grid's corners
    minx, miny, maxx, maxy = view.polygons.total_bounds
    assert west <= minx and maxx <= east and south <= miny and maxy <= north
    # the zip holds the published files, not the hidden ones
    import io
    import zipfile  # noqa: E401

    names = zipfile.ZipFile(io.BytesIO(zip_run(iburi_run))).namelist()
    assert f"{iburi_run.name}/landslides.gpkg" in names and f"{iburi_run.name}/manifest.json" in names
    assert not any("/." in n for n in names)
    with pytest.raises(InputError, match="holds no finished run"):
        read_run_view(tmp_path)


def test_list_runs_skips_unfinished_folders(iburi_run, tmp_path):
    import shutil

    shutil.copytree(iburi_run, tmp_path / "done")
    (tmp_path / "in-progress" / ".staging").mkdir(parents=True)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    runs = list_runs(tmp_path)
    assert [r.path.name for r in runs] == ["done"]
    manifest = json.loads((iburi_run / "manifest.json").read_text())
    assert runs[0].run_id == manifest["run_id"] and runs[0].polygons == manifest["counts"]["polygons"]
    assert list_runs(tmp_path / "missing") == []


def test_job_log_parsing():
    log = ["scan 20261204T0-abc: region iburi-2018 -> runs/x (in-process; loading the detector and planning)",
           "07:34:15 | INFO | tasks.raster.terrain - slope ...",
           "align:   0%|          | 0/1", "align: 100%|##########| 1/1",
           "blocks:  50%|#####     | 1/2 [00:01<00:01]"]
    assert stage_of(log[:1]) == "loading the detector and planning"
    assert stage_of(log) == "segmenting"
    assert progress_of(log) == ("blocks", 50)
    assert error_of(log) is None
    assert error_of(log + ["error: no scene of source x in 2018-01-01..2018-02-01"]) == \
        "no scene of source x in 2018-01-01..2018-02-01"


def test_job_runs_the_cli_and_reports_its_error(tmp_path):
    """A job is the CLI in a child process: a refused scan ends failed with the CLI's own line."""
    store = JobStore(tmp_path / "jobs", python=sys.executable)
    job = store.start(["--region", "no-such-region", "--catalog", str(REPO / "data_catalog.yaml")],
                      tmp_path / "out")
    deadline = time.time() + 60
    while store.state(job).status == "running" and time.time() < deadline:
        time.sleep(0.2)
    state = store.state(job)
    assert state.status == "failed"
    assert state.error.startswith("unknown region 'no-such-region'")
    assert store.jobs() == [job]
    assert not (tmp_path / "out").exists()


def test_upload_names_cannot_escape_the_session_folder(tmp_path):
    assert uploads.safe_name("../../etc/passwd") == "passwd"
    assert uploads.safe_name("..\\..\\x.tif") == "x.tif"
    assert uploads.safe_name("a b;rm -rf.tif") == "a_b_rm_-rf.tif"
    assert uploads.safe_name(".hidden.tif") == "hidden.tif"
    assert len(uploads.safe_name("x" * 500 + ".tif")) <= uploads.MAX_NAME_CHARS
    with pytest.raises(uploads.UploadError):
        uploads.safe_name("../..")
    folder = uploads.session_folder(tmp_path, "../../evil")
    assert folder.parent == tmp_path
    path = uploads.save_upload(folder, "../up.tif", b"data", 10, uploads.RASTER_SUFFIXES)
    assert path == folder / "up.tif" and path.read_bytes() == b"data"
    with pytest.raises(uploads.UploadError, match="limit is"):
        uploads.save_upload(folder, "big.tif", b"x" * 11, 10, uploads.RASTER_SUFFIXES)
    with pytest.raises(uploads.UploadError, match="expected a file ending in"):
        uploads.save_upload(folder, "x.exe", b"x", 10, uploads.RASTER_SUFFIXES)
    with pytest.raises(uploads.UploadError, match="not a raster GDAL can read"):
        uploads.check_raster(path)


def test_old_upload_sessions_are_pruned(tmp_path):
    import os

    old, fresh = uploads.session_folder(tmp_path, "old"), uploads.session_folder(tmp_path, "fresh")
    for folder in (old, fresh):
        (folder / "x.tif").write_bytes(b"x")
    now = time.time()
    for p in (old, old / "x.tif"):
        os.utime(p, (now - 3 * 86400, now - 3 * 86400))
    assert uploads.prune_sessions(tmp_path, now=now) == [old]
    assert not old.exists() and (fresh / "x.tif").exists()


def test_band_files_stack_into_one_image(tmp_path):
    post = REPO / "data" / "iburi_2018" / "s2_post"
    files = [post / f"S2_post_B{k}.tif" for k in (2, 3, 4)]
    assert band_names_from_filenames([f.name for f in files]) == ["B02", "B03", "B04"]
    assert band_names_from_filenames(["T54_B8A_20m.jp2", "dem.tif", "B02_B03.tif", "x_b11_20m.jp2"]) == \
        [None, None, None, "B11"]
    vrt = stack_band_files(files, ["B2", "B03", "b4"], tmp_path / "bands.vrt")
    with rasterio.open(vrt) as stack, rasterio.open(files[1]) as b3:
        assert stack.count == 3 and stack.descriptions == ("B02", "B03", "B04")
        assert stack.crs == b3.crs and stack.transform == b3.transform
        np.testing.assert_array_equal(stack.read(2), b3.read(1))
    with pytest.raises(InputError, match="3 band files but 2 band names"):
        stack_band_files(files, ["B02", "B03"], tmp_path / "x.vrt")
    with pytest.raises(InputError, match="unknown band 'NIR'"):
        stack_band_files(files, ["B02", "B03", "NIR"], tmp_path / "x.vrt")
    with pytest.raises(InputError, match="'DEM' is not a Sentinel-2 band"):
        stack_band_files(files, ["B02", "B03", "DEM"], tmp_path / "x.vrt")
    with pytest.raises(InputError, match="named twice"):
        stack_band_files(files, ["B02", "B02", "B04"], tmp_path / "x.vrt")


def test_app_command_refuses_bad_options(capsys):
    from flows.cli import main

    assert main(["app", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --port must be 1..65535, got 0"
    assert main(["app", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be >= 1" in capsys.readouterr().err
