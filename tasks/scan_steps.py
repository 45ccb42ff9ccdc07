"""The scan's stages as plain functions of the run's work folder (paths in, paths out).

``flows/scan.py`` wraps each in a Prefect task; tests call them directly. Each step reads the plan
(``.work/plan.json``) and the files of the steps before it, and returns a small JSON-able dict.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from pathlib import Path

import numpy as np
import rasterio

from tasks.acquire_local import SceneInputs
from tasks.align import build_stack
from tasks.bands import BAND_NAMES
from tasks.clean import CleanParams, clean_raster
from tasks.inference import load_detector, predict_stack
from tasks.outputs import (PROB_SCALE, encode_unit_interval, publish, staging_dir, utc_now_iso,
                           write_cog_blockwise, write_manifest)
from tasks.plan import ScanRequest, load_plan, plan_grid, plan_roi_grid_crs, plan_scan
from tasks.vectorize import footprint_raster, vectorize_raster, write_geopackage

log = logging.getLogger(__name__)


def step_plan(request: dict) -> str:
    """Validate the request and write the plan; returns the work folder."""
    return plan_scan(ScanRequest(**request))["work_dir"]


def step_stack(work: str) -> dict:
    """Align all layers onto the analysis grid: ``stack.tif`` + ``valid.tif``."""
    t0 = time.perf_counter()
    plan = load_plan(work)
    result = build_stack(SceneInputs.from_dict(plan["inputs"]), plan_grid(plan), work,
                         required_bands=tuple(plan["detector"]["bands"]),
                         roi_grid_crs=plan_roi_grid_crs(plan), progress=plan["request"]["progress"])
    return {**dataclasses.asdict(result), "seconds": time.perf_counter() - t0}


def step_infer(work: str, stack: dict) -> dict:
    """Tile, predict in batches, stitch: ``prob.tif`` + ``uncertainty_raw.tif``."""
    t0 = time.perf_counter()
    plan = load_plan(work)
    req = plan["request"]
    if stack["valid_fraction"] == 0:
        log.warning("no valid pixel in the ROI: nothing to predict")
    detector = load_detector(req["detector"], req["device"])
    result = predict_stack(stack["stack_path"], stack["valid_path"], detector, work,
                           overlap=req["overlap_px"], batch_size=req["batch_size"],
                           progress=req["progress"], block_px=req["block_px"])
    return {**dataclasses.asdict(result), "detector": detector.describe(),
            "seconds": time.perf_counter() - t0}


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
    write_cog_blockwise(infer["uncertainty_path"], stage / "uncertainty.tif", _encode_probability,
                        description="predictive entropy in bits (value / 254); 255 = not analysed",
                        scale=1 / PROB_SCALE, tags={"uncertainty": "binary predictive entropy, bits"},
                        valid_path=valid, block_px=block_px)
    write_cog_blockwise(cleaned["mask_path"], stage / "mask.tif", _encode_mask,
                        description="landslide mask (1), background (0); 255 = not analysed",
                        valid_path=valid, block_px=block_px)
    return {"seconds": time.perf_counter() - t0}


def step_finish(work: str, stack: dict, infer: dict, cleaned: dict, vectors: dict,
                rasters: dict, flow_started: float) -> dict:
    """Write the manifest and move every staged file to its final name."""
    plan = load_plan(work)
    inputs = plan["inputs"]
    timings = {"align_s": stack["seconds"], "inference_s": infer["seconds"],
               "model_forward_s": infer["model_forward_s"], "clean_s": cleaned["seconds"],
               "vectorize_s": vectors["seconds"], "rasters_s": rasters["seconds"]}
    timings["total_s"] = time.time() - flow_started
    manifest = {
        "run_id": plan["run_id"],
        "finished_at": utc_now_iso(),
        "request": plan["request"],
        "inputs": {
            "source": plan["source"], "region": plan["region"], "kind": "local",
            "scene_ids": [inputs["scene_id"]], "acquired": inputs["acquired"],
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
                       "uncertainty": "binary predictive entropy of the blended probability, bits"},
        "counts": {"patches": infer["n_patches"], "patches_skipped_nodata": infer["n_skipped"],
                   "valid_fraction": stack["valid_fraction"], "landslide_px": cleaned["landslide_px"],
                   "polygons": vectors["n_polygons"], "landslide_area_m2": vectors["landslide_area_m2"],
                   "footprint_area_m2": vectors["footprint_area_m2"]},
        "timings": timings,
        "outputs": {"landslides.gpkg": "layers landslides (Polygon), footprint (MultiPolygon)",
                    "probability.tif": "uint8 COG, p = value/254, 255 nodata",
                    "uncertainty.tif": "uint8 COG, entropy bits = value/254, 255 nodata",
                    "mask.tif": "uint8 COG, 1 landslide, 0 background, 255 nodata"},
    }
    write_manifest(staging_dir(plan["out"]) / "manifest.json", manifest)
    names = publish(plan["out"], keep_work=plan["request"]["keep_work"])
    return {"out": plan["out"], "files": names, "counts": manifest["counts"], "timings": timings}
