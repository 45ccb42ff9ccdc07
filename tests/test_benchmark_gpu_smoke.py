"""benchmarks/gpu.py: a clear one-line refusal without CUDA, and a CPU dry run whose report is
complete and self-consistent (no timing thresholds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import gpu

SMALL = "iburi2018-weak-unet-mobilenet_v2"
BBOX = "141.95,42.72,141.956,42.726"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run")
def test_without_cuda_it_exits_with_one_line(capsys):
    assert gpu.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: benchmarks/gpu.py needs a CUDA GPU") and "\n" not in err


def test_cpu_dry_run_report(capsys):
    code = gpu.main(["--device", "cpu", "--detector", SMALL, "--patches", "4", "--tile-px", "200",
                     "--bbox", BBOX, "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["device"] == "cpu" and r["gpu"] is None
    assert r["precision"] == "float32" and r["batch_size"] == 16 and r["prefetch_batches"] == 0
    assert r["queue_speedup"] > 0
    tol = r["tolerance_on_sample"]
    assert tol["ok"] and tol["max_abs_prob"] == 0.0 and tol["n_px"] > 0  # float32 against itself
    for run in (r["loop"], r["loop_without_queue"], r["tile"]):
        assert run["patches"] > 0 and run["forward_passes"] % 16 == 0
        assert run["forward_passes"] >= run["patches"]
        assert 0 < run["forward_share"] <= 1 and run["patches_per_s"] > 0
    assert r["loop"]["patches"] >= 4 and r["tile"]["area_px"] == [200, 200]
    assert r["loop"]["patches"] == r["loop_without_queue"]["patches"]
    assert gpu.side_for(4, 128, 32) == 224 and gpu.side_for(1, 128, 32) == 128


def test_a_saved_scene_is_read_back_and_checked_against_the_detector(tmp_path, capsys):
    """--save-scene aligns the sample once (for a GPU machine without the raster stack); --scene
    reads it back, and refuses a detector that reads other bands."""
    path = tmp_path / "scene.npz"
    assert gpu.main(["--save-scene", str(path), "--bbox", BBOX]) == 0
    saved = json.loads(capsys.readouterr().out)
    image, valid, bbox = gpu.load_scene(path, saved["bands"])
    assert image.shape == (14, *saved["area_px"]) and image.dtype == np.float32
    assert saved["channels"][12:] == ["SLOPE", "DEM"]
    assert valid.shape == tuple(saved["area_px"]) and valid.any() and bbox == tuple(saved["bbox"])
    used = [saved["channels"].index(b) for b in saved["bands"]]
    assert np.isfinite(image[used][:, valid]).all()
    # the free network (a 1x1 convolution, nothing detected): the host side's ceiling
    assert gpu.main(["--device", "cpu", "--scene", str(path), "--free-network", "--patches", "4",
                     "--tile-px", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["free_network"] and r["loop"]["patches"] >= 4 and r["tile"] is None
    assert r["read_ahead_same_bits"] and r["tolerance_on_sample"]["max_abs_prob"] == 0.0
    assert gpu.main(["--device", "cpu", "--detector", "index", "--scene", str(path), "--patches", "4",
                     "--tile-px", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "aligned for the bands B02,B03,B04,SLOPE,DEM, the detector reads B02,B03,B04,SLOPE " in err
