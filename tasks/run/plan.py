"""Validate a scan request and freeze it into a plan (JSON) that every stage reads.

All user mistakes (unknown region, misspelled catalog key, missing raster, ROI outside the data,
a checkpoint whose bands the source cannot provide, a non-safetensors checkpoint, an unwritable
output folder) are found here, before any pixel is read, and reported as one ``InputError`` line.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Literal

import shapely
from pydantic import BaseModel, ConfigDict, Field, field_validator
from shapely.geometry import mapping, shape

from models.detectors import cached_detector
from tasks.core.bands import SPECTRAL_BAND_NAMES
from tasks.core.errors import InputError
from tasks.core.grid import AnalysisGrid, check_bbox, make_grid, read_aoi, resolve_roi, roi_in_grid_crs
from tasks.run.outputs import WORK as WORK_DIRNAME
from tasks.run.outputs import bytes_needed, check_free_space, check_output_dir, work_dir
from tasks.sources.catalog import LocalSource, load_catalog
from tasks.sources.local import SceneInputs, resolve_local_inputs
from tasks.sources.remote import cache_root
from tasks.vector.clean import CleanParams


class ScanRequest(BaseModel):
    """Parameters of one scan (the flow's parameters; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    out: str
    region: str | None = None
    source: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    aoi: str | None = None
    start: dt.date | None = None
    end: dt.date | None = None
    detector: str | None = Field(default=None, description="checkpoint name/path, 'index', or None for the default model")
    catalog: str | None = None
    res_m: float = 10.0
    overlap_px: int = 32
    batch_size: int = 16
    block_px: int = 2048
    cache_dir: str | None = None
    workers: int = 1
    dask_address: str | None = None
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    threshold: float | None = None
    opening_radius_px: int = 1
    closing_radius_px: int = 1
    fill_holes_max_area_m2: float = 2000.0
    min_area_m2: float = 500.0
    overwrite: bool = False
    keep_work: bool = False
    progress: bool = True
    run_id: str | None = None

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v):
        return None if v is None else check_bbox(v)

    def clean_params(self, threshold: float) -> CleanParams:
        return CleanParams(threshold=self.threshold if self.threshold is not None else threshold,
                           opening_radius_px=self.opening_radius_px,
                           closing_radius_px=self.closing_radius_px,
                           fill_holes_max_area_m2=self.fill_holes_max_area_m2,
                           min_area_m2=self.min_area_m2)


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def plan_scan(request: ScanRequest) -> dict:
    """Check everything that can be checked without reading pixels; return the plan as a dict.

    The plan is also written to ``<out>/.work/plan.json``.
    """
    if request.overlap_px < 0 or request.overlap_px >= 128:
        raise InputError(f"--overlap must be in [0, 128), got {request.overlap_px}")
    if request.block_px < 128:
        raise InputError(f"--block-px must be >= 128 (one patch), got {request.block_px}")
    if request.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {request.batch_size}")
    if request.workers < 1:
        raise InputError(f"--workers must be >= 1, got {request.workers}")
    if (Path(request.out) / WORK_DIRNAME / "plan.json").exists():
        # an interrupted run, or the flow re-planning what the CLI just planned: its plan was
        # validated already, so do not load the detector or fetch inputs again
        resumed = _resumable_plan(check_output_dir(request.out, request.overwrite), request)
        if resumed is not None:
            return resumed
    catalog = load_catalog(request.catalog)
    region = catalog.region(request.region) if request.region else None
    source_name = request.source or (region.source if region else None)
    if source_name is None:
        raise InputError("name a --region from data_catalog.yaml, or a --source with --bbox/--aoi")
    catalog.source(source_name)
    if region is None and request.bbox is None and request.aoi is None:
        raise InputError("--source without --region needs --bbox or --aoi to define the ROI")
    detector = cached_detector(request.detector, request.device)
    clean = request.clean_params(detector.threshold)  # validates the cleanup parameters
    spectral = tuple(b for b in detector.bands if b in SPECTRAL_BAND_NAMES)
    start = request.start or (region.start if region else None)
    end = request.end or (region.end if region else None)
    if request.end and not request.start and start and start > request.end:
        start = None  # the region's default start does not apply to an explicit earlier --end
    source = catalog.source(source_name)
    inputs: SceneInputs | None = None
    extent = (-180.0, -90.0, 180.0, 90.0)
    if isinstance(source, LocalSource):
        inputs = resolve_local_inputs(catalog, source_name, spectral, start, end)
        extent = inputs.extent_lonlat
    region_aoi = read_aoi(catalog.resolve(region.aoi)) if region and region.aoi else None
    user_aoi = read_aoi(request.aoi) if request.aoi else None
    roi = resolve_roi(region.bbox if region else None, region_aoi, request.bbox, user_aoi, extent)
    if inputs is None:  # remote: search and download for this ROI (cached by request)
        from tasks.sources.remote import fetch_remote_inputs

        inputs = fetch_remote_inputs(source, source_name, spectral, roi, start, end,
                                     cache_root(request.cache_dir))
    terrain_needed = [b for b in detector.bands if b not in SPECTRAL_BAND_NAMES]
    if terrain_needed and inputs.dem_path is None:
        raise InputError(f"detector {detector.ref} needs {', '.join(terrain_needed)} but source "
                         f"{source_name!r} has no DEM; add 'dem:' to the source in data_catalog.yaml")
    grid = make_grid(roi, res_m=request.res_m)
    out = check_output_dir(request.out, request.overwrite)
    check_free_space(out, bytes_needed(grid.width, grid.height))
    wdir = work_dir(out)
    run_id = request.run_id or new_run_id()
    plan = {
        "run_id": run_id,
        "request": request.model_dump(mode="json"),
        "catalog_path": str(catalog.root),
        "source": source_name,
        "source_kind": catalog.source(source_name).kind,
        "region": request.region,
        "window": [start.isoformat() if start else None, end.isoformat() if end else None],
        "inputs": inputs.to_dict(),
        "roi_lonlat": mapping(roi),
        "roi_grid_crs": mapping(roi_in_grid_crs(roi, grid)),
        "grid": grid.to_dict(),
        "detector": {"spec": request.detector, "ref": detector.ref, "bands": list(detector.bands),
                     "threshold": detector.threshold, "patch_size": detector.patch_size},
        "clean": dataclasses.asdict(clean),
        "out": str(out.resolve()),
        "work_dir": str(wdir.resolve()),
    }
    (wdir / "plan.json").write_text(json.dumps(plan, indent=2, default=str))
    return plan


