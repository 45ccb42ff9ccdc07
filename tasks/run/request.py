"""What a scan is asked to do (:class:`ScanRequest`) and the checks that need no pixel, no model and
no server (:func:`precheck_request`).

Light on purpose: the CLI validates a request with this module before it imports torch, the
scan's raster stack or Prefect, so a mistyped option, an unknown region, a folder that holds a
finished run or a checkpoint that does not exist is refused in well under a second
(``benchmarks/cli_latency.py``). :func:`tasks.run.plan.plan_scan` runs the same checks first and then
everything that needs the data and the detector.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.cards import DEFAULT_EVENT_CHECKPOINT, INDEX_DETECTOR, ONNX_SUFFIX, resolve_checkpoint
from tasks.core import defaults
from tasks.core.errors import InputError
from tasks.core.grid import check_bbox
from tasks.run.outputs import refuse_finished_run
from tasks.sources.catalog import Catalog, LocalSource, Region, SentinelHubSource, StacSource, load_catalog
from tasks.vector.export import check_formats

if TYPE_CHECKING:
    from tasks.sources.image import ImageInputs


class ScanRequest(BaseModel):
    """Parameters of one scan (the flow's parameters; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: str
    region: str | None = None
    source: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    aoi: str | None = None
    start: dt.date | None = None
    end: dt.date | None = None
    event_date: dt.date | None = Field(default=None, description="event mode: the best scenes before and after this date")
    pre_days: int = defaults.PRE_DAYS
    post_days: int = defaults.POST_DAYS
    detector: str | None = Field(default=None, description="checkpoint name/path, 'index', or None for the default model (the bi-temporal default with an event date)")
    catalog: str | None = None
    res_m: float = defaults.RES_M
    overlap_px: int = defaults.OVERLAP_PX
    batch_size: int | Literal["auto"] = Field(
        default=defaults.BATCH_SIZE,
        description="patches per forward pass; 'auto' is resolved to a number when the scan is planned")
    block_px: int = defaults.BLOCK_PX
    cache_dir: str | None = None
    workers: int = defaults.WORKERS
    dask_address: str | None = None
    device: Literal["auto", "cpu", "cuda"] | str = defaults.DEVICE
    threshold: float | None = Field(default=None, description="None: the detector card's")
    opening_radius_px: int = defaults.OPENING_RADIUS_PX
    closing_radius_px: int = defaults.CLOSING_RADIUS_PX
    fill_holes_max_area_m2: float = defaults.FILL_HOLES_MAX_AREA_M2
    min_area_m2: float = defaults.MIN_AREA_M2
    simplify_m: float | None = Field(default=defaults.SIMPLIFY_M, description="outline simplification "
                                     "tolerance (m); None: half the pixel diagonal; 0: exact pixels")
    smooth: bool = Field(default=defaults.SMOOTH, description="Chaikin-smooth the simplified outlines")
    overwrite: bool = False
    wait: bool = Field(default=False, description="wait for another scan writing into --out instead of refusing")
    keep_work: bool = False
    progress: bool = True
    run_id: str | None = None
    formats: tuple[str, ...] = Field(default=(), description="extra exports of the landslides layer "
                                     "beside landslides.gpkg (geojson, csv, parquet)")
    image: str | None = Field(default=None, description="scan this raster file (GeoTIFF or any raster "
                              "GDAL reads) instead of a catalog source; see tasks.sources.image")
    image_bands: tuple[str, ...] | None = Field(
        default=None, description="--bands: the image's band names in band order; None: its band "
                                  "descriptions")
    dem: str | None = Field(default=None, description="DEM raster (metres) of an --image scan")
    acquired: dt.datetime | None = Field(
        default=None, description="acquisition time (UTC) of --image; None: a standard metadata item's, "
                                  "else recorded as unknown")

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v):
        return None if v is None else check_bbox(v)

    @field_validator("image_bands", mode="before")
    @classmethod
    def _image_bands(cls, v):
        if isinstance(v, str):
            v = [b for b in v.split(",") if b.strip()]
        return None if v is None else tuple(str(b).strip() for b in v)

    @field_validator("acquired", mode="before")
    @classmethod
    def _acquired(cls, v):
        from tasks.sources.image import parse_acquired

        return parse_acquired(v)

    @field_validator("formats", mode="before")
    @classmethod
    def _formats(cls, v):
        if v is None:
            return ()
        names = [str(f).strip().lower() for f in ([v] if isinstance(v, str) else v)]
        unknown = [f for f in names if f not in defaults.EXPORT_FORMATS]
        if unknown:
            raise ValueError(f"unknown format {unknown[0]!r}; choose from {', '.join(defaults.EXPORT_FORMATS)}")
        return tuple(dict.fromkeys(names))

    def clean_params(self, card_threshold: float):
        """The cleanup parameters (validated ``CleanParams``): the request's threshold, else the card's."""
        from tasks.vector.clean import CleanParams  # scipy: not needed to validate a request

        return CleanParams(threshold=self.threshold if self.threshold is not None else card_threshold,
                           opening_radius_px=self.opening_radius_px,
                           closing_radius_px=self.closing_radius_px,
                           fill_holes_max_area_m2=self.fill_holes_max_area_m2,
                           min_area_m2=self.min_area_m2)

    def geometry_params(self):
        """How the polygons are drawn (validated ``GeometryParams``): ``simplify_m`` (None: half the
        pixel diagonal of ``res_m``) and ``smooth``."""
        from tasks.vector.geometry import GeometryParams, default_simplify_m

        simplify_m = default_simplify_m(self.res_m) if self.simplify_m is None else self.simplify_m
        return GeometryParams(simplify_m=simplify_m,
                              smooth_iterations=defaults.SMOOTH_ITERATIONS if self.smooth else 0)


