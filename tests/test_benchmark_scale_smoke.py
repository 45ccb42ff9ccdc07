"""The scale benchmark's per-size run works on a tiny mirrored scene and its numbers hold together
(no timing bars: speed is reported as ratios in one run, benchmarks/README.md)."""

from __future__ import annotations

import math

import numpy as np
import rasterio

from benchmarks.scale import one_size, peak_rss_mb

SIZE_PX = 300  # 3 x 3 km of mirrored T18SVG: 16 patches, one block


def test_scale_run_and_naive_baseline_agree(tmp_path):
    run = one_size(SIZE_PX, tmp_path, naive=False, dask_workers=0, block_px=2048)
    naive = one_size(SIZE_PX, tmp_path, naive=True, dask_workers=0, block_px=2048)

    assert run["mode"] == "process" and naive["mode"] == "naive"
    assert math.isclose(run["area_km2"], 9.0, rel_tol=0.05)
    stages = ("plan_s", "align_s", "inference_s", "clean_s", "outputs_s")
    assert all(run[s] > 0 for s in (*stages, "vectorize_s", "rasters_s"))
    assert sum(run[s] for s in stages) <= run["total_s"] * 1.001
    # vectorize and the COGs run side by side inside the outputs stage
    assert max(run["vectorize_s"], run["rasters_s"]) <= run["outputs_s"] * 1.001
    assert 0 < run["model_forward_s"] <= run["inference_s"]
    assert run["forward_passes"] >= run["patches"] > 0
    assert run["pure_forward_patches_per_s"] > 0 and "pure_forward_patches_per_s" not in naive
    assert run["pure_forward_cpu_s_per_patch"] > 0
    cpu = run["stage_cpu_s"]  # CPU seconds per stage, all threads
    assert set(cpu) == {"plan", "align", "inference", "clean", "outputs"}
    assert all(v >= 0 for v in cpu.values()) and cpu["inference"] > 0
    assert math.isclose(run["s_per_km2"], run["total_s"] / run["area_km2"])
    assert run["peak_rss_mb"] > 0

    # the baseline predicts the same scene in one piece: the same probabilities, bit for bit, then
    # the same cleaning and outputs
    rasters = []
    for mode in ("process", "naive"):
        with rasterio.open(tmp_path / f"run_{SIZE_PX}_{mode}" / ".work" / "prob.tif") as src:
            rasters.append(src.read(1))
    assert rasters[0].tobytes() == rasters[1].tobytes() and np.isfinite(rasters[0]).any()
    assert naive["polygons"] == run["polygons"] and naive["outputs_s"] > 0


def test_peak_rss_is_this_process_not_the_parent(tmp_path):
    # ru_maxrss is inherited through fork + exec on Linux; VmHWM is not
    import subprocess
    import sys

    ballast = np.ones(2**27)  # 1 GiB in this (parent) process
    out = subprocess.run([sys.executable, "-c", "from benchmarks.scale import peak_rss_mb; print(peak_rss_mb())"],
                         capture_output=True, text=True, check=True)
    assert float(out.stdout) < 0.5 * ballast.nbytes / 2**20
    assert peak_rss_mb() >= ballast.nbytes / 2**20


def test_free_network_run_and_non_network_cpu(tmp_path):
    """The free network (a 1x1 convolution, zero weights) detects nothing and costs next to nothing;
    the non-network CPU per 1,000 km2 scales each stage and takes the network's CPU off inference."""
    from benchmarks.scale import non_network_cpu

    free = one_size(SIZE_PX, tmp_path, naive=False, dask_workers=0, block_px=2048, free_network=True)
    assert free["free_network"] and free["polygons"] == 0 and free["patches"] > 0
    assert free["model_forward_s"] < free["inference_s"]
    cpu = non_network_cpu(free)
    assert math.isclose(cpu["align"], free["stage_cpu_s"]["align"] * 1000 / free["area_km2"])
    assert math.isclose(cpu["total"], sum(v for k, v in cpu.items() if k != "total"))
    real = {"area_km2": 500.0, "stage_cpu_s": {"align": 2.0, "inference": 10.0},
            "pure_forward_cpu_s_per_patch": 0.01, "forward_passes": 600}
    assert non_network_cpu(real) == {"align": 4.0, "inference": 8.0, "total": 12.0}


def test_non_network_cpu_with_detections_takes_clean_and_outputs_from_the_detecting_run():
    """The free network detects nothing: the figure with detections keeps its plan, align and
    inference and takes clean and outputs (polygons built and written) from the detecting run."""
    from benchmarks.scale import with_detections

    free = {"plan": 0.3, "align": 8.0, "inference": 1.7, "clean": 0.4, "outputs": 0.8, "total": 11.2}
    detecting = {"plan": 0.6, "align": 9.0, "inference": 8.2, "clean": 0.5, "outputs": 4.0, "total": 22.3}
    out = with_detections(free, detecting)
    assert out == {"plan": 0.3, "align": 8.0, "inference": 1.7, "clean": 0.5, "outputs": 4.0,
                   "total": out["total"]}
    assert math.isclose(out["total"], 14.5)
