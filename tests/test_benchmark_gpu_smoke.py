"""benchmarks/gpu.py: a clear one-line refusal without CUDA, and a CPU dry run whose report is
complete and self-consistent (no timing thresholds)."""

from __future__ import annotations

import json

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
