"""The regional landslide inventory: one GeoPackage per region that every scan run updates.

Layer ``landslides`` holds one row per landslide ever detected in the region, with the attributes of
docs/contracts.md section 3 from its latest detection plus

- ``inventory_id`` (int, stable across runs), ``first_seen`` / ``last_seen`` (the acquisition
  times of the first and latest scenes it was detected in), ``detections`` (how many runs saw it)
  and ``status``: ``new`` when the latest run added it, ``known`` otherwise.

Layer ``scans`` (MultiPolygon: the run's footprint) lists every run merged into the inventory:
``run_id``, ``scenes``, ``acquired``, ``model``, ``detections``, ``new``, ``known``, ``merged_at``.

Matching: a run polygon updates the inventory polygon it overlaps best when their IoU is at least
``iou_threshold`` (greedy one-to-one in order of decreasing IoU); the geometry and attributes then
become the latest detection's. Unmatched run polygons are added as ``new``. A landslide that
splits into two detected parts keeps its id for the better-matching part; the other part is new.

Review state (``tasks/inventory/review.py``): a landslide matched by a detection keeps its
``review_status``, ``reviewed_by``, ``reviewed_at`` and ``review_note``; a new one is
``unreviewed``; the ``reviews`` attribute table is copied into the new file row for row.

Merging a run is idempotent (a run id already in ``scans`` changes nothing), and the GeoPackage is
written to a temporary file beside the inventory and renamed, so readers and a crash never see half
an inventory. The merge holds the inventory's write lock (``.inventory.gpkg.lock``, shared with
reviews) from its read to the rename, so no review is lost by the rename.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from shapely import STRtree
from shapely.geometry import MultiPolygon
from shapely.ops import unary_union

from tasks.core import defaults
from tasks.core.errors import InputError
from tasks.core.files import atomic_write
from tasks.inventory.review import (
    INVENTORY_KEY,
    REVIEW_COLUMNS,
    UNREVIEWED,
    copy_reviews,
    gpkg_write_lock,
)
from tasks.vector.geopackage import GPKG_DATASET_OPTIONS, GPKG_LAYER_OPTIONS, document_layers
from tasks.vector.styles import inventory_layer_docs
from tasks.vector.vectorize import FOOTPRINT_LAYER, LANDSLIDE_COLUMN_NAMES, LANDSLIDES_LAYER

log = logging.getLogger(__name__)

SCANS_LAYER = "scans"
STATUS_NEW, STATUS_KNOWN = "new", "known"
INVENTORY_COLUMNS = ("inventory_id", "first_seen", "last_seen", "detections", "status")
SCAN_COLUMNS = ("run_id", "scenes", "acquired", "model", "detections", "new", "known", "merged_at")
DEFAULT_IOU_THRESHOLD = defaults.IOU_THRESHOLD
MERGE_LOCK_WAIT_S = 600.0  # reviews hold the lock for milliseconds; a merge waits for them


@dataclass(frozen=True)
class MergeResult:
    run_id: str
    merged: bool  # False: the run was already in the inventory
    new: int
    known_updated: int
    total: int
    new_area_m2: float


def _read_layer(path: Path, layer: str) -> gpd.GeoDataFrame | None:
    import pyogrio

    if not path.exists():
        return None
    if layer not in {name for name, _ in pyogrio.list_layers(path)}:
        return None
    return gpd.read_file(path, layer=layer)


def read_inventory(path: str | Path) -> tuple[gpd.GeoDataFrame | None, gpd.GeoDataFrame | None]:
    """``(landslides, scans)`` of an inventory GeoPackage; ``(None, None)`` when it does not exist."""
    path = Path(path)
    return _read_layer(path, LANDSLIDES_LAYER), _read_layer(path, SCANS_LAYER)


def match_polygons(known: gpd.GeoSeries, detected: gpd.GeoSeries,
                   iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> dict[int, int]:
    """Greedy one-to-one matching by IoU: ``{detected position: known position}``.

    Pairs are taken in order of decreasing IoU; a pair counts only if IoU >= ``iou_threshold``.
    """
    if not 0 < iou_threshold <= 1:
        raise InputError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if len(known) == 0 or len(detected) == 0:
        return {}
    tree = STRtree(np.asarray(known.values))
    det_idx, known_idx = tree.query(np.asarray(detected.values), predicate="intersects")
    pairs = []
    for d, k in zip(det_idx, known_idx):
        a, b = detected.iloc[d], known.iloc[k]
        inter = a.intersection(b).area
        union = a.area + b.area - inter
        iou = inter / union if union > 0 else 0.0
        if iou >= iou_threshold:
            pairs.append((iou, int(d), int(k)))
    out: dict[int, int] = {}
    used: set[int] = set()
    for iou, d, k in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if d not in out and k not in used:
            out[d] = k
            used.add(k)
    return out


def _ns_utc(df: pd.DataFrame) -> pd.DataFrame:
    """Every datetime column as datetime64[ns, UTC] (GeoPackages read back as ms or naive)."""
    for col in df.columns:
        if col != "geometry" and (pd.api.types.is_datetime64_any_dtype(df[col])
                                  or col in ("first_seen", "last_seen", "acquired",
                                             "detected_at", "merged_at", "reviewed_at")):
            df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[ns, UTC]")
    return df


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def merge_run(inventory_path: str | Path, run_gpkg: str | Path, run_id: str, scenes: list[str],
              model: str, iou_threshold: float = DEFAULT_IOU_THRESHOLD,
              now: dt.datetime | None = None) -> MergeResult:
    """Merge one run's ``landslides.gpkg`` into the region's inventory (atomically, idempotently).

    Raises:
        InputError: the run GeoPackage is missing or lacks the landslides layer.
    """
    inventory_path, run_gpkg = Path(inventory_path), Path(run_gpkg)
    if not run_gpkg.exists():
        raise InputError(f"run output {run_gpkg} does not exist")
    now = now or dt.datetime.now(dt.timezone.utc)
    # reviews update the inventory in place; this rewrites it whole: one at a time, or a review
    # committed between the read below and the rename would be lost (tasks/inventory/review.py)
    with gpkg_write_lock(inventory_path, MERGE_LOCK_WAIT_S, "a review or another merge is writing"):
        return _merge_locked(inventory_path, run_gpkg, run_id, scenes, model, iou_threshold, now)


def _merge_locked(inventory_path: Path, run_gpkg: Path, run_id: str, scenes: list[str], model: str,
                  iou_threshold: float, now: dt.datetime) -> MergeResult:
    landslides, scans = read_inventory(inventory_path)
    if scans is not None and run_id in set(scans["run_id"]):
        n = 0 if landslides is None else len(landslides)
        return MergeResult(run_id, False, 0, 0, n, 0.0)
    detected = _read_layer(run_gpkg, LANDSLIDES_LAYER)
    if detected is None:
        raise InputError(f"{run_gpkg} has no '{LANDSLIDES_LAYER}' layer")
    footprint = _read_layer(run_gpkg, FOOTPRINT_LAYER)
    crs = landslides.crs if landslides is not None else detected.crs
    detected = detected.to_crs(crs) if detected.crs != crs else detected
    detected = _ns_utc(detected.reset_index(drop=True))

    if landslides is None:
        landslides = gpd.GeoDataFrame(
            {c: pd.Series(dtype=t) for c, t in (("inventory_id", "int64"),
                                                ("first_seen", "datetime64[ns, UTC]"),
                                                ("last_seen", "datetime64[ns, UTC]"),
                                                ("detections", "int64"), ("status", "object"))},
            geometry=gpd.GeoSeries([], crs=crs), crs=crs)
    landslides = _ns_utc(landslides.reset_index(drop=True))
    landslides["status"] = STATUS_KNOWN
    for col in REVIEW_COLUMNS:  # an inventory written before reviews existed: all unreviewed
        if col not in landslides.columns:
            landslides[col] = pd.Series([None] * len(landslides), index=landslides.index, dtype=object)
    landslides["review_status"] = landslides["review_status"].fillna(UNREVIEWED)
    matches = match_polygons(landslides.geometry, detected.geometry, iou_threshold)
    attrs = [c for c in LANDSLIDE_COLUMN_NAMES if c in detected.columns]

    rows_new = []
    next_id = int(landslides["inventory_id"].max()) + 1 if len(landslides) else 1
    for d in range(len(detected)):
        det = detected.iloc[d]
        seen = _utc(det["acquired"]) if "acquired" in det and pd.notna(det["acquired"]) else _utc(now)
        if d in matches:
            k = matches[d]
            landslides.loc[k, attrs] = det[attrs].values
            landslides.loc[k, "geometry"] = det.geometry
            landslides.loc[k, "last_seen"] = max(_utc(landslides.loc[k, "last_seen"]), seen)
            landslides.loc[k, "first_seen"] = min(_utc(landslides.loc[k, "first_seen"]), seen)
            landslides.loc[k, "detections"] = int(landslides.loc[k, "detections"]) + 1
        else:
            rows_new.append({"inventory_id": next_id, "first_seen": seen, "last_seen": seen,
                             "detections": 1, "status": STATUS_NEW, "review_status": UNREVIEWED,
                             "reviewed_by": None, "reviewed_at": pd.NaT, "review_note": None,
                             **{c: det[c] for c in attrs}, "geometry": det.geometry})
            next_id += 1
    if rows_new:
        added = gpd.GeoDataFrame(rows_new, geometry="geometry", crs=crs)
        landslides = pd.concat([landslides, added], ignore_index=True) if len(landslides) else added
    landslides = gpd.GeoDataFrame(landslides, geometry="geometry", crs=crs)
    landslides = landslides[[*INVENTORY_COLUMNS, *attrs, *REVIEW_COLUMNS, "geometry"]]
    for col in ("inventory_id", "detections"):
        landslides[col] = landslides[col].astype("int64")
    for col in ("review_status", "reviewed_by", "review_note"):  # text even when all empty
        landslides[col] = landslides[col].astype(object).where(landslides[col].notna(), None)
    landslides["reviewed_at"] = pd.to_datetime(landslides["reviewed_at"], utc=True)
    landslides = _ns_utc(landslides)

    fp_geom = unary_union(list(footprint.to_crs(crs).geometry)) if footprint is not None and len(footprint) else None
    if fp_geom is not None and fp_geom.geom_type == "Polygon":
        fp_geom = MultiPolygon([fp_geom])
    acquired = (pd.to_datetime(detected["acquired"], utc=True).max()
                if "acquired" in detected and len(detected) else pd.NaT)
    scan_row = gpd.GeoDataFrame([{
        "run_id": run_id, "scenes": ",".join(scenes), "acquired": acquired, "model": model,
        "detections": len(detected), "new": len(rows_new), "known": len(matches),
        "merged_at": _utc(now), "geometry": fp_geom}], geometry="geometry", crs=crs)
    scan_row = _ns_utc(scan_row)
    if scans is not None:
        scans = _ns_utc(scans.to_crs(crs) if scans.crs != crs else scans)
        scan_row = pd.concat([scans, scan_row], ignore_index=True)

    _write_atomic(inventory_path, landslides, gpd.GeoDataFrame(scan_row, geometry="geometry", crs=crs))
    new_area = float(sum(r["geometry"].area for r in rows_new))
    log.info("inventory %s: run %s merged, %d new, %d known updated, %d total", inventory_path,
             run_id, len(rows_new), len(matches), len(landslides))
    return MergeResult(run_id, True, len(rows_new), len(matches), len(landslides), new_area)


def _write_atomic(path: Path, landslides: gpd.GeoDataFrame, scans: gpd.GeoDataFrame) -> None:
    """GeoPackage 1.2 with layer and field documentation and default QGIS styles (landslides by
    status new/known, scans as dashed outlines), like a run's landslides.gpkg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, unique=True) as tmp:  # .NAME.PID-RANDOM.tmp.gpkg: a fresh GeoPackage
        landslides.to_file(tmp, layer=LANDSLIDES_LAYER, driver="GPKG",
                           geometry_type="Polygon" if len(landslides) else "Polygon",
                           dataset_options=GPKG_DATASET_OPTIONS, layer_options=GPKG_LAYER_OPTIONS)
        scans.to_file(tmp, layer=SCANS_LAYER, driver="GPKG", geometry_type="MultiPolygon",
                      layer_options=GPKG_LAYER_OPTIONS)
        document_layers(tmp, inventory_layer_docs())
        copy_reviews(path, tmp, INVENTORY_KEY)  # the review history, unchanged
