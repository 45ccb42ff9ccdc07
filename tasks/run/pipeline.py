"""The scan's steps in order, written once, and a way to run them without any orchestrator.

plan > align > infer (tile + predict + stitch) > clean > vectorize beside rasters > finish (manifest,
atomic publish). :func:`run_scan_steps` is that sequence; *how* each step runs is the runner's:

- ``flows/scan.py`` passes a runner that makes each step a Prefect task of the ``landslide-scan``
  flow (deployments, schedules, a user's Prefect server);
- :class:`InProcessSteps` calls the same functions directly, the COG writing in a thread beside the
  polygons as Prefect's task runner does. The CLI uses it for a one-off scan when no Prefect server
  is configured: no server to start (6-8 s), no Prefect import (~2 s).

Either way a failure removes the staging folder, so no file appears under a final name, and the
manifest's ``execution.orchestration`` says how the run was executed.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any, Callable, Protocol

from tasks.run import steps
from tasks.run.outputs import discard_partial, run_folder_lock
from tasks.run.request import new_run_id


class StepRunner(Protocol):
    """How the steps run: ``call`` one now, ``submit`` one to run beside the next, ``wait`` for it."""

    log: logging.Logger | logging.LoggerAdapter

    def call(self, step: Callable, *args: Any) -> Any: ...

    def submit(self, step: Callable, *args: Any) -> Any: ...

    def wait(self, future: Any) -> None: ...

    def describe(self) -> dict: ...


class InProcessSteps:
    """Run each step as a plain function call in this process."""

    def __init__(self, reason: str, log: logging.Logger | None = None, process: dict | None = None) -> None:
        self.log = log or logging.getLogger("landslide")
        self.reason = reason
        self.process = process
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-step")

    def call(self, step: Callable, *args: Any) -> Any:
        return step(*args)

    def submit(self, step: Callable, *args: Any) -> Future:
        return self._pool.submit(step, *args)

    def wait(self, future: Future) -> None:
        wait_for([future])

    def describe(self) -> dict:
        return {"orchestration": "in-process", "why": self.reason, "warm_process": self.process}

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def run_scan_steps(request: dict, started: float, runner: StepRunner) -> dict:
    """Run a scan's steps with ``runner``; the request is a ``ScanRequest`` as a dict with ``out``
    and ``run_id`` set. Returns :func:`tasks.run.steps.step_finish`'s result."""
    log = runner.log
    rasters_future = None
    try:
        work = runner.call(steps.step_plan, request)
        stack = runner.call(steps.step_stack, work)
        log.info("aligned: %.1f%% of the grid valid", 100 * stack["valid_fraction"])
        infer = runner.call(steps.step_infer, work, stack)
        log.info("inference: %d patches, model forward %.2fs", infer["n_patches"], infer["model_forward_s"])
        cleaned = runner.call(steps.step_clean, work, infer)
        # the COGs are written in another thread while the polygons are built: both are mostly
        # GDAL/GEOS work that releases the GIL (about a third less wall time for the two)
        rasters_future = runner.submit(steps.step_rasters, work, infer, cleaned)
        vectors = runner.call(steps.step_vectorize, work, infer, cleaned)
        rasters = rasters_future.result()
        result = runner.call(steps.step_finish, work, stack, infer, cleaned, vectors, rasters, started,
                             runner.describe())
    except BaseException:
        if rasters_future is not None:
            runner.wait(rasters_future)  # it writes into the staging folder that is about to go
        discard_partial(request["out"])
        raise
    log.info("run %s: %d landslide polygons -> %s", request["run_id"], result["counts"]["polygons"],
             result["out"])
    return result


def prepare_request(out: str, region: str | None, bbox: list[float] | None, aoi: str | None,
                    start: str | None, end: str | None, detector: str | None,
                    options: dict[str, Any] | None) -> dict:
    """The request dict of a scan's parameters (the flow's and the in-process entry's), with the
    run id chosen and ``{run_id}`` in ``out`` replaced."""
    request = dict(options or {})
    request.update(region=region, bbox=bbox, aoi=aoi, start=start, end=end, detector=detector)
    run_id = request.get("run_id") or new_run_id()
    request.update(run_id=run_id, out=out.replace("{run_id}", run_id))
    return request


def scan_in_process(out: str = "runs/{run_id}", region: str | None = None, bbox: list[float] | None = None,
                    aoi: str | None = None, start: str | None = None, end: str | None = None,
                    detector: str | None = None, options: dict[str, Any] | None = None,
                    reason: str = "no Prefect server configured", process: dict | None = None) -> dict:
    """The ``landslide-scan`` flow's work without Prefect: same parameters, same steps, same outputs.
    ``process``: the warm process this one was forked from (``flows.warm``), for the manifest."""
    started = time.time()
    request = prepare_request(out, region, bbox, aoi, start, end, detector, options)
    runner = InProcessSteps(reason, process=process)
    try:
        with run_folder_lock(request["out"], wait=bool(request.get("wait"))):  # one run per folder
            return run_scan_steps(request, started, runner)
    finally:
        runner.close()
