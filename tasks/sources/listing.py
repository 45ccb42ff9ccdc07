"""The scenes of a catalog region, for regional scans: local sources list the catalog's scenes,
STAC and Sentinel Hub sources search the region's bbox (``flows/regional.py`` keeps those not yet
processed)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from shapely.geometry import box

from tasks.core.errors import InputError
from tasks.core.grid import read_aoi
from tasks.sources.catalog import LocalSource, SentinelHubSource, StacSource, load_catalog
from tasks.sources.remote import cache_root
from tasks.sources.sentinelhub import list_scenes
from tasks.sources.stac import datetime_range, search_items


@dataclass(frozen=True)
class SceneRef:
    scene_id: str
    first: dt.date  # first and last acquisition date (equal for a single scene)
    last: dt.date
    acquired: str  # ISO UTC: the acquisition time, or the last date of a composite


def region_scenes(catalog_path: str | None, region: str, after: dt.date | None = None,
                  cache_dir: str | None = None) -> tuple[list[SceneRef], str]:
    """The region's scenes inside its date window (and after ``after``), oldest first, and the
    source name. A region with an ``event_date`` lists only scenes that do not end before it
    (a composite straddling the event is listed, as event mode takes it for post-event).
    Local sources: the catalog's scenes. STAC and Sentinel Hub sources: a search of the region's
    bbox (scenes within ``max_cloud_pct``), one scene per item; a Sentinel Hub search of an ended
    window is cached under ``cache_dir`` (the scan's download cache).

    Raises:
        InputError: unknown region, or Sentinel Hub credentials missing.
        SourceError: the STAC API or Sentinel Hub is unreachable or refuses.
    """
    catalog = load_catalog(catalog_path)
    reg = catalog.region(region)
    source = catalog.source(reg.source)
    bounds = [d for d in (reg.start, after, reg.event_date) if d]
    start = max(bounds) if bounds else None
    scenes = []
    if isinstance(source, LocalSource):
        for s in source.scenes:
            if s.acquired_unknown:  # regional scans track scenes by their dates
                continue
            first, last = s.date_span
            if (start and last < start) or (reg.end and first > reg.end):
                continue
            acquired = (s.acquired.astimezone(dt.timezone.utc).isoformat() if s.acquired
                        else dt.datetime.combine(last, dt.time(), dt.timezone.utc).isoformat())
            scenes.append(SceneRef(s.scene_id, first, last, acquired))
    elif isinstance(source, StacSource):
        bbox = _region_bbox(catalog, reg)
        for item in search_items(source, source.url, source.collection, bbox,
                                 datetime_range(start, reg.end)):
            cloud = item.properties.get("eo:cloud_cover")
            if cloud is not None and cloud > source.max_cloud_pct:
                continue
            when = item.datetime or dt.datetime.fromisoformat(item.properties["start_datetime"])
            when = when.astimezone(dt.timezone.utc)
            scenes.append(SceneRef(item.id, when.date(), when.date(), when.isoformat()))
    elif isinstance(source, SentinelHubSource):
        for scene_id, acquired in list_scenes(source, reg.source, box(*_region_bbox(catalog, reg)), start,
                                              reg.end, cache_root(cache_dir) / "sentinelhub"):
            if not acquired:
                raise InputError(f"Sentinel Hub scene {scene_id!r} has no datetime; cannot order it")
            day = dt.date.fromisoformat(acquired[:10])
            scenes.append(SceneRef(scene_id, day, day, acquired))
    else:
        raise InputError(f"region {region!r}: source {reg.source!r} is of kind {source.kind!r}, which "
                         "incremental scans cannot list")
    return sorted(scenes, key=lambda s: (s.last, s.first, s.scene_id)), reg.source


def _region_bbox(catalog, reg) -> tuple[float, float, float, float]:
    if reg.bbox is not None:
        return tuple(float(v) for v in reg.bbox)
    return tuple(float(v) for v in read_aoi(catalog.resolve(reg.aoi)).bounds)