# Settings that do not change a run's result: a run may be resumed with different values.
_VOLATILE = {"run_id", "progress", "keep_work", "overwrite", "workers", "dask_address", "out",
             "cache_dir"}


def _resumable_plan(out: Path, request: ScanRequest) -> dict | None:
    """The plan of an interrupted run in ``out`` when the request matches it (then it resumes).

    Raises:
        InputError: the interrupted run was started with other settings (the difference is named).
    """
    import shutil

    plan_path = out / WORK_DIRNAME / "plan.json"
    if not plan_path.exists():
        return None
    if request.overwrite:
        shutil.rmtree(out / WORK_DIRNAME, ignore_errors=True)
        return None
    plan = json.loads(plan_path.read_text())
    old = {k: v for k, v in plan["request"].items() if k not in _VOLATILE}
    new = {k: v for k, v in request.model_dump(mode="json").items() if k not in _VOLATILE}
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
    if diff:
        raise InputError(f"--out {out} holds an interrupted run started with other settings "
                         f"({'; '.join(diff[:3])}); rerun with the same settings to resume it, "
                         "or pass --overwrite to start over")
    plan["request"].update({k: v for k, v in request.model_dump(mode="json").items()
                            if k in _VOLATILE and k not in ("run_id", "out")})
    if plan["run_id"] != request.run_id:
        plan["resumed"] = True
    plan_path.write_text(json.dumps(plan, indent=2, default=str))
    return plan


def load_plan(work: str | Path) -> dict:
    return json.loads((Path(work) / "plan.json").read_text())


def plan_grid(plan: dict) -> AnalysisGrid:
    return AnalysisGrid.from_dict(plan["grid"])


def plan_roi_grid_crs(plan: dict) -> shapely.Geometry:
    return shape(plan["roi_grid_crs"])
