"""The ROI scan as a Prefect flow: wiring only, paths between tasks.

The step sequence is ``tasks.run.pipeline.run_scan_steps`` (written once); here each step is a
Prefect task of the ``landslide-scan`` flow. Deployments and users with a Prefect server run this;
a one-off CLI scan without a server runs the same sequence in-process
(``tasks.run.pipeline.scan_in_process``).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.context import get_run_context
from prefect.settings import PREFECT_API_URL

from flows.logs import quiet_user_error_tracebacks
from flows.warm import warm_process_record
from tasks.run import steps
from tasks.run.outputs import run_folder_lock
from tasks.run.pipeline import prepare_request, run_scan_steps

quiet_user_error_tracebacks()  # Prefect configured logging on import

_TASKS = {step: task(step, name=name) for step, name in (
    (steps.step_plan, "plan"), (steps.step_stack, "align"), (steps.step_infer, "infer"),
    (steps.step_clean, "clean"), (steps.step_vectorize, "vectorize"),
    (steps.step_rasters, "write-rasters"), (steps.step_finish, "finish"))}


class PrefectSteps:
    """Each step a Prefect task of the running flow (tasks.run.pipeline.StepRunner)."""

    def __init__(self) -> None:
        self.log = get_run_logger()

    def call(self, step, *args):
        return _TASKS[step](*args)

    def submit(self, step, *args):
        return _TASKS[step].submit(*args)

    def wait(self, future) -> None:
        future.wait()

    def describe(self) -> dict:
        ctx = get_run_context()
        return {"orchestration": "prefect", "flow_run_id": str(ctx.flow_run.id),
                "flow_run_name": ctx.flow_run.name, "api_url": PREFECT_API_URL.value() or None,
                "warm_process": warm_process_record()}


@flow(name="landslide-scan", log_prints=False, validate_parameters=True)
def scan_flow(out: str = "runs/{run_id}", region: str | None = None, bbox: list[float] | None = None,
              aoi: str | None = None, start: str | None = None, end: str | None = None,
              detector: str | None = None, options: dict[str, Any] | None = None) -> dict:
    """Scan one ROI and write a run folder with ``landslides.gpkg``, COGs and ``manifest.json``.

    Args:
        out: run folder; ``{run_id}`` is replaced by the run id (scheduled runs use that).
        region: a region of data_catalog.yaml.
        bbox: [minx, miny, maxx, maxy] in EPSG:4326, restricting (or with ``options.source``
            defining) the ROI.
        aoi: a polygon file (GeoJSON, GeoPackage ``file.gpkg:layer``, shapefile; any declared CRS).
        start, end: ISO dates selecting scenes.
        detector: checkpoint name/path, ``index`` for the rule, None for the shipped model.
        options: any other ``ScanRequest`` field (overlap_px, batch_size, min_area_m2, ...).
    """
    started = time.time()
    request = prepare_request(out, region, bbox, aoi, start, end, detector, options)
    with run_folder_lock(request["out"], wait=bool(request.get("wait"))):  # one run per folder
        return run_scan_steps(request, started, PrefectSteps())
