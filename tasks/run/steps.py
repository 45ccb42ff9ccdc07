"""The scan's stages as plain functions of the run's work folder (paths in, paths out).

``flows/scan.py`` wraps each in a Prefect task; tests call them directly. Each step reads the plan
(``.work/plan.json``) and the files of the steps before it, and returns a small JSON-able dict.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import rasterio

from models.detectors import cached_detector
from tasks.core.bands import BAND_NAMES
from tasks.core.gdal import gdal_bounded
from tasks.predict.blocks import assemble, make_jobs, run_jobs
from tasks.predict.cluster import dask_client
from tasks.raster.align import build_stack
from tasks.run.outputs import (
    PROB_SCALE,
    encode_unit_interval,
    publish,
    staging_dir,
    utc_now_iso,
    write_cog_blockwise,
    write_manifest,
)
from tasks.run.plan import ScanRequest, load_plan, plan_grid, plan_roi_grid_crs, plan_scan
from tasks.sources.local import SceneInputs
from tasks.sources.mosaic import assign_polygon_scenes, read_scenes
from tasks.vector.clean import CleanParams, clean_raster
from tasks.vector.vectorize import footprint_raster, vectorize_raster, write_geopackage

log = logging.getLogger(__name__)

@gdal_bounded
def step_plan(request: dict) -> str:
    """Validate the request and write the plan; returns the work folder."""
    return plan_scan(ScanRequest(**request))["work_dir"]


@gdal_bounded
def step_stack(work: str) -> dict:
    """Align all layers onto the analysis grid: ``stack.tif`` + ``valid.tif``.

    A resumed run whose stack is complete (its result record exists) skips the stage.
    """
    t0 = time.perf_counter()
    record = Path(work) / "stack_result.json"
    if record.exists():
        return {**json.loads(record.read_text()), "seconds": 0.0, "skipped": True}
    plan = load_plan(work)
    result = build_stack(SceneInputs.from_dict(plan["inputs"]), plan_grid(plan), work,
                         required_bands=tuple(plan["detector"]["bands"]),
                         roi_grid_crs=plan_roi_grid_crs(plan), progress=plan["request"]["progress"])
    out = {**dataclasses.asdict(result), "seconds": time.perf_counter() - t0}
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, record)
    return out


def _fingerprint(plan: dict) -> str:
    req = plan["request"]
    key = {"run_id": plan["run_id"], "grid": plan["grid"], "detector": plan["detector"]["ref"],
           "overlap_px": req["overlap_px"], "batch_size": req["batch_size"],
           "block_px": req["block_px"], "device": req["device"]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@gdal_bounded
def step_infer(work: str, stack: dict) -> dict:
    """Tile, predict and stitch block by block (here or on a Dask cluster), with completion
    records per block: ``prob.tif`` + ``uncertainty_raw.tif``."""
    t0 = time.perf_counter()
    plan = load_plan(work)
    req = plan["request"]
    if stack["valid_fraction"] == 0:
        log.warning("no valid pixel in the ROI: nothing to predict")
    detector = cached_detector(req["detector"], req["device"])  # the block jobs here reuse it
    distributed = bool(req.get("dask_address")) or req.get("workers", 1) > 1
    jobs = make_jobs(stack["stack_path"], stack["valid_path"], req["detector"], req["device"],
                     req["overlap_px"], req["batch_size"], req["block_px"], Path(work) / "blocks",
                     _fingerprint(plan), torch_threads=1 if distributed else None)
    with dask_client(req.get("dask_address"), req.get("workers", 1)) as client:
        records = run_jobs(jobs, client=client, progress=req["progress"])
    prob_path, unc_path = Path(work) / "prob.tif", Path(work) / "uncertainty_raw.tif"
    assemble(jobs, prob_path, unc_path)
    patches = {tuple(p) for r in records for p in r["patches"]}
    with rasterio.open(stack["stack_path"]) as src:
        from tasks.core.tiling import count_windows

        n_windows = count_windows(src.height, src.width, detector.patch_size, req["overlap_px"])
    return {"prob_path": str(prob_path), "uncertainty_path": str(unc_path),
            "n_patches": len(patches), "n_skipped": n_windows - len(patches),
            "model_forward_s": float(sum(r["model_forward_s"] for r in records)),
            "blocks": len(jobs), "blocks_resumed": sum(r["skipped"] for r in records),
            "forward_passes": int(sum(r["forward_passes"] for r in records)),
            "workers": sorted({r["worker_pid"] for r in records}),
            "detector": detector.describe(), "seconds": time.perf_counter() - t0}


@gdal_bounded
def step_clean(work: str, infer: dict) -> dict:
    """Threshold + morphology + minimum area, block by block: ``mask_raw.tif`` (uint8 0/1)."""
    t0 = time.perf_counter()
    plan = load_plan(work)
    params = CleanParams(**plan["clean"])
    grid = plan_grid(plan)
    path = Path(work) / "mask_raw.tif"
    n_px = clean_raster(infer["prob_path"], Path(work) / "valid.tif", path, grid.res_m, params,
                        block_px=plan["request"]["block_px"])
    return {"mask_path": str(path), "landslide_px": n_px, "seconds": time.perf_counter() - t0}


@gdal_bounded
def step_vectorize(work: str, infer: dict, cleaned: dict) -> dict:
    """Polygons with attributes + the footprint layer, block by block -> staged ``landslides.gpkg``."""
    t0 = time.perf_counter()
    plan = load_plan(work)
    inputs = plan["inputs"]
    block_px = plan["request"]["block_px"]
    stack = str(Path(work) / "stack.tif")
    acquired = (dt.datetime.fromisoformat(inputs["acquired"]) if inputs["acquired"] else None)
    static = {"scene_id": inputs["scene_id"], "acquired": acquired,
              "model": plan["detector"]["ref"], "run_id": plan["run_id"],
              "detected_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0)}
    layers = {"prob": (infer["prob_path"], 1), "uncertainty": (infer["uncertainty_path"], 1),
              "slope_deg": (stack, BAND_NAMES.index("SLOPE") + 1),
              "elev_m": (stack, BAND_NAMES.index("DEM") + 1)}
    polygons = vectorize_raster(cleaned["mask_path"], layers, static_attrs=static, block_px=block_px)
    scenes = read_scenes(work)
    if scenes and scenes.get("mosaic"):  # a per-pixel mosaic: each polygon names its own scene
        polygons = assign_polygon_scenes(polygons, Path(work) / scenes["scene_index"], scenes)
    footprint = footprint_raster(Path(work) / "valid.tif", block_px=block_px,
                                 attrs={"scene_id": inputs["scene_id"], "run_id": plan["run_id"]})
    path = staging_dir(plan["out"]) / "landslides.gpkg"
    write_geopackage(polygons, footprint, path)
    return {"gpkg_path": str(path), "n_polygons": int(len(polygons)),
            "landslide_area_m2": float(polygons["area_m2"].sum()) if len(polygons) else 0.0,
            "footprint_area_m2": float(footprint["area_m2"].sum()),
            "seconds": time.perf_counter() - t0}


def _encode_probability(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return encode_unit_interval(np.where(valid, values, np.nan))


def _encode_mask(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, values, 255).astype(np.uint8)


@gdal_bounded
def step_rasters(work: str, infer: dict, cleaned: dict) -> dict:
    """Staged COGs, block by block: probability.tif, uncertainty.tif (uint8, value / 254),
    mask.tif (0/1, 255 = not analysed)."""
    t0 = time.perf_counter()
    plan = load_plan(work)
    stage = staging_dir(plan["out"])
    valid = Path(work) / "valid.tif"
    block_px = plan["request"]["block_px"]
    write_cog_blockwise(infer["prob_path"], stage / "probability.tif", _encode_probability,
                        description="landslide probability (value / 254); 255 = not analysed",
                        scale=1 / PROB_SCALE, tags={"model": plan["detector"]["ref"]},
                        valid_path=valid, block_px=block_px)
    unc_kind = infer["detector"].get("uncertainty", "binary predictive entropy, bits")
    write_cog_blockwise(infer["uncertainty_path"], stage / "uncertainty.tif", _encode_probability,
                        description=f"{unc_kind} (value / 254); 255 = not analysed",
                        scale=1 / PROB_SCALE, tags={"uncertainty": unc_kind},
                        valid_path=valid, block_px=block_px)
    write_cog_blockwise(cleaned["mask_path"], stage / "mask.tif", _encode_mask,
                        description="landslide mask (1), background (0); 255 = not analysed",
                        valid_path=valid, block_px=block_px)
    return {"seconds": time.perf_counter() - t0}


@gdal_bounded
def step_finish(work: str, stack: dict, infer: dict, cleaned: dict, vectors: dict,
                rasters: dict, flow_started: float) -> dict:
    """Write the manifest and move every staged file to its final name."""
    plan = load_plan(work)
    inputs = plan["inputs"]
    scenes = read_scenes(work)
    timings = {"align_s": stack["seconds"], "inference_s": infer["seconds"],
               "model_forward_s": infer["model_forward_s"], "clean_s": cleaned["seconds"],
               "vectorize_s": vectors["seconds"], "rasters_s": rasters["seconds"]}
    timings["total_s"] = time.time() - flow_started
    manifest = {
        "run_id": plan["run_id"],
        "finished_at": utc_now_iso(),
        "request": plan["request"],
        "inputs": {
            "source": plan["source"], "region": plan["region"],
            "kind": plan.get("source_kind", "local"),
            "scene_ids": ([m["scene_id"] for m in scenes["scenes"]] if scenes
                          else [inputs["scene_id"]]),
            "scenes": scenes["scenes"] if scenes else None,
            "mosaic": bool(scenes and scenes.get("mosaic")),
            "acquired": inputs["acquired"],
            "acquired_range": inputs["acquired_range"], "date_window": plan["window"],
            "band_paths": inputs["band_paths"], "dem_path": inputs["dem_path"],
            "bands_available": inputs["available_bands"],
            "harmonization": {"processing_baseline": inputs["processing_baseline"],
                              "offset_removed_dn": inputs["offset_dn"]},
            "notes": inputs["notes"], "band_stats": stack["band_stats"],
        },
        "roi_lonlat": plan["roi_lonlat"],
        "grid": plan["grid"],
        "detector": infer["detector"],
        "parameters": {"overlap_px": plan["request"]["overlap_px"],
                       "batch_size": plan["request"]["batch_size"],
                       "block_px": plan["request"]["block_px"], "clean": plan["clean"],
                       "uncertainty": infer["detector"].get(
                           "uncertainty", "binary predictive entropy of the blended probability, bits")},
        "execution": {"blocks": infer["blocks"], "blocks_resumed": infer["blocks_resumed"],
                      "forward_passes": infer["forward_passes"], "worker_processes": len(infer["workers"]),
                      "dask_address": plan["request"].get("dask_address"),
                      "workers": plan["request"].get("workers", 1), "resumed": plan.get("resumed", False)},
        "counts": {"patches": infer["n_patches"], "patches_skipped_nodata": infer["n_skipped"],
                   "valid_fraction": stack["valid_fraction"], "landslide_px": cleaned["landslide_px"],
                   "polygons": vectors["n_polygons"], "landslide_area_m2": vectors["landslide_area_m2"],
                   "footprint_area_m2": vectors["footprint_area_m2"]},
        "timings": timings,
        "outputs": {"landslides.gpkg": "layers landslides (Polygon), footprint (MultiPolygon)",
                    "probability.tif": "uint8 COG, p = value/254, 255 nodata",
                    "uncertainty.tif": "uint8 COG, uncertainty = value/254 (see parameters), 255 nodata",
                    "mask.tif": "uint8 COG, 1 landslide, 0 background, 255 nodata"},
    }
    write_manifest(staging_dir(plan["out"]) / "manifest.json", manifest)
    names = publish(plan["out"], keep_work=plan["request"]["keep_work"])
    return {"out": plan["out"], "files": names, "counts": manifest["counts"], "timings": timings}
