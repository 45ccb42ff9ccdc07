"""Pre/post change: keep only post-event landslides that were not already there before the event.

A post-event polygon is dropped when at least ``max_pre_overlap`` of its area is covered by
detections of the same detector on a pre-event scene of the same place: bare ground that was bare
before (quarries, fields, roads, old scars) is not a new landslide. Every kept polygon carries
``pre_overlap`` (the covered fraction) so users can choose their own cut.

Both inputs are run folders (or their ``landslides.gpkg``) of scans over the same area; their
footprints matter: where the pre-event scan did not look, nothing can be "already there", so
``pre_overlap`` is measured against the pre detections only and the pre footprint's coverage of
each polygon is reported as ``pre_looked`` (a polygon the pre scan never saw is kept).

With an event date (given, or found in the post run's manifest or the region's catalog entry,
:func:`change_event_date`) the runs' scene dates are checked first: the pre run's scenes must end
before the event and the post run's must not (a composite that straddles the event counts as post,
as in event mode), so a swapped or mis-dated pair is refused instead of silently "changing".
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
from shapely.ops import unary_union

from tasks.core.errors import InputError
from tasks.core.files import atomic_write
from tasks.vector.vectorize import FOOTPRINT_LAYER, LANDSLIDES_LAYER


@dataclass(frozen=True)
class ChangeResult:
    kept: int
    removed: int
    kept_area_m2: float
    removed_area_m2: float
    out: str
    event_check: str | None = None  # the event-date check, in words (None: no event date)


@dataclass(frozen=True)
class EventDate:
    """The event date a change uses, and where it came from (for messages)."""

    date: dt.date
    origin: str


def _gpkg(path: str | Path) -> Path:
    path = Path(path)
    path = path / "landslides.gpkg" if path.is_dir() else path
    if not path.exists():
        raise InputError(f"{path} does not exist: give a run folder or its landslides.gpkg")
    return path


def _manifest(gpkg: Path) -> dict | None:
    """The run's manifest.json beside its landslides.gpkg, or None."""
    path = gpkg.parent / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc})") from None


def run_dates(gpkg: Path) -> tuple[dt.date, dt.date] | None:
    """First and last acquisition date of a run's scenes: from its manifest (``acquired`` or
    ``acquired_range``), else from the polygons' ``acquired`` column; None when neither says."""
    inputs = (_manifest(gpkg) or {}).get("inputs") or {}
    if inputs.get("acquired"):
        day = dt.date.fromisoformat(str(inputs["acquired"])[:10])
        return day, day
    if inputs.get("acquired_range"):
        first, last = inputs["acquired_range"]
        return dt.date.fromisoformat(str(first)[:10]), dt.date.fromisoformat(str(last)[:10])
    polys = gpd.read_file(gpkg, layer=LANDSLIDES_LAYER, columns=["acquired"], ignore_geometry=True)
    days = polys["acquired"].dropna() if "acquired" in polys else []
    if len(days) == 0:
        return None
    days = [d.date() if hasattr(d, "date") else dt.date.fromisoformat(str(d)[:10]) for d in days]
    return min(days), max(days)


def change_event_date(post: str | Path, given: dt.date | None = None,
                      catalog_path: str | None = None) -> EventDate | None:
    """The event date of a change: ``given``, else the post run's (an event-mode scan records it
    in ``inputs.event``), else the ``event_date`` configured for the post run's region in the
    catalog (``catalog_path``, else the one the run used); None when none is known."""
    if given is not None:
        return EventDate(given, "--event-date")
    manifest = _manifest(_gpkg(post)) or {}
    event = (manifest.get("inputs") or {}).get("event") or {}
    if event.get("event_date"):
        return EventDate(dt.date.fromisoformat(event["event_date"]), "the post run's event mode")
    request = manifest.get("request") or {}
    region = request.get("region")
    if not region:
        return None
    from tasks.sources.catalog import load_catalog

    catalog = load_catalog(catalog_path or request.get("catalog"))
    if region not in catalog.regions:
        return None
    configured = catalog.regions[region].event_date
    return EventDate(configured, f"region {region!r} in the catalog") if configured else None


def check_event_dates(post_dates: tuple[dt.date, dt.date] | None,
                      pre_dates: tuple[dt.date, dt.date] | None, event: EventDate) -> str:
    """Refuse a pre run whose scenes do not end before the event, or a post run whose scenes end
    before it; return the check in words."""
    when = f"the event date {event.date} (from {event.origin})"
    for role, dates in (("pre", pre_dates), ("post", post_dates)):
        if dates is None:
            raise InputError(f"cannot tell when the --{role} run's scenes were taken (no manifest.json "
                             f"beside its landslides.gpkg and no acquired dates): cannot check them "
                             f"against {when}")
    if pre_dates[1] >= event.date:
        raise InputError(f"the --pre run's scenes end {pre_dates[1]}, not before {when}: it may "
                         "already show the event's landslides (swapped --pre and --post?)")
    if post_dates[1] < event.date:
        raise InputError(f"the --post run's scenes end {post_dates[1]}, before {when}: it cannot "
                         "show the event's landslides (swapped --pre and --post?)")
    return (f"event date {event.date} (from {event.origin}): pre scenes "
            f"{pre_dates[0]}..{pre_dates[1]}, post scenes {post_dates[0]}..{post_dates[1]}")


def new_since_pre(post: str | Path, pre: str | Path, out: str | Path,
                  max_pre_overlap: float = 0.5, event: EventDate | None = None) -> ChangeResult:
    """Write ``out`` (layers landslides + footprint of the post run) without pre-existing scars;
    with ``event``, first check both runs' dates against it (:func:`check_event_dates`)."""
    if not 0 < max_pre_overlap <= 1:
        raise InputError(f"max_pre_overlap must be in (0, 1], got {max_pre_overlap}")
    post_path, pre_path = _gpkg(post), _gpkg(pre)
    event_check = (check_event_dates(run_dates(post_path), run_dates(pre_path), event)
                   if event is not None else None)
    post_gdf = gpd.read_file(post_path, layer=LANDSLIDES_LAYER)
    pre_gdf = gpd.read_file(pre_path, layer=LANDSLIDES_LAYER).to_crs(post_gdf.crs)
    pre_fp = gpd.read_file(pre_path, layer=FOOTPRINT_LAYER).to_crs(post_gdf.crs)
    footprint = gpd.read_file(post_path, layer=FOOTPRINT_LAYER)
    pre_union = unary_union(list(pre_gdf.geometry)) if len(pre_gdf) else None
    looked = unary_union(list(pre_fp.geometry)) if len(pre_fp) else None
    area = post_gdf.geometry.area
    post_gdf["pre_overlap"] = (post_gdf.geometry.intersection(pre_union).area / area
                               if pre_union is not None else 0.0)
    post_gdf["pre_looked"] = (post_gdf.geometry.intersection(looked).area / area
                              if looked is not None else 0.0)
    keep = post_gdf["pre_overlap"] < max_pre_overlap
    kept = post_gdf[keep]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, unique=True) as tmp:  # .NAME.PID-RANDOM.tmp.gpkg: a fresh GeoPackage
        kept.to_file(tmp, layer=LANDSLIDES_LAYER, driver="GPKG", geometry_type="Polygon")
        footprint.to_file(tmp, layer=FOOTPRINT_LAYER, driver="GPKG", geometry_type="MultiPolygon")
    return ChangeResult(int(keep.sum()), int((~keep).sum()), float(area[keep].sum()),
                        float(area[~keep].sum()), str(out), event_check)
