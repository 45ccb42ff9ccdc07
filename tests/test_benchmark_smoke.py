"""The scan benchmark runs end to end on a tiny ROI and reports consistent numbers (no timing bars)."""

from __future__ import annotations

import json
import math

from benchmarks.scan import STAGES, main

TINY_BBOX = "141.95,42.72,141.965,42.735"  # ~1.2 x 1.7 km in the iburi-2018 region, 2 patches


def test_benchmark_reports_consistent_numbers(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["--bbox", TINY_BBOX, "--repeat", "1", "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)

    for key in ("detector", "machine", "grid", "stages_s", "stages_s_all", "inference", "ratios",
                "per_run", "counts"):
        assert key in report, key
    assert report["detector"]["kind"] in ("model", "index")
    assert report["detector"]["choice"]  # says whether the shipped model or the rule was used

    stages = report["stages_s"]
    assert set(stages) == {*STAGES, "total"}
    assert all(stages[s] > 0 for s in stages)
    # rasters runs beside vectorize (as in the flow): the sequential part plus the longer of the two
    sequential = sum(stages[s] for s in STAGES if s not in ("vectorize", "rasters"))
    assert sequential + max(stages["vectorize"], stages["rasters"]) <= stages["total"] * 1.001 + 1e-6
    assert sum(stages[s] for s in STAGES) >= stages["total"] * 0.999  # nothing untimed
    assert all(len(v) == 1 for v in report["stages_s_all"].values())

    inf = report["inference"]
    assert inf["patches"] > 0
    assert inf["model_forward_s"] > 0 and inf["pure_forward_s"] > 0
    assert inf["model_forward_s"] <= stages["inference"]
    assert math.isclose(inf["patches_per_s_end_to_end"], inf["patches"] / stages["total"])
    assert inf["patches_per_s_model_alone"] > 0

    ratios = report["ratios"]
    assert ratios["overhead_ratio"] >= ratios["inference_overhead_ratio"] >= 1.0
    assert ratios["forward_vs_pure_ratio"] > 0

    grid, machine = report["grid"], report["machine"]
    assert grid["width_px"] > 0 and grid["height_px"] > 0 and 0 < grid["valid_fraction"] <= 1
    assert math.isclose(grid["km2"], grid["pixels"] * grid["res_m"] ** 2 / 1e6)
    assert machine["torch_threads"] >= 1 and machine["cpu_count"] >= 1 and machine["torch_version"]
    assert (out / "run1" / "landslides.gpkg").is_file()  # --out keeps the run folders
