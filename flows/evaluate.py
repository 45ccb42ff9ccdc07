"""Evaluation as a Prefect flow (wiring only): compare detectors on a labelled dataset."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from models.evaluate import compare_detectors, write_report

compare_task = task(compare_detectors, name="compare")
report_task = task(write_report, name="write-report")


@flow(name="landslide-compare", log_prints=True)
def compare_flow(specs: list[str], data_dir: str, out_dir: str, calibrate_dir: str | None = None,
                 title: str = "Detector comparison") -> dict:
    """Score every detector on ``data_dir`` and write compare.md / compare.csv / compare.png."""
    rows = compare_task(specs, data_dir, calibrate_dir)
    paths = report_task(rows, out_dir, title)
    get_run_logger().info("comparison of %d detectors -> %s", len(rows), out_dir)
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}}
