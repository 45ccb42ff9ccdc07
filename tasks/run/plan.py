"""Validate a scan request and freeze it into a typed plan that every step reads.

All user mistakes (unknown region, misspelled catalog key, missing raster, ROI outside the data,
a checkpoint whose bands the source cannot provide, a non-safetensors checkpoint, an unwritable
output folder) are found here, before any pixel is read, and reported as one ``InputError`` line.

:func:`plan_scan` writes the plan (a frozen :class:`ScanPlan`) once to ``<out>/.work/plan.json``;
each step loads it once with :meth:`ScanPlan.load`. Defaults live in ``tasks.core.defaults``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
from pathlib import Path
from typing import Any

import shapely
from pydantic import BaseModel, ConfigDict
from shapely.geometry import mapping, shape

from models.cards import DEFAULT_EVENT_CHECKPOINT
from models.detectors import auto_batch_size, cached_detector
from tasks.core.bands import SPECTRAL_BAND_NAMES, TERRAIN_BAND_NAMES, is_bitemporal, pre_event_request
from tasks.core.errors import InputError
from tasks.core.files import atomic_write_text
from tasks.core.grid import AnalysisGrid, make_grid, read_aoi, resolve_roi, roi_in_grid_crs
from tasks.raster.event_stack import REDNESS
from tasks.run.outputs import STAGING, WORK, bytes_needed, check_free_space, check_output_dir
from tasks.run.request import ScanRequest, detector_spec_of, new_run_id, precheck_request
from tasks.sources.catalog import LocalSource
from tasks.sources.coverage import check_layer_coverage
from tasks.sources.event import (
    EventInputs,
    EventWindows,
    resolve_event_inputs,
)
from tasks.sources.local import SceneInputs, resolve_local_inputs
from tasks.sources.remote import attach_dem_source, cache_root, fetch_remote_inputs
from tasks.vector.clean import CleanParams
from tasks.vector.geometry import GeometryParams

log = logging.getLogger(__name__)


class DetectorSpec(BaseModel):
    """What the plan records of the detector: the block jobs load it again from ``spec``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str | None  # checkpoint name/path, "index", or None for the shipped default
    ref: str  # name@sha256 prefix: the polygons' `model` attribute
    bands: tuple[str, ...]
    threshold: float
    patch_size: int


class RunPaths(BaseModel):
    """Every path of one run folder, named once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path
    work: Path  # intermediate files; removed when the run is published (unless --keep-work)
    staging: Path  # the outputs until the whole run succeeded

    @classmethod
    def of(cls, out: str | Path) -> "RunPaths":
        out = Path(out).resolve()
        return cls(out=out, work=out / WORK, staging=out / STAGING)

    @property
    def plan(self) -> Path:
        return self.work / "plan.json"

    @property
    def stack_record(self) -> Path:
        """The align step's result (written last: the stack is complete)."""
        return self.work / "stack_result.json"

    @property
    def blocks(self) -> Path:
        """Block jobs' results and completion records."""
        return self.work / "blocks"

    @property
    def prob(self) -> Path:
        return self.work / "prob.tif"

    @property
    def uncertainty_raw(self) -> Path:
        return self.work / "uncertainty_raw.tif"

    @property
    def mask_raw(self) -> Path:
        return self.work / "mask_raw.tif"

    def staged(self, name: str) -> Path:
        """``name`` in the staging folder (created on first use)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.staging / name


class ScanPlan(BaseModel):
    """A validated scan: written once by :func:`plan_scan`, read by every step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    request: ScanRequest
    catalog_path: str
    source: str
    source_kind: str
    region: str | None
    window: tuple[dt.date | None, dt.date | None]  # the scenes' date window
    inputs: dict[str, Any]  # tasks.sources.local.SceneInputs.to_dict(); the post-event scene in event mode
    event: dict[str, Any] | None = None  # event mode: tasks.sources.event.EventInputs.to_dict()
    image: dict[str, Any] | None = None  # --image: tasks.sources.image.ImageInputs.to_dict()
    roi_lonlat: dict[str, Any]  # GeoJSON geometry, EPSG:4326
    roi_grid_crs: dict[str, Any]  # GeoJSON geometry in the grid's CRS
    grid: dict[str, Any]  # tasks.core.grid.AnalysisGrid.to_dict()
    detector: DetectorSpec
    clean: CleanParams
    geometry: GeometryParams = GeometryParams()  # plans written before --simplify-m: exact outlines
    paths: RunPaths
    resumed: bool = False  # a rerun that resumes an interrupted run

    @property
    def scene_inputs(self) -> SceneInputs:
        return SceneInputs.from_dict(self.inputs)

    @property
    def event_inputs(self) -> EventInputs | None:
        return EventInputs.from_dict(self.event) if self.event else None

    @property
    def analysis_grid(self) -> AnalysisGrid:
        return AnalysisGrid.from_dict(self.grid)

    @property
    def roi_in_grid_crs(self) -> shapely.Geometry:
        return shape(self.roi_grid_crs)

    @property
    def distributed(self) -> bool:
        """Blocks run on a Dask cluster (an address, or a local one of several workers)."""
        return bool(self.request.dask_address) or self.request.workers > 1

    def write(self) -> Path:
        return atomic_write_text(self.paths.plan, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, work: str | Path) -> "ScanPlan":
        return cls.model_validate_json((Path(work) / "plan.json").read_text())


