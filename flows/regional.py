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
   merges its polygons into ``<state_dir>/<region>/inventory.gpkg`` (:mod:`tasks.inventory.merge`) and
   records the scene as processed (:mod:`tasks.inventory.region_state`);
5. publishes a Markdown summary (new landslides, their area, runs) as a Prefect artifact and, if
   ``webhook_block`` names a saved notification block (``custom-webhook/ops``, ``slack-webhook/...``),
   sends it there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.scan import scan_flow
from models.detectors import cached_detector
from tasks.core.errors import InputError
from tasks.inventory.merge import DEFAULT_IOU_THRESHOLD, merge_run, read_inventory
from tasks.inventory.region_state import RegionState, region_dir, region_lock
from tasks.run.request import new_run_id
from tasks.run.stac import write_region_collection
from tasks.sources.catalog import LocalSource, load_catalog
from tasks.sources.listing import region_scenes

log = logging.getLogger(__name__)


def detector_ref(detector: str | None) -> str:
    """The ``name@sha`` the ledger records a scene as processed with."""
    return cached_detector(detector, "cpu").ref


def _manifest_scenes(run_dir: Path) -> list[str]:
    manifest = run_dir / "manifest.json"
    if not manifest.exists():
        return []
    return list(json.loads(manifest.read_text()).get("inputs", {}).get("scene_ids") or [])


def recover(state: RegionState, inventory: Path, iou_threshold: float) -> list[str]:
    """Merge runs a kill left published-but-unmerged (runs that never published are resumed or
    cleaned up by :func:`_orphaned_runs`)."""
    done = []
    for rec in state.runs():
        if rec.status != "running":
            continue
        if rec.run_dir and (Path(rec.run_dir) / "landslides.gpkg").exists() \
                and (Path(rec.run_dir) / "manifest.json").exists():
            state.set_status(rec.run_id, "published", "recovered after an interrupted run")
    for rec in state.unmerged_runs():
        merge_run(inventory, Path(rec.run_dir) / "landslides.gpkg", rec.run_id, rec.scenes,
                  rec.model or "")
        state.mark_merged(rec.run_id, [(s, None) for s in rec.scenes], rec.model or "")
        done.append(rec.run_id)
    return done


def summary_markdown(region: str, results: list[dict], inventory: Path,
                     event_date: dt.date | None = None) -> str:
    land, scans = read_inventory(inventory)
    total = 0 if land is None else len(land)
    lines = [f"# Landslide scan of {region}", ""]
    if event_date is not None:
        lines += [f"Event date {event_date} (catalog): scenes ending before it are pre-event and "
                  "not scanned.", ""]
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


def _orphaned_runs(state: RegionState, model: str, todo: set[str], logger) -> dict[str, Any]:
    """Runs a killed regional scan left ``running`` (the caller holds the region's lock, so none is
    really running): scene id -> run, for those whose scene is still to do with this model and
    whose folder is there (they are resumed); the others are forgotten and their unpublished
    folders removed, each with a log line."""
    resumable = {}
    for run in state.runs():
        if run.status != "running":
            continue
        folder = Path(run.run_dir) if run.run_dir else None
        if (run.model == model and len(run.scenes) == 1 and run.scenes[0] in todo
                and folder is not None and folder.is_dir() and run.scenes[0] not in resumable):
            resumable[run.scenes[0]] = run
            continue
        state.forget(run.run_id)
        if folder is not None and folder.is_dir() and not (folder / "manifest.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("removed %s, the unfinished run %s an interrupted regional scan left "
                        "(its scene is done or no longer listed)", folder, run.run_id)
        else:
            logger.info("forgot run %s, left unfinished by an interrupted regional scan", run.run_id)
    return resumable


def _write_collection(state: RegionState, folder: Path, region: str) -> None:
    """The region's STAC ``collection.json``: every merged run's item and the inventory."""
    write_region_collection(folder, region, [r.run_dir for r in state.runs() if r.status == "merged"])


@flow(name="landslide-regional-scan", log_prints=False)
def regional_scan_flow(region: str, state_dir: str = "state", runs_dir: str = "runs",
                       detector: str | None = None, catalog: str | None = None,
                       iou_threshold: float = DEFAULT_IOU_THRESHOLD, lock_wait_s: float = 0.0,
                       webhook_block: str | None = None, options: dict[str, Any] | None = None) -> dict:
    """Scan the region's scenes not processed yet and merge them into its inventory."""
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
                _write_collection(state, folder, region)
            processed = state.processed(model)
            todo = [s for s in scenes if s.scene_id not in processed]
            orphans = _orphaned_runs(state, model, {s.scene_id for s in todo}, logger)
            logger.info("%s: %d scene(s), %d new for %s", region, len(scenes), len(todo), model)
            if cat.region(region).event_date:
                logger.info("%s: event date %s: scenes ending before it were left out", region,
                            cat.region(region).event_date)
            for scene in todo:
                if scene.scene_id in processed:  # an earlier run of this loop mosaicked it in
                    continue
                orphan = orphans.pop(scene.scene_id, None)
                if orphan is not None:  # a killed run of this scene: the scan resumes its blocks
                    run_id, run_dir = orphan.run_id, Path(orphan.run_dir)
                    logger.info("resuming run %s of %s in %s, left by an interrupted regional scan",
                                run_id, scene.scene_id, run_dir)
                else:
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
                except (KeyboardInterrupt, SystemExit):
                    raise  # the row stays 'running': the next regional run resumes this folder
                except BaseException:
                    # the scene stays unprocessed and a later run retries it afresh (the same
                    # failure, e.g. other settings, must not be resumed into)
                    state.forget(run_id)
                    if not (run_dir / "manifest.json").exists():
                        shutil.rmtree(run_dir, ignore_errors=True)
                    raise
                state.set_status(run_id, "published")
                merged = task(merge_run, name="merge-into-inventory")(
                    inventory, run_dir / "landslides.gpkg", run_id, got, model, iou_threshold)
                acquired = {s.scene_id: s.acquired for s in scenes}
                state.mark_merged(run_id, [(g, acquired.get(g)) for g in got], model)
                _write_collection(state, folder, region)
                processed.update(got)
                results.append({"run_id": run_id, "scene_id": scene.scene_id, "new": merged.new,
                                "known": merged.known_updated, "new_area_m2": merged.new_area_m2,
                                "run_dir": str(run_dir)})
        markdown = summary_markdown(region, results, inventory, cat.region(region).event_date)
    _notify(markdown, f"landslides-{region}".lower().replace("_", "-"), webhook_block)
    return {"region": region, "source": source, "model": model, "runs": results,
            "recovered": recovered, "inventory": str(inventory), "summary": markdown}
