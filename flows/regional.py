"""Scheduled regional scans: only scenes not processed yet, one run folder each, one inventory.

``regional_scan_flow(region)`` (the flow that ``prefect.yaml`` deploys on a cron):

1. takes the region's lock (``<state_dir>/<region>/lock``; a second run waits ``lock_wait_s``, then
   refuses with a clear message), so the inventory is never written by two runs;
2. finishes what a killed run left: a run whose folder was published but not merged is merged now
   (merging is idempotent by run id), a run that never published is forgotten;
3. lists the region's scenes (local sources: the catalog's scenes inside the region's window; STAC
   sources: a search after the last processed acquisition) and keeps those not yet processed
   with this detector; none: it returns at once, "nothing new";
4. scans each new scene, oldest first, as the one-off scan flow does (``<runs_dir>/<run_id>/``),
   merges its polygons into ``<state_dir>/<region>/inventory.gpkg`` (:mod:`tasks.inventory`) and
   records the scene as processed (:mod:`tasks.region_state`);
5. publishes a Markdown summary (new landslides, their area, runs) as a Prefect artifact and, if
   ``webhook_block`` names a saved notification block (``custom-webhook/ops``, ``slack-webhook/...``),
   sends it there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from tasks.catalog import LocalSource, SentinelHubSource, StacSource, load_catalog
from tasks.errors import InputError
from tasks.inventory import DEFAULT_IOU_THRESHOLD, merge_run, read_inventory
from tasks.plan import new_run_id
from tasks.region_state import RegionState, region_dir, region_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneRef:
    scene_id: str
    first: dt.date  # first and last acquisition date (equal for a single scene)
    last: dt.date
    acquired: str  # ISO UTC: the acquisition time, or the last date of a composite


def region_scenes(catalog_path: str | None, region: str, after: dt.date | None = None,
                  cache_dir: str | None = None) -> tuple[list[SceneRef], str]:
    """The region's scenes inside its date window (and after ``after``), oldest first, and the
    source name. Local sources: the catalog's scenes. STAC and Sentinel Hub sources: a search of the
    region's bbox (scenes within ``max_cloud_pct``), one scene per item; a Sentinel Hub search of an
    ended window is cached under ``cache_dir`` (the scan's download cache).

    Raises:
        InputError: unknown region, or Sentinel Hub credentials missing.
        SourceError: the STAC API or Sentinel Hub is unreachable or refuses.
    """
    catalog = load_catalog(catalog_path)
    reg = catalog.region(region)
    source = catalog.source(reg.source)
    start = max(d for d in (reg.start, after) if d) if (reg.start or after) else None
    scenes = []
    if isinstance(source, LocalSource):
        for s in source.scenes:
            first, last = s.date_span
            if (start and last < start) or (reg.end and first > reg.end):
                continue
            acquired = (s.acquired.astimezone(dt.timezone.utc).isoformat() if s.acquired
                        else dt.datetime.combine(last, dt.time(), dt.timezone.utc).isoformat())
            scenes.append(SceneRef(s.scene_id, first, last, acquired))
    elif isinstance(source, StacSource):
        from tasks.acquire_stac import datetime_range, search_items

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
        from shapely.geometry import box

        from tasks.acquire_sentinelhub import list_scenes
        from tasks.plan import cache_root

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
    from tasks.grid import read_aoi

    return tuple(float(v) for v in read_aoi(catalog.resolve(reg.aoi)).bounds)


def detector_ref(detector: str | None) -> str:
    """The ``name@sha`` the ledger records a scene as processed with."""
    from tasks.inference import load_detector

    return load_detector(detector, "cpu").ref


def _manifest_scenes(run_dir: Path) -> list[str]:
    manifest = run_dir / "manifest.json"
    if not manifest.exists():
        return []
    return list(json.loads(manifest.read_text()).get("inputs", {}).get("scene_ids") or [])


def recover(state: RegionState, inventory: Path, iou_threshold: float) -> list[str]:
    """Merge runs a kill left published-but-unmerged; forget runs that never published."""
    done = []
    for rec in state.runs():
        if rec.status != "running":
            continue
        if rec.run_dir and (Path(rec.run_dir) / "landslides.gpkg").exists() \
                and (Path(rec.run_dir) / "manifest.json").exists():
            state.set_status(rec.run_id, "published", "recovered after an interrupted run")
        else:
            state.forget(rec.run_id)
    for rec in state.unmerged_runs():
        merge_run(inventory, Path(rec.run_dir) / "landslides.gpkg", rec.run_id, rec.scenes,
                  rec.model or "")
        state.mark_merged(rec.run_id, [(s, None) for s in rec.scenes], rec.model or "")
        done.append(rec.run_id)
    return done


def summary_markdown(region: str, results: list[dict], inventory: Path) -> str:
    land, scans = read_inventory(inventory)
    total = 0 if land is None else len(land)
    lines = [f"# Landslide scan of {region}", ""]
    if not results:
        lines.append(f"Nothing new: every scene of the region was already processed. The inventory "
                     f"holds {total} landslides.")
        return "\n".join(lines) + "\n"
    lines += ["| run | scene | detections | new | known | new area (km²) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run_id']} | {r['scene_id']} | {r['new'] + r['known']} | {r['new']} | "
                     f"{r['known']} | {r['new_area_m2'] / 1e6:.3f} |")
    new = sum(r["new"] for r in results)
    area = sum(r["new_area_m2"] for r in results) / 1e6
    lines += ["", f"**{new} new landslides ({area:.3f} km²)**; the inventory holds {total} "
                  f"(`{inventory}`)."]
    return "\n".join(lines) + "\n"


def _notify(markdown: str, key: str, webhook_block: str | None) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=key, description="landslide scan summary")
    if webhook_block:  # a saved notification block, "<block-type-slug>/<name>"
        from prefect.blocks.core import Block

        Block.load(webhook_block).notify(body=markdown, subject="landslide scan")


@flow(name="landslide-regional-scan", log_prints=False)
def regional_scan_flow(region: str, state_dir: str = "state", runs_dir: str = "runs",
                       detector: str | None = None, catalog: str | None = None,
                       iou_threshold: float = DEFAULT_IOU_THRESHOLD, lock_wait_s: float = 0.0,
                       webhook_block: str | None = None, options: dict[str, Any] | None = None) -> dict:
    """Scan the region's scenes not processed yet and merge them into its inventory."""
    from flows.scan import scan_flow

    logger = get_run_logger()
    folder = region_dir(state_dir, region)
    inventory = folder / "inventory.gpkg"
    results = []
    cat = load_catalog(catalog)
    remote = not isinstance(cat.source(cat.region(region).source), LocalSource)  # unknown: fails here
    model = detector_ref(detector)
    with region_lock(folder, wait_s=lock_wait_s):
        with RegionState(folder) as state:
            last = state.last_acquired(model)
            after = dt.date.fromisoformat(last[:10]) if last else None
            # local sources list every scene (a scene added later with an older date counts too);
            # remote sources are searched only after the last processed acquisition
            scenes, source = region_scenes(catalog, region, after if remote else None,
                                           cache_dir=(options or {}).get("cache_dir"))
            recovered = recover(state, inventory, iou_threshold)
            if recovered:
                logger.info("merged %d run(s) an interrupted run had left: %s", len(recovered),
                            ", ".join(recovered))
            processed = state.processed(model)
            todo = [s for s in scenes if s.scene_id not in processed]
            logger.info("%s: %d scene(s), %d new for %s", region, len(scenes), len(todo), model)
            for scene in todo:
                if scene.scene_id in processed:  # an earlier run of this loop mosaicked it in
                    continue
                run_id = new_run_id()
                run_dir = Path(runs_dir) / run_id
                state.start_run(run_id, [scene.scene_id], model, str(run_dir))
                try:
                    scan_flow(out=str(run_dir), region=region, start=scene.first.isoformat(),
                              end=scene.last.isoformat(), detector=detector,
                              options={**(options or {}), "run_id": run_id, "catalog": catalog,
                                       "progress": False})
                    got = _manifest_scenes(run_dir)
                    if scene.scene_id not in got:
                        raise InputError(f"run {run_id} scanned scene(s) {got}, not {scene.scene_id!r}: "
                                         "scenes of the source overlap in time")
                except BaseException:
                    state.forget(run_id)  # the scene stays unprocessed; a later run retries it
                    raise
                state.set_status(run_id, "published")
                merged = task(merge_run, name="merge-into-inventory")(
                    inventory, run_dir / "landslides.gpkg", run_id, got, model, iou_threshold)
                acquired = {s.scene_id: s.acquired for s in scenes}
                state.mark_merged(run_id, [(g, acquired.get(g)) for g in got], model)
                processed.update(got)
                results.append({"run_id": run_id, "scene_id": scene.scene_id, "new": merged.new,
                                "known": merged.known_updated, "new_area_m2": merged.new_area_m2,
                                "run_dir": str(run_dir)})
        markdown = summary_markdown(region, results, inventory)
    _notify(markdown, f"landslides-{region}".lower().replace("_", "-"), webhook_block)
    return {"region": region, "source": source, "model": model, "runs": results,
            "recovered": recovered, "inventory": str(inventory), "summary": markdown}
