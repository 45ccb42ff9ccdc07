"""Build the Iburi 2018 weak-label dataset (scene layout) on the analysis grid.

Labels = agreement of two independent weak sources (see docs/weak_labels.md):
  1. the published CNN predictions of Prakash et al. (2021) for the western part (another model's
     output, NOT ground truth), valid only where that model processed pixels and saw no cloud;
  2. the transparent bare-soil rule ``models.index_rule.scar_rule`` on post-event RGB + slope.
Both say landslide -> 1; both say no landslide -> 0; they disagree, or the reference did not look
-> 255 (ignored). The overlap is split by latitude: the southern third is the validation strip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject
from shapely.geometry import box

from models.index_rule import combine_weak_labels, scar_rule
from models.metrics import IGNORE
from tasks.core.bands import BAND_NAMES
from tasks.core.errors import InputError
from tasks.core.files import atomic_write
from tasks.core.grid import AnalysisGrid, make_grid, roi_in_grid_crs
from tasks.raster.align import build_stack
from tasks.sources.catalog import load_catalog
from tasks.sources.local import resolve_local_inputs

REFERENCE_DIR = Path("data/iburi_2018/reference_predictions_west")
REFERENCE_PRED = "sentry_ex1_Predict_LS_HighConf_50.tif"
REFERENCE_CLOUD = "sentry_ex1_MaskImage.tif"
# The reference model only processed lon < 141.9761 and lat > 42.7239 (its README); the file is cut
# at 141.93 E. Outside that, 0 means "not processed".
REFERENCE_PROCESSED_LONLAT = (141.81003, 42.7239, 141.93, 42.88997)
VAL_FRACTION = 1 / 3  # southern third of the overlap, by latitude


def _warp_to_grid(path: Path, grid: AnalysisGrid, resampling: Resampling) -> np.ndarray:
    """Nearest-neighbour warp of a small uint8 raster; 255 where the file has no pixel.

    The files declare nodata 0, but 0 is a real value here ("no landslide" / "no cloud"), so the
    declared nodata is deliberately not used.
    """
    with rasterio.open(path) as src:
        data = src.read(1)
        dst = np.full(grid.shape, 255, dtype=np.uint8)
        reproject(data, dst, src_transform=src.transform, src_crs=src.crs, src_nodata=None,
                  dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=255,
                  resampling=resampling)
    return dst


def build_iburi_weak_dataset(out_dir: str | Path, catalog_path: str | None = None,
                             source: str = "iburi-2018-local", val_fraction: float = VAL_FRACTION) -> dict:
    """Write ``out_dir/{train,val}/{image,labels}.tif`` + ``dataset.json``; return the summary."""
    catalog = load_catalog(catalog_path)
    ref_dir = catalog.root / REFERENCE_DIR
    if not (ref_dir / REFERENCE_PRED).exists():
        raise InputError(f"reference predictions not found in {ref_dir}")
    inputs = resolve_local_inputs(catalog, source, ("B02", "B03", "B04"), start=None, end=None)
    if "post" not in inputs.scene_id:
        raise InputError(f"expected the post-event scene, got {inputs.scene_id}")
    e = inputs.extent_lonlat
    p = REFERENCE_PROCESSED_LONLAT
    overlap = box(max(e[0], p[0]), max(e[1], p[1]), min(e[2], p[2]), min(e[3], p[3]))
    grid = make_grid(overlap)
    out_dir = Path(out_dir)
    work = out_dir / ".work"
    stack = build_stack(inputs, grid, work, required_bands=("B02", "B03", "B04", "SLOPE", "DEM"),
                        roi_grid_crs=roi_in_grid_crs(overlap, grid))
    with rasterio.open(stack.stack_path) as src:
        image = src.read().astype(np.float32)
        profile = src.profile.copy()
    with rasterio.open(stack.valid_path) as src:
        valid = src.read(1).astype(bool)
    ref = _warp_to_grid(ref_dir / REFERENCE_PRED, grid, Resampling.nearest)
    cloud = _warp_to_grid(ref_dir / REFERENCE_CLOUD, grid, Resampling.nearest)
    ref_valid = valid & (ref != 255) & ~((cloud != 0) & (cloud != 255))
    blue, green, red, slope = (image[BAND_NAMES.index(b)] for b in ("B02", "B03", "B04", "SLOPE"))
    rule = scar_rule(red, green, blue, slope)
    labels = combine_weak_labels(rule, ref == 1, ref_valid, rule_valid=valid)
    labels = np.where(valid, labels, IGNORE).astype(np.uint8)

    # latitude split: rows below the cut (south) are validation
    lat_cut = overlap.bounds[1] + val_fraction * (overlap.bounds[3] - overlap.bounds[1])
    cut_geom = roi_in_grid_crs(box(overlap.bounds[0], lat_cut, overlap.bounds[2], lat_cut + 1e-9), grid)
    cut_row = int(round((grid.ymax - cut_geom.centroid.y) / grid.res_m))
    summary = {
        "name": "iburi-2018-weak-labels",
        "summary": "Iburi 2018 west overlap (lon %.4f-%.4f, lat %.4f-%.4f); validation = the "
                   "southern %.0f%% by latitude (lat < %.4f)." % (*overlap.bounds[::2], *overlap.bounds[1::2],
                                                                 100 * val_fraction, lat_cut),
        "labels": ("weak labels: 1 where the published CNN predictions (Prakash et al. 2021, "
                   "HighConf_50) AND the bare-soil rule models.index_rule.scar_rule both say "
                   "landslide, 0 where both say no, 255 (ignored) where they disagree or the "
                   "reference did not process the pixel / saw cloud; see docs/weak_labels.md"),
        "split": f"latitude split at {lat_cut:.4f} N: train north, val south",
        "grid": grid.to_dict(), "overlap_lonlat": list(overlap.bounds), "lat_cut": lat_cut,
        "scene_id": inputs.scene_id,
    }
    parts = {"train": (0, cut_row), "val": (cut_row, grid.height)}
    for split, (r0, r1) in parts.items():
        d = out_dir / split
        d.mkdir(parents=True, exist_ok=True)
        lab = labels[r0:r1]
        t = grid.transform * grid.transform.translation(0, r0)
        prof = {**profile, "height": r1 - r0, "transform": t}
        _write(d / "image.tif", image[:, r0:r1], prof, BAND_NAMES)
        _write(d / "labels.tif", lab[None], {**prof, "count": 1, "dtype": "uint8", "nodata": None},
               ("weak label: 1 landslide, 0 background, 255 ignore",))
        counts = {"landslide_px": int((lab == 1).sum()), "background_px": int((lab == 0).sum()),
                  "ignored_px": int((lab == IGNORE).sum())}
        summary[split] = counts
        (d / "dataset.json").write_text(json.dumps({**summary, "this_split": split}, indent=2))
    # The same validation strip labelled by the reference alone (1/0, 255 where it did not look):
    # agreement with the published predictions, as the eastern-part check measures it.
    r0, r1 = parts["val"]
    d = out_dir / "val_reference"
    d.mkdir(parents=True, exist_ok=True)
    ref_labels = np.where(ref_valid, (ref == 1).astype(np.uint8), IGNORE).astype(np.uint8)[r0:r1]
    t = grid.transform * grid.transform.translation(0, r0)
    prof = {**profile, "height": r1 - r0, "transform": t}
    _write(d / "image.tif", image[:, r0:r1], prof, BAND_NAMES)
    _write(d / "labels.tif", ref_labels[None], {**prof, "count": 1, "dtype": "uint8", "nodata": None},
           ("reference CNN prediction: 1 landslide, 0 background, 255 not processed/cloud",))
    ref_summary = {**summary, "this_split": "val_reference",
                   "labels": "the published CNN predictions alone (Prakash et al. 2021, HighConf_50): "
                             "another model's output, not ground truth; 255 where it did not "
                             "process the pixel or saw cloud",
                   "val_reference": {"landslide_px": int((ref_labels == 1).sum()),
                                     "background_px": int((ref_labels == 0).sum()),
                                     "ignored_px": int((ref_labels == IGNORE).sum())}}
    summary["val_reference"] = ref_summary["val_reference"]
    (d / "dataset.json").write_text(json.dumps(ref_summary, indent=2))
    summary["east_rule"] = _write_east_rule(inputs, overlap, out_dir / "east_rule", work)
    (out_dir / "dataset.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_east_rule(inputs, overlap, d: Path, work: Path) -> dict:
    """The part east of the reference's coverage, same latitudes, "labelled" by the index rule.

    Nobody labelled it: scores here are agreement with the rule (the traditional method), the only
    yardstick available east of 141.93 E, never accuracy."""
    e = inputs.extent_lonlat
    east = box(REFERENCE_PROCESSED_LONLAT[2], overlap.bounds[1], e[2], overlap.bounds[3])
    grid = make_grid(east)
    stack = build_stack(inputs, grid, work / "east", required_bands=("B02", "B03", "B04", "SLOPE", "DEM"),
                        roi_grid_crs=roi_in_grid_crs(east, grid))
    with rasterio.open(stack.stack_path) as src:
        image = src.read().astype(np.float32)
        profile = src.profile.copy()
    with rasterio.open(stack.valid_path) as src:
        valid = src.read(1).astype(bool)
    blue, green, red, slope = (image[BAND_NAMES.index(b)] for b in ("B02", "B03", "B04", "SLOPE"))
    rule = scar_rule(red, green, blue, slope)
    labels = np.where(valid & np.isfinite(slope), rule.astype(np.uint8), IGNORE).astype(np.uint8)
    d.mkdir(parents=True, exist_ok=True)
    _write(d / "image.tif", image, profile, BAND_NAMES)
    _write(d / "labels.tif", labels[None], {**profile, "count": 1, "dtype": "uint8", "nodata": None},
           ("index rule: 1 bare-soil scar, 0 not, 255 nodata (NOT a label)",))
    counts = {"landslide_px": int((labels == 1).sum()), "background_px": int((labels == 0).sum()),
              "ignored_px": int((labels == IGNORE).sum())}
    (d / "dataset.json").write_text(json.dumps({
        "name": "iburi-2018-east-rule", "this_split": "east_rule",
        "summary": "Iburi 2018 east of the published predictions' coverage (lon %.4f-%.4f, "
                   "lat %.4f-%.4f), where no labels exist." % (*east.bounds[::2], *east.bounds[1::2]),
        "labels": "the index rule models.index_rule.scar_rule (the traditional method), NOT labels: "
                  "scores on this folder are agreement with the rule, not accuracy",
        "grid": grid.to_dict(), "east_rule": counts}, indent=2))
    return counts


def _write(path: Path, data: np.ndarray, profile: dict, descriptions: tuple[str, ...]) -> None:
    profile = {**profile, "driver": "GTiff", "count": data.shape[0]}
    with atomic_write(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
