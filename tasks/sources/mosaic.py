"""Scene choice and per-pixel mosaics: which scene every analysed pixel comes from.

The rule (docs/sources_stac.md, docs/sources_sentinelhub.md):

1. Candidates are the search results under the cloud limit whose footprint meets the ROI.
2. If one candidate covers the whole ROI, the least-cloudy such scene is used alone (ties: the one
   acquired closest to the window end).
3. Otherwise the candidates are ranked by cloud cover (unknown last), then by distance of the
   acquisition to the window end, then by id (``rank_candidates``), and scenes are taken in that
   order while each still adds footprint over the part of the ROI not yet covered, up to
   ``max_scenes`` (``choose_mosaic``). Alignment then takes, for every grid pixel, the first-ranked
   of those scenes that has data there (every required band not nodata) and, where the scene has a
   cloud mask, is cloud-free (``tasks.raster.align.build_stack``).

Alignment writes ``scene_index.tif`` (uint8 on the analysis grid: 0 = no scene, the pixel is not
analysed; k = entry k of ``scenes.json``) and ``scenes.json``; single-scene runs write the same two
files with one entry. ``label_scene_counts`` / ``majority_scene`` give each labelled polygon its
source scene (the most frequent index under it).

Pure functions only; the file helpers at the end read and write JSON.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import shapely

from tasks.core.files import atomic_write_text

SCENES_NAME = "scenes.json"
SCENE_INDEX_NAME = "scene_index.tif"
MAX_SCENES = 255  # scene_index.tif is uint8, 0 = no scene
DEFAULT_MAX_MOSAIC_SCENES = 6
FULL_COVER = 0.999  # share of the ROI a footprint must cover to count as covering it
MIN_GAIN = 1e-3  # a mosaic scene must add at least this share of the ROI to be downloaded
RULE = ("per pixel, the first of the ranked scenes (cloud cover ascending, unknown last; then "
        "acquisition closest to the window end; then id) with data in every required band and, where "
        "the scene has a cloud mask, no cloud; scene_index.tif: 0 = no scene, k = scenes[k-1]")


@dataclass(frozen=True)
class SceneCandidate:
    """One search result as scene choice sees it."""

    scene_id: str
    cloud_pct: float | None
    acquired: str  # ISO 8601 UTC ("" when unknown)
    footprint: shapely.Geometry | None  # EPSG:4326; None = unknown (assumed to cover everything)


def _timestamp(iso: str) -> float | None:
    if not iso:
        return None
    when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def window_end(end: dt.date | None, now: dt.datetime | None = None) -> dt.datetime:
    """The instant scenes are ranked against: the end of the ``end`` day (UTC), or now for an open window."""
    if end is None:
        return now or dt.datetime.now(dt.timezone.utc)
    return dt.datetime.combine(end, dt.time(23, 59, 59), tzinfo=dt.timezone.utc)


def rank_key(cand: SceneCandidate, end: dt.datetime) -> tuple[float, float, str]:
    """Sort key: cloud cover (unknown = 101), seconds from the window end (unknown last), id."""
    cloud = cand.cloud_pct if cand.cloud_pct is not None else 101.0
    ts = _timestamp(cand.acquired)
    distance = abs(end.timestamp() - ts) if ts is not None else float("inf")
    return cloud, distance, cand.scene_id


def rank_candidates(candidates: Iterable[SceneCandidate], end: dt.datetime) -> list[SceneCandidate]:
    """Candidates best first (``rank_key``)."""
    return sorted(candidates, key=lambda c: rank_key(c, end))


def cover_share(footprint: shapely.Geometry | None, area: shapely.Geometry, roi: shapely.Geometry) -> float:
    """Share of ``roi``'s area that ``footprint`` covers inside ``area`` (a part of the ROI)."""
    if footprint is None:
        return 1.0 if not area.is_empty else 0.0
    if roi.area == 0:
        return 1.0 if footprint.intersects(roi) else 0.0
    return float(footprint.intersection(area).area / roi.area)