def _check_patch_fit(request: ScanRequest, patch_px: int) -> None:
    if request.overlap_px >= patch_px:
        raise InputError(f"--overlap must be in [0, {patch_px}) for this detector's {patch_px} px "
                         f"patches, got {request.overlap_px}")
    if request.block_px < patch_px:
        raise InputError(f"--block-px must be >= {patch_px} (one patch of this detector), got "
                         f"{request.block_px}")


def _check_event_mode(request: ScanRequest, spec: str | None, ref: str, bands: tuple[str, ...]) -> None:
    """A bi-temporal detector needs an event date; an event date needs a bi-temporal detector."""
    if is_bitemporal(bands) and request.event_date is None:
        pre = ", ".join(b for b in bands if b.startswith("PRE_"))
        raise InputError(f"detector {ref} is bi-temporal (pre-event bands {pre}): pass "
                         "--event-date YYYY-MM-DD so the scan can pick the scenes before and after "
                         "the event, or choose a single-date detector")
    if request.event_date is not None and not is_bitemporal(bands):
        raise InputError(f"--event-date needs a bi-temporal detector (a card with PRE_ bands); "
                         f"{spec or ref} is single-date: drop --checkpoint to use the default "
                         f"bi-temporal {DEFAULT_EVENT_CHECKPOINT}, or drop --event-date")


def _event_inputs(catalog, source_name: str, windows: EventWindows, bands: tuple[str, ...],
                  roi: shapely.Geometry | None = None, cache_dir: Path | None = None) -> EventInputs:
    """The post- and pre-event scenes, each with the detector's bands and the change index's."""
    post = tuple(b for b in bands if b in SPECTRAL_BAND_NAMES)
    pre = pre_event_request(bands)
    extra = tuple(sorted({REDNESS.a, REDNESS.b}))  # the change evidence needs them in both scenes
    return resolve_event_inputs(catalog, source_name, windows, tuple(dict.fromkeys(post + extra)),
                                tuple(dict.fromkeys(pre + extra)), roi, cache_dir)


