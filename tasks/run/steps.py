"""The scan's stages as plain functions of the run's work folder (paths in, paths out).

``flows/scan.py`` wraps each in a Prefect task; tests call them directly. Each step loads the plan
(:class:`tasks.run.plan.ScanPlan`, ``.work/plan.json``) once and reads the files of the steps
before it, and returns a small JSON-able dict.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from models.cards import domain_check, domain_warning
from models.detectors import cached_detector, network_cards
from tasks.core.bands import BAND_NAMES
from tasks.core.files import atomic_write_json, utc_now, utc_now_iso
from tasks.core.gdal import gdal_bounded
from tasks.core.tiling import count_windows
from tasks.predict.blocks import assemble, make_jobs, run_jobs
from tasks.predict.cluster import dask_client
from tasks.raster.align import build_stack
from tasks.raster.event_stack import build_bitemporal
from tasks.run.outputs import (
    MASK_CLASSES,
    PROB_SCALE,
    encode_unit_interval,
    publish,
    write_cog_blockwise,
    write_manifest,
)
from tasks.run.plan import ScanPlan, ScanRequest, plan_scan
from tasks.run.products import stage_quicklook_and_exports, stage_report_and_item
from tasks.run.qgis_project import write_project, write_raster_styles
from tasks.sources.cloud import read_record
from tasks.sources.mosaic import assign_polygon_scenes, read_scenes
from tasks.vector.clean import clean_raster
from tasks.vector.geopackage import write_lineage
from tasks.vector.vectorize import (
    STATUS_ALL_CLOUD,
    STATUS_NO_VALID,
    acquired_note,
    add_event_attributes,
    draw_landslides,
    footprint_raster,
    vectorize_raster,
    write_geopackage,
)

log = logging.getLogger(__name__)


@gdal_bounded
def step_plan(request: dict) -> str:
    """Validate the request and write the plan; returns the work folder."""
    return str(plan_scan(ScanRequest(**request)).paths.work)


@gdal_bounded
def step_stack(work: str) -> dict:
    """Align all layers onto the analysis grid: ``stack.tif`` + ``valid.tif``. In event mode also
    the pre-event scene (``pre/``) and the bi-temporal stack over both (``event/event_stack.vrt``,
    ``event/valid.tif``, ``event/change.tif``), which the later steps then read.

    A resumed run whose stack is complete (its result record exists) skips the stage.
    """
    t0 = time.perf_counter()
    plan = ScanPlan.load(work)
    record = plan.paths.stack_record
    if record.exists():
        return {**json.loads(record.read_text()), "seconds": 0.0, "skipped": True}
    event = plan.event_inputs
    if event is None:
        result = build_stack(plan.scene_inputs, plan.analysis_grid, plan.paths.work,
                             required_bands=plan.detector.bands, roi_grid_crs=plan.roi_in_grid_crs,
                             progress=plan.request.progress)
        out = {**dataclasses.asdict(result), "seconds": time.perf_counter() - t0}
    else:  # event mode: the post- and pre-event stacks, and the bi-temporal one over both
        post, both = build_bitemporal(event, plan.analysis_grid, plan.paths.work,
                                      plan.detector.bands, roi_grid_crs=plan.roi_in_grid_crs,
                                      block_px=plan.request.block_px, progress=plan.request.progress)
        out = {**dataclasses.asdict(post), "post_stack_path": post.stack_path,
               "post_valid_fraction": post.valid_fraction, **both,
               "seconds": time.perf_counter() - t0}
    atomic_write_json(record, out, indent=None)
    return out


def _fingerprint(plan: ScanPlan, precision: str | None) -> str:
    """What a block's completion record must match to be reused by a resumed run. ``precision``:
    what the detector computes in (chosen at load by device and capability, models/accel.py), so a
    run resumed on a GPU that picks another precision recomputes its blocks instead of mixing them."""
    req = plan.request
    key = {"run_id": plan.run_id, "grid": plan.grid, "detector": plan.detector.ref,
           "overlap_px": req.overlap_px, "batch_size": req.batch_size,
           "block_px": req.block_px, "device": req.device, "precision": precision}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _precision_of(detector) -> str | None:
    """The precision a detector computes in (an ensemble's members', comma-separated; None for rules)."""
    members = getattr(detector, "members", None)
    if members:
        return ",".join(m.precision for m in members)
    return getattr(detector, "precision", None)


@gdal_bounded
def step_infer(work: str, stack: dict) -> dict:
    """Tile, predict and stitch block by block (here or on a Dask cluster), with completion
    records per block: ``prob.tif`` + ``uncertainty_raw.tif``."""
    t0 = time.perf_counter()
    plan = ScanPlan.load(work)
    req, paths = plan.request, plan.paths
    if stack["valid_fraction"] == 0:
        log.warning("no valid pixel in the ROI: nothing to predict")
    detector = cached_detector(plan.detector.spec, req.device)  # the block jobs here reuse it
    domain = _domain_checks(detector, stack)
    jobs = make_jobs(stack["stack_path"], stack["valid_path"], plan.detector.spec, req.device,
                     req.overlap_px, req.batch_size, req.block_px, paths.blocks,
                     _fingerprint(plan, _precision_of(detector)),
                     torch_threads=1 if plan.distributed else None)
    with dask_client(req.dask_address, req.workers, req.device) as client:
        records = run_jobs(jobs, client=client, progress=req.progress)
    assemble(jobs, paths.prob, paths.uncertainty_raw)
    patches = {tuple(p) for r in records for p in r["patches"]}
    grid = plan.analysis_grid
    n_windows = count_windows(grid.height, grid.width, detector.patch_size, req.overlap_px)
    return {"prob_path": str(paths.prob), "uncertainty_path": str(paths.uncertainty_raw),
            "n_patches": len(patches), "n_skipped": n_windows - len(patches),
            "model_forward_s": float(sum(r["model_forward_s"] for r in records)),
            "blocks": len(jobs), "blocks_resumed": sum(r["skipped"] for r in records),
            "forward_passes": int(sum(r["forward_passes"] for r in records)),
            "workers": sorted({r["worker_pid"] for r in records}),
            "detector": detector.describe(), "domain_check": domain,
            "seconds": time.perf_counter() - t0}


def _domain_checks(detector, stack: dict) -> list[dict]:
    """Each network's card against the scene's band statistics, with one warning per card the scene
    is outside of (event mode: the pre-event bands against the pre-event stack's statistics)."""
    scene = {"": stack.get("band_moments") or {}}
    pre = (stack.get("pre") or {}).get("band_moments")
    if pre:
        scene["pre-event"] = {**pre, "bands": [f"PRE_{b}" for b in pre["bands"]]}
    checks = [domain_check(card, scene) for card in network_cards(detector)]
    for check in checks:
        warning = domain_warning(check)
        if warning:
            log.warning(warning)
    return checks


def dem_label(inputs: dict) -> str | None:
    """The polygons' ``dem`` attribute: the remote DEM product, else the local DEM file's name."""
    product = inputs.get("dem_product")
    if product:
        return f"{product['collection']}: {product['product']}"
    return Path(inputs["dem_path"]).name if inputs.get("dem_path") else None


def _stack_record(plan: ScanPlan) -> dict:
    return json.loads(plan.paths.stack_record.read_text())


@gdal_bounded
def step_clean(work: str, infer: dict) -> dict:
    """Threshold + morphology + minimum area, block by block: ``mask_raw.tif`` (uint8 0/1)."""
    t0 = time.perf_counter()
    plan = ScanPlan.load(work)
    path = plan.paths.mask_raw
    n_px = clean_raster(infer["prob_path"], _stack_record(plan)["valid_path"], path,
                        plan.analysis_grid.res_m, plan.clean, block_px=plan.request.block_px)
    return {"mask_path": str(path), "landslide_px": n_px, "seconds": time.perf_counter() - t0}


@gdal_bounded
def step_vectorize(work: str, infer: dict, cleaned: dict) -> dict:
    """Polygons with attributes + the footprint layer, block by block -> staged ``landslides.gpkg``."""
    t0 = time.perf_counter()
    plan = ScanPlan.load(work)
    inputs = plan.inputs
    block_px = plan.request.block_px
    stack_record = _stack_record(plan)
    stack = stack_record["stack_path"]
    acquired = (dt.datetime.fromisoformat(inputs["acquired"]) if inputs["acquired"] else None)
    static = {"scene_id": inputs["scene_id"], "acquired": acquired,
              "acquired_note": acquired_note(inputs.get("acquired_range")),
              "dem": dem_label(inputs),
              "model": plan.detector.ref, "run_id": plan.run_id, "detected_at": utc_now()}
    layers = {"prob": (infer["prob_path"], 1), "uncertainty": (infer["uncertainty_path"], 1),
              "slope_deg": (stack, BAND_NAMES.index("SLOPE") + 1),
              "elev_m": (stack, BAND_NAMES.index("DEM") + 1)}
    # exact pixel outlines first: the statistics under each polygon below count the mask's pixels
    polygons = vectorize_raster(cleaned["mask_path"], layers, static_attrs=static, block_px=block_px)
    scenes = read_scenes(work)
    if scenes and scenes.get("mosaic"):  # a per-pixel mosaic: each polygon names its own scene
        polygons = assign_polygon_scenes(polygons, Path(work) / scenes["scene_index"], scenes)
    event = plan.event_inputs
    if event is not None:  # event mode: each polygon's change evidence
        polygons = add_event_attributes(polygons, event.pre.scene_id, stack_record["change_path"],
                                        stack_record["change_index"], plan.analysis_grid,
                                        block_px=block_px)
    polygons = draw_landslides(polygons, plan.geometry)  # simplified (and smoothed) as one coverage
    no_valid = STATUS_ALL_CLOUD if stack_record.get("cloud_masked_px") else STATUS_NO_VALID
    footprint = footprint_raster(stack_record["valid_path"], block_px=block_px, no_valid_status=no_valid,
                                 attrs={"scene_id": inputs["scene_id"], "run_id": plan.run_id})
    path = plan.paths.staged("landslides.gpkg")
    write_geopackage(polygons, footprint, path)
    return {"gpkg_path": str(path), "n_polygons": int(len(polygons)),
            "landslide_area_m2": float(polygons["area_m2"].sum()) if len(polygons) else 0.0,
            "footprint_area_m2": float(footprint["area_m2"].sum()),
            "footprint_status": str(footprint["status"].iloc[0]),
            "seconds": time.perf_counter() - t0}


def _encode_probability(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return encode_unit_interval(np.where(valid, values, np.nan))


def _encode_mask(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, values, 255).astype(np.uint8)


@gdal_bounded
def step_rasters(work: str, infer: dict, cleaned: dict) -> dict:
    """Staged COGs, block by block: probability.tif, uncertainty.tif (uint8, value / 254),
    mask.tif (0/1, 255 = not analysed), each with statistics, and their QGIS styles (.qml)."""
    t0 = time.perf_counter()
    plan = ScanPlan.load(work)
    valid = _stack_record(plan)["valid_path"]
    block_px = plan.request.block_px
    staged = plan.paths.staged
    write_cog_blockwise(infer["prob_path"], staged("probability.tif"), _encode_probability,
                        description="landslide probability (value / 254); 255 = not analysed",
                        scale=1 / PROB_SCALE, tags={"model": plan.detector.ref},
                        valid_path=valid, block_px=block_px, unit="1")
    unc_kind = infer["detector"].get("uncertainty", "binary predictive entropy, bits")
    write_cog_blockwise(infer["uncertainty_path"], staged("uncertainty.tif"), _encode_probability,
                        description=f"{unc_kind} (value / 254); 255 = not analysed",
                        scale=1 / PROB_SCALE, tags={"uncertainty": unc_kind},
                        valid_path=valid, block_px=block_px,
                        unit="bit" if "bits" in unc_kind else "1")
    write_cog_blockwise(cleaned["mask_path"], staged("mask.tif"), _encode_mask,
                        description="landslide mask (1), background (0); 255 = not analysed",
                        valid_path=valid, block_px=block_px, classes=MASK_CLASSES)
    write_raster_styles(plan.paths.staging)
    return {"seconds": time.perf_counter() - t0}


def _event_record(plan: ScanPlan, stack: dict) -> dict:
    """The manifest's ``inputs.event``: the event date, both windows, and both scenes."""
    event = plan.event_inputs
    assert event is not None

    def scene(inputs) -> dict:
        return {"scene_id": inputs.scene_id, "acquired": inputs.acquired,
                "acquired_range": inputs.acquired_range, "source": inputs.source,
                "band_paths": inputs.band_paths, "notes": inputs.notes}

    return {**event.windows.to_dict(), "post_scene": scene(event.post), "pre_scene": scene(event.pre),
            "change_index": stack.get("change_index"),
            "valid_fraction": {"post": stack.get("post_valid_fraction"),
                               "pre": stack["pre"]["valid_fraction"],
                               "both": stack["valid_fraction"]}}


def _lineage(manifest: dict) -> dict:
    """The run's lineage stored in landslides.gpkg (gpkg_metadata): a summary of the manifest."""
    detector = manifest["detector"]
    return {"run_id": manifest["run_id"], "finished_at": manifest["finished_at"],
            "scene_ids": manifest["inputs"]["scene_ids"], "source": manifest["inputs"]["source"],
            "acquired": manifest["inputs"]["acquired"],
            "detector_kind": detector.get("kind"), "model": detector.get("ref"),
            "checkpoint": Path(detector["card_path"]).name if detector.get("card_path") else None,
            "parameters": manifest["parameters"], "grid_crs": manifest["grid"].get("crs"),
            "manifest": "manifest.json",
            "about": "full lineage (inputs, versions, timings) in manifest.json beside this file"}


@gdal_bounded
def step_finish(work: str, stack: dict, infer: dict, cleaned: dict, vectors: dict,
                rasters: dict, flow_started: float, execution: dict | None = None) -> dict:
    """Write the manifest and move every staged file to its final name; ``execution`` (how the
    steps were run: Prefect flow run or in-process) goes into the manifest's ``execution``."""
    plan = ScanPlan.load(work)
    req = plan.request
    inputs = plan.inputs
    scenes = read_scenes(work)
    timings = {"align_s": stack["seconds"], "inference_s": infer["seconds"],
               "model_forward_s": infer["model_forward_s"], "clean_s": cleaned["seconds"],
               "vectorize_s": vectors["seconds"], "rasters_s": rasters["seconds"]}
    timings["total_s"] = time.time() - flow_started
    manifest = {
        "run_id": plan.run_id,
        "finished_at": utc_now_iso(),
        "request": req.model_dump(mode="json"),
        "inputs": {
            "source": plan.source, "region": plan.region, "kind": plan.source_kind,
            "scene_ids": ([m["scene_id"] for m in scenes["scenes"]] if scenes
                          else [inputs["scene_id"]]),
            "scenes": scenes["scenes"] if scenes else None,
            "mosaic": bool(scenes and scenes.get("mosaic")),
            "acquired": inputs["acquired"],
            "acquired_range": inputs["acquired_range"],
            "date_window": [d.isoformat() if d else None for d in plan.window],
            "band_paths": inputs["band_paths"], "dem_path": inputs["dem_path"],
            # the remote DEM's product (collection, units, vertical datum, signing); None locally
            "dem_product": inputs.get("dem_product"),
            "bands_available": inputs["available_bands"],
            "harmonization": {"processing_baseline": inputs["processing_baseline"],
                              "offset_removed_dn": inputs["offset_dn"]},
            "notes": inputs["notes"], "band_stats": stack["band_stats"],
            "band_moments": stack.get("band_moments"),
            "layer_data_fraction": stack.get("layer_data_fraction"),
            # --image: the file, its bands and where their names and the date came from; None otherwise
            "image": plan.image,
        },
        "roi_lonlat": plan.roi_lonlat,
        "grid": plan.grid,
        "detector": infer["detector"],
        # the scene's band statistics against each network's training statistics (models/cards.py)
        "domain_check": infer.get("domain_check"),
        "parameters": {"overlap_px": req.overlap_px, "batch_size": req.batch_size,
                       "block_px": req.block_px, "clean": dataclasses.asdict(plan.clean),
                       "geometry": dataclasses.asdict(plan.geometry),
                       "uncertainty": infer["detector"].get(
                           "uncertainty", "binary predictive entropy of the blended probability, bits")},
        "execution": {"blocks": infer["blocks"], "blocks_resumed": infer["blocks_resumed"],
                      "forward_passes": infer["forward_passes"], "worker_processes": len(infer["workers"]),
                      "dask_address": req.dask_address, "workers": req.workers,
                      "resumed": plan.resumed, **(execution or {})},
        "counts": {"patches": infer["n_patches"], "patches_skipped_nodata": infer["n_skipped"],
                   "valid_fraction": stack["valid_fraction"], "landslide_px": cleaned["landslide_px"],
                   "polygons": vectors["n_polygons"], "landslide_area_m2": vectors["landslide_area_m2"],
                   "footprint_area_m2": vectors["footprint_area_m2"],
                   "footprint_status": vectors["footprint_status"]},
        "timings": timings,
        "outputs": {"landslides.gpkg": "layers landslides (Polygon), footprint (MultiPolygon)",
                    "probability.tif": "uint8 COG, p = value/254, 255 nodata",
                    "uncertainty.tif": "uint8 COG, uncertainty = value/254 (see parameters), 255 nodata",
                    "mask.tif": "uint8 COG, 1 landslide, 0 background, 255 nodata",
                    "probability.qml": "QGIS style of probability.tif",
                    "uncertainty.qml": "QGIS style of uncertainty.tif",
                    "mask.qml": "QGIS style of mask.tif",
                    "run.qgs": "QGIS project of the run (relative paths)"},
    }
    cloud = read_record(plan.paths.work)  # per scene, the pixels the source's cloud mask removed
    if cloud is not None:
        manifest["inputs"]["cloud_mask"] = cloud
    if plan.event is not None:
        manifest["inputs"]["event"] = _event_record(plan, stack)
    quicklook, described = stage_quicklook_and_exports(plan.paths.staging, stack, req.formats)
    manifest["outputs"].update(described)
    write_lineage(plan.paths.staged("landslides.gpkg"), _lineage(manifest))
    write_project(plan.paths.staging, f"landslides {plan.run_id}")
    write_manifest(plan.paths.staged("manifest.json"), manifest)
    stage_report_and_item(plan.paths.staging, quicklook)  # both read the staged manifest
    names = publish(plan.paths.out, keep_work=req.keep_work)
    return {"out": str(plan.paths.out), "files": names, "counts": manifest["counts"],
            "timings": timings}