def choose_mosaic(candidates: Sequence[SceneCandidate], roi: shapely.Geometry, end: dt.datetime,
                  max_scenes: int = DEFAULT_MAX_MOSAIC_SCENES) -> tuple[list[SceneCandidate], float]:
    """The scenes to read, best first, and the share of the ROI their footprints cover.

    One scene when a candidate covers the ROI (the best-ranked of those); else the ranked candidates
    that each add at least ``MIN_GAIN`` of the ROI not yet covered, until it is covered or
    ``max_scenes`` are taken. Empty when no candidate meets the ROI.
    """
    if max_scenes < 1 or max_scenes > MAX_SCENES:
        raise ValueError(f"max_scenes must be 1..{MAX_SCENES}, got {max_scenes}")
    ranked = [c for c in rank_candidates(candidates, end) if cover_share(c.footprint, roi, roi) > 0]
    full = [c for c in ranked if cover_share(c.footprint, roi, roi) >= FULL_COVER]
    if full:
        return [full[0]], 1.0
    chosen: list[SceneCandidate] = []
    uncovered = roi
    for cand in ranked:
        if len(chosen) == max_scenes or uncovered.is_empty:
            break
        gain = cover_share(cand.footprint, uncovered, roi)
        if gain < MIN_GAIN:
            continue
        chosen.append(cand)
        uncovered = uncovered.difference(cand.footprint) if cand.footprint is not None else shapely.Polygon()
        if roi.area and uncovered.area / roi.area < 1 - FULL_COVER:
            break
    covered = 1.0 - (uncovered.area / roi.area if roi.area else 0.0)
    return chosen, covered


# ------------------------------------------------------------------------- polygons -> scene