def new_run_id(now: dt.datetime | None = None) -> str:
    """``20261204T051500Z-1a2b3c``: UTC start time and 6 random hex digits."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def check_numbers(request: ScanRequest) -> None:
    if request.batch_size != "auto" and request.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {request.batch_size}")
    if request.workers < 1:
        raise InputError(f"--workers must be >= 1, got {request.workers}")
    if request.overlap_px < 0:
        raise InputError(f"--overlap must be >= 0, got {request.overlap_px}")
    s = request.simplify_m
    if s is not None and not (math.isfinite(s) and s >= 0):
        raise InputError(f"--simplify-m must be a distance in metres >= 0 (0 keeps the exact pixel "
                         f"outline), got {s:g}")


def detector_spec_of(request: ScanRequest) -> str | None:
    """The detector to load: the request's, else the default (the bi-temporal one in event mode)."""
    if request.detector is None and request.event_date is not None:
        return DEFAULT_EVENT_CHECKPOINT
    return request.detector


def _check_detector_ref(spec: str | None) -> None:
    """The checkpoint card a request names exists (nothing is loaded: plan_scan loads and checks
    it; the index rule and an exported .onnx are checked there too)."""
    if spec is None or spec == INDEX_DETECTOR or str(spec).endswith(ONNX_SUFFIX):
        return
    resolve_checkpoint(spec)


def _check_out(out: str, overwrite: bool) -> None:
    """``--out`` is or can become a folder and holds no finished run (unless ``overwrite``); nothing
    is created here, so a refused scan leaves no folder behind."""
    path = Path(out)
    try:
        if path.exists() and not path.is_dir():
            raise InputError(f"--out {out} exists and is not a folder")
        refuse_finished_run(path, overwrite)
        parent = next(p for p in (path, *path.parents) if p.exists())
    except OSError as exc:  # e.g. a component longer than the file system allows
        raise InputError(f"--out {out} cannot be created or written ({exc.strerror})") from None
    if not parent.is_dir():
        raise InputError(f"--out {out} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out} is not writable ({parent}: permission denied)")


@dataclass(frozen=True)
class CheckedRequest:
    """What :func:`precheck_request` resolved on the way: the loaded catalog, the region (None
    without ``--region``) and the source the scan reads; with ``--image``, the file's metadata
    (``tasks.sources.image.ImageInputs``) and the one-source catalog made of it."""

    catalog: Catalog
    region: Region | None
    source_name: str
    source: LocalSource | StacSource | SentinelHubSource
    image: "ImageInputs | None" = None


# options a scan of one --image file does not take: they choose data from the catalog
_CATALOG_OPTIONS = (("region", "--region"), ("source", "--source"), ("catalog", "--catalog"),
                    ("event_date", "--event-date"), ("start", "--start"), ("end", "--end"))
_IMAGE_OPTIONS = (("image_bands", "--bands"), ("dem", "--dem"), ("acquired", "--acquired"))


def _check_image_options(request: ScanRequest) -> None:
    """``--image`` excludes the catalog's options; ``--bands``/``--dem``/``--acquired`` need it."""
    if request.image is not None:
        given = [flag for field, flag in _CATALOG_OPTIONS if getattr(request, field) is not None]
        if given:
            raise InputError(f"--image scans one raster file without the catalog: drop "
                             f"{', '.join(given)} (use --bbox/--aoi to scan part of the image)")
        return
    given = [flag for field, flag in _IMAGE_OPTIONS if getattr(request, field) is not None]
    if given:
        raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} only with --image "
                         "FILE (a scan of one raster file); catalog sources name their bands, DEM and "
                         "dates in data_catalog.yaml")


def _precheck_image(request: ScanRequest) -> CheckedRequest:
    from tasks.sources.image import IMAGE_SOURCE, open_image  # rasterio: only for an --image scan

    image = open_image(request.image, request.image_bands, request.dem, request.acquired)
    catalog = image.catalog()
    return CheckedRequest(catalog, None, IMAGE_SOURCE, catalog.source(IMAGE_SOURCE), image)


def precheck_request(request: ScanRequest) -> CheckedRequest:
    """Every check that needs neither pixels nor the detector's weights nor a server.

    With ``--image`` the catalog is one local source made of the file (``tasks.sources.image``):
    its metadata is read here (no pixel).

    Returns:
        The catalog, region and source it resolved (``plan_scan`` goes on from them).

    Raises:
        InputError: bad numbers or formats, an output folder that cannot take the run, an unknown
            catalog, region or source, conflicting options, a checkpoint that does not exist, or an
            ``--image`` that cannot be read or whose bands cannot be named.
    """
    check_numbers(request)
    check_formats(request.formats)  # parquet needs pyarrow
    _check_out(request.out, request.overwrite)
    _check_image_options(request)
    if request.image is not None:
        _check_detector_ref(detector_spec_of(request))
        return _precheck_image(request)
    catalog = load_catalog(request.catalog)
    region = catalog.region(request.region) if request.region else None
    source_name = request.source or (region.source if region else None)
    if source_name is None:
        raise InputError("name a --region from data_catalog.yaml, or a --source with --bbox/--aoi")
    source = catalog.source(source_name)
    if region is None and request.bbox is None and request.aoi is None:
        raise InputError("--source without --region needs --bbox or --aoi to define the ROI")
    if request.event_date is not None and (request.start or request.end):
        raise InputError("--start/--end do not apply with --event-date: the scenes come from the "
                         "windows before and after the event (--pre-days, --post-days)")
    _check_detector_ref(detector_spec_of(request))
    return CheckedRequest(catalog, region, source_name, source)
