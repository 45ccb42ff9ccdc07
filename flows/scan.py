"""The one-off ROI scan as a Prefect flow: wiring only, paths between tasks.

plan > align > infer (tile + predict + stitch) > clean > vectorize beside rasters > finish
(manifest, atomic publish). Each task wraps a plain function of ``tasks.run.steps``; a failure
removes the staging folder, so no file appears under a final name.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task

from flows.logs import quiet_user_error_tracebacks
from tasks.run import steps
from tasks.run.outputs import discard_partial, run_folder_lock
from tasks.run.request import new_run_id

quiet_user_error_tracebacks()  # Prefect configured logging on import

plan_task = task(steps.step_plan, name="plan")
align_task = task(steps.step_stack, name="align")
infer_task = task(steps.step_infer, name="infer")
clean_task = task(steps.step_clean, name="clean")
vectorize_task = task(steps.step_vectorize, name="vectorize")
rasters_task = task(steps.step_rasters, name="write-rasters")
finish_task = task(steps.step_finish, name="finish")


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
    request = dict(options or {})
    request.update(region=region, bbox=bbox, aoi=aoi, start=start, end=end, detector=detector)
    run_id = request.get("run_id") or new_run_id()
    request.update(run_id=run_id, out=out.replace("{run_id}", run_id))
    with run_folder_lock(request["out"], wait=bool(request.get("wait"))):  # one run per folder
        return _scan(request, run_id, started)


def _scan(request: dict, run_id: str, started: float) -> dict:
    logger = get_run_logger()
    rasters_future = None
    try:
        work = plan_task(request)
        stack = align_task(work)
        logger.info("aligned: %.1f%% of the grid valid", 100 * stack["valid_fraction"])
        infer = infer_task(work, stack)
        logger.info("inference: %d patches, model forward %.2fs", infer["n_patches"],
                    infer["model_forward_s"])
        cleaned = clean_task(work, infer)
        # the COGs are written in a task-runner thread while the polygons are built: both are
        # mostly GDAL/GEOS work that releases the GIL (about a third less wall time for the two)
        rasters_future = rasters_task.submit(work, infer, cleaned)
        vectors = vectorize_task(work, infer, cleaned)
        rasters = rasters_future.result()
        result = finish_task(work, stack, infer, cleaned, vectors, rasters, started)
    except BaseException:
        if rasters_future is not None:
            rasters_future.wait()  # it writes into the staging folder that is about to go
        discard_partial(request["out"])
        raise
    logger.info("run %s: %d landslide polygons -> %s", run_id, result["counts"]["polygons"],
                result["out"])
    return result