def label_scene_counts(scene_index: np.ndarray, labels: np.ndarray) -> dict[int, dict[int, int]]:
    """Pixels of each scene under each label.

    Args:
        scene_index: (H, W) integer scene index (``scene_index.tif``: 0 = no scene).
        labels: (H, W) integer labels of the same window (0 = background, as ``skimage.measure.label``).

    Returns:
        label -> {scene index -> pixel count}, for every label > 0 present; scene 0 is counted too
        (pixels of the label with no scene), so per-block counts can be summed for polygons that cross
        block seams before ``majority_scene``.

    Raises:
        ValueError: the two arrays differ in shape.
    """
    if scene_index.shape != labels.shape:
        raise ValueError(f"scene_index {scene_index.shape} and labels {labels.shape} differ in shape")
    inside = labels > 0
    lab = labels[inside].astype(np.int64)
    scn = scene_index[inside].astype(np.int64)
    if lab.size == 0:
        return {}
    if scn.min() < 0:
        raise ValueError("scene_index holds negative values")
    span = int(scn.max()) + 1
    keys, counts = np.unique(lab * span + scn, return_counts=True)
    out: dict[int, dict[int, int]] = {}
    for key, n in zip(keys.tolist(), counts.tolist()):
        out.setdefault(key // span, {})[key % span] = n
    return out


def majority_from_counts(counts: dict[int, int]) -> int:
    """The most frequent scene index > 0 in ``counts`` (ties: the lower, i.e. better-ranked, index); 0 if none."""
    best, best_n = 0, 0
    for scene, n in sorted(counts.items()):
        if scene > 0 and n > best_n:
            best, best_n = scene, n
    return best


def majority_scene(scene_index: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Each label's majority scene index.

    Args:
        scene_index: (H, W) integer array, ``scene_index.tif`` over a window (0 = no scene).
        labels: (H, W) integer label image of the same window (0 = background).

    Returns:
        label -> scene index (1-based into ``scenes.json``'s ``scenes``; 0 when none of the label's
        pixels has a scene). Ties go to the lower index (the better-ranked scene).
    """
    return {label: majority_from_counts(c) for label, c in label_scene_counts(scene_index, labels).items()}


# ------------------------------------------------------------------------- scenes.json


def scene_entry(index: int, scene_id: str, acquired: str | None, cloud_pct: float | None,
                processing_baseline: str | None, offset_dn: float, pixels: int,
                cloud_masked_px: int) -> dict:
    """One element of ``scenes.json``'s ``scenes`` list."""
    return {"index": index, "scene_id": scene_id, "acquired": acquired, "cloud_cover_pct": cloud_pct,
            "processing_baseline": processing_baseline, "offset_removed_dn": offset_dn,
            "pixels": int(pixels), "cloud_masked_px": int(cloud_masked_px)}


def write_scenes(work_dir: str | Path, entries: list[dict], grid_px: int, valid_px: int) -> dict:
    """Write ``scenes.json`` (temporary name, then rename) and return it."""
    record = {"rule": RULE, "scene_index": SCENE_INDEX_NAME, "mosaic": len(entries) > 1,
              "grid_px": int(grid_px), "analysed_px": int(valid_px),
              "no_scene_px": int(grid_px - sum(e["pixels"] for e in entries)), "scenes": entries}
    atomic_write_text(Path(work_dir) / SCENES_NAME, json.dumps(record, indent=2), unique=True)
    return record


def read_scenes(work_dir: str | Path) -> dict | None:
    """The ``scenes.json`` of a work folder, or None when alignment wrote none (older runs)."""
    path = Path(work_dir) / SCENES_NAME
    return json.loads(path.read_text()) if path.exists() else None


def scene_attrs(scenes: dict, index: int) -> tuple[str | None, str | None]:
    """``(scene_id, acquired ISO)`` of a scene index of ``scenes.json`` (``(None, None)`` for 0)."""
    if index == 0:
        return None, None
    entry = scenes["scenes"][index - 1]
    if entry["index"] != index:
        raise ValueError(f"scenes.json is out of order at index {index}")
    return entry["scene_id"], entry["acquired"]


def assign_polygon_scenes(polygons, scene_index_path: str | Path, scenes: dict):
    """Set each polygon's ``scene_id`` / ``acquired`` to the scene most of its pixels came from.

    Reads ``scene_index.tif`` one polygon's bounding window at a time (bounded memory); a polygon
    whose pixels have no scene keeps its attributes. An ``acquired_note`` column (why ``acquired``
    is empty) is emptied where the polygon's scene has a date. Returns the same GeoDataFrame,
    modified.
    """
    import pandas as pd
    import rasterio
    from rasterio.features import geometry_mask
    from rasterio.windows import from_bounds

    if not len(polygons):
        return polygons
    ids, times = list(polygons["scene_id"]), list(polygons["acquired"])
    with rasterio.open(scene_index_path) as src:
        for i, geom in enumerate(polygons.geometry):
            win = from_bounds(*geom.bounds, transform=src.transform).round_offsets().round_lengths()
            win = win.intersection(rasterio.windows.Window(0, 0, src.width, src.height))
            block = src.read(1, window=win)
            inside = ~geometry_mask([geom], out_shape=block.shape,
                                    transform=src.window_transform(win), all_touched=False)
            values, counts = np.unique(block[inside], return_counts=True)
            k = majority_from_counts({int(v): int(c) for v, c in zip(values, counts)})
            if k > 0:
                scene_id, acquired = scene_attrs(scenes, k)
                ids[i] = scene_id
                times[i] = pd.Timestamp(acquired) if acquired else pd.NaT
    polygons["scene_id"] = ids
    polygons["acquired"] = pd.to_datetime(times, utc=True)
    if "acquired_note" in polygons:  # the note only explains a missing date
        polygons["acquired_note"] = polygons["acquired_note"].where(polygons["acquired"].isna(), None)
    return polygons