def _intersect_extents(a: tuple[float, float, float, float],
                       b: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The lon/lat box both scenes cover (an empty one makes every ROI 'outside the data')."""
    w, s, e, n = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (w, s, e, n) if w < e and s < n else (w, s, w, s)


def resolve_batch_size(request: ScanRequest) -> ScanRequest:
    """``--batch-size auto`` resolved to a number once, here (the batch size is part of a run's
    fingerprint and of its outputs' last bits): the detector's device decides
    (``models.detectors.auto_batch_size``: the largest power of two that fits on a CUDA GPU, the
    default on the CPU). A number is kept as it is."""
    if request.batch_size != "auto":
        return request
    detector = cached_detector(detector_spec_of(request), request.device)
    choice = auto_batch_size(detector)
    log.info("--batch-size auto: %d (%s)", choice.value, choice.reason)
    return request.model_copy(update={"batch_size": int(choice.value)})


def plan_scan(request: ScanRequest) -> ScanPlan:
    """Check everything that can be checked without reading pixels; write and return the plan.

    A plan already in ``<out>/.work`` is reused: the same run planned a moment ago (the CLI plans
    before the flow starts, the flow's plan step then loads it), or an interrupted run resumed
    with the same settings. ``--overwrite`` starts an earlier run over.
    """
    # the cheap checks (options, output folder, catalog, region, source), again: the flow plans
    # without the CLI too
    checked = precheck_request(request)
    request = resolve_batch_size(request)
    paths = RunPaths.of(request.out)
    if paths.plan.exists():
        resumed = _resumable_plan(check_output_dir(request.out, request.overwrite), paths, request)
        if resumed is not None:
            return resumed
    catalog, region, source_name, source = (checked.catalog, checked.region, checked.source_name,
                                            checked.source)
    detector_spec = detector_spec_of(request)
    detector = cached_detector(detector_spec, request.device)
    _check_event_mode(request, detector_spec, detector.ref, detector.bands)
    _check_patch_fit(request, detector.patch_size)
    clean = request.clean_params(detector.threshold)  # validates the cleanup parameters
    spectral = tuple(b for b in detector.bands if b in SPECTRAL_BAND_NAMES)
    start = request.start or (region.start if region else None)
    end = request.end or (region.end if region else None)
    if request.end and not request.start and start and start > request.end:
        start = None  # the region's default start does not apply to an explicit earlier --end
    windows = (EventWindows(request.event_date, request.pre_days, request.post_days)
               if request.event_date else None)
    if windows is not None:
        start, end = windows.post  # the scene window is the post-event one
    inputs: SceneInputs | None = None
    event: EventInputs | None = None
    extent = (-180.0, -90.0, 180.0, 90.0)
    if isinstance(source, LocalSource):
        if windows is not None:
            event = _event_inputs(catalog, source_name, windows, detector.bands)
            inputs = event.post
            extent = _intersect_extents(event.post.extent_lonlat, event.pre.extent_lonlat)
        else:
            inputs = resolve_local_inputs(catalog, source_name, spectral, start, end)
            extent = inputs.extent_lonlat
    region_aoi = read_aoi(catalog.resolve(region.aoi)) if region and region.aoi else None
    user_aoi = read_aoi(request.aoi) if request.aoi else None
    data_label = f"the image {checked.image.path}" if checked.image else "the source"
    roi = resolve_roi(region.bbox if region else None, region_aoi, request.bbox, user_aoi, extent,
                      data_label=data_label)
    if inputs is None and windows is not None:  # remote, event mode: two searches
        event = _event_inputs(catalog, source_name, windows, detector.bands, roi,
                              cache_root(request.cache_dir))
        inputs = event.post
    elif inputs is None:  # remote: search and download for this ROI (cached by request)
        inputs = fetch_remote_inputs(source, source_name, spectral, roi, start, end,
                                     cache_root(request.cache_dir))
    if isinstance(source, LocalSource) and source.dem_source is not None:  # the DEM of a stac source
        terrain = tuple(b for b in detector.bands if b in TERRAIN_BAND_NAMES)
        cache = cache_root(request.cache_dir)
        if event is not None:
            event = dataclasses.replace(
                event, post=attach_dem_source(catalog, event.post, roi, cache, terrain),
                pre=attach_dem_source(catalog, event.pre, roi, cache, terrain))
            inputs = event.post
        else:
            inputs = attach_dem_source(catalog, inputs, roi, cache, terrain)
    terrain_needed = [b for b in detector.bands if b not in SPECTRAL_BAND_NAMES]
    if terrain_needed and inputs.dem_path is None:
        if checked.image:
            raise InputError(f"detector {detector.ref} needs {', '.join(terrain_needed)}: pass the "
                             f"elevation of --image {request.image} as --dem FILE (a DEM raster in "
                             "metres covering it), or choose a detector without terrain bands")
        raise InputError(f"detector {detector.ref} needs {', '.join(terrain_needed)} but source "
                         f"{source_name!r} has no DEM; add 'dem:' to the source in data_catalog.yaml")
    grid = make_grid(roi, res_m=request.res_m)
    roi_grid = roi_in_grid_crs(roi, grid)
    if event is not None:
        event = dataclasses.replace(
            event, post=check_layer_coverage(event.post, roi_grid, grid.crs, "post-event"),
            pre=check_layer_coverage(event.pre, roi_grid, grid.crs, "pre-event"))
        inputs = event.post
    else:
        inputs = check_layer_coverage(inputs, roi_grid, grid.crs)
    out = check_output_dir(request.out, request.overwrite)
    check_free_space(out, bytes_needed(grid.width, grid.height))
    paths.work.mkdir(parents=True, exist_ok=True)
    plan = ScanPlan(
        run_id=request.run_id or new_run_id(), request=request, catalog_path=str(catalog.root),
        source=source_name, source_kind=source.kind, region=request.region, window=(start, end),
        inputs=inputs.to_dict(), event=event.to_dict() if event else None,
        image=checked.image.to_dict() if checked.image else None, roi_lonlat=mapping(roi),
        roi_grid_crs=mapping(roi_grid), grid=grid.to_dict(),
        detector=DetectorSpec(spec=detector_spec, ref=detector.ref, bands=detector.bands,
                              threshold=detector.threshold, patch_size=detector.patch_size),
        clean=clean, geometry=request.geometry_params(), paths=paths)
    plan.write()
    _PLANNED_HERE.add((str(paths.plan), plan.run_id))
    return plan


# Plans written by this process (plan path, run id): the flow's plan step reuses them as they are.
_PLANNED_HERE: set[tuple[str, str]] = set()

# Settings that do not change a run's result: a run may be resumed with different values.
_VOLATILE = {"run_id", "progress", "keep_work", "overwrite", "workers", "dask_address", "out",
             "cache_dir", "wait", "formats"}


def _resumable_plan(out: Path, paths: RunPaths, request: ScanRequest) -> ScanPlan | None:
    """The plan in ``out`` when this request may use it: the run this process planned a moment ago
    (the CLI plans, then the flow's plan step gets the same run id), or an interrupted run started
    with the same settings (then it resumes). None when ``--overwrite`` starts an earlier run over.
    Settings that do not change the result (``_VOLATILE``: workers, progress, ...) take the
    request's values.

    Raises:
        InputError: the interrupted run was started with other settings (the difference is named).
    """
    plan = ScanPlan.load(paths.work)
    same_run = request.run_id is not None and plan.run_id == request.run_id
    planned_here = same_run and (str(paths.plan), plan.run_id) in _PLANNED_HERE
    if request.overwrite and not planned_here:
        shutil.rmtree(paths.work, ignore_errors=True)
        return None
    old = {k: v for k, v in plan.request.model_dump(mode="json").items() if k not in _VOLATILE}
    new = {k: v for k, v in request.model_dump(mode="json").items() if k not in _VOLATILE}
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
    if diff:
        raise InputError(f"--out {out} holds an interrupted run started with other settings "
                         f"({'; '.join(diff[:3])}); rerun with the same settings to resume it, "
                         "or pass --overwrite to start over")
    volatile = {k: getattr(request, k) for k in _VOLATILE if k not in ("run_id", "out")}
    updated = plan.model_copy(update={"request": plan.request.model_copy(update=volatile),
                                      "resumed": plan.resumed or not planned_here})
    if updated != plan:
        updated.write()
    return updated
