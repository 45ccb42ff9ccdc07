"""Cloud masks of remote sources: which mask values mean "cloud", and the per-scene count.

A source that provides a cloud mask hands alignment a ``cloud_mask`` dict (in ``SceneInputs``):

- ``path``: a single-band raster (any CRS/resolution; warped onto the grid with nearest neighbour);
- ``cloud_values``: mask values that are cloud (e.g. Sentinel-2 L2A SCL: 3 shadow, 8/9 cloud, 10 cirrus),
  or ``cloud_range`` ``[lo, hi]``: values in that inclusive range are cloud;
- ``origin``: what the mask is, for the manifest.

Alignment turns cloud pixels to not-valid, so they leave the ``footprint`` layer and get no
probability, mask value or polygon (docs/contracts.md section 3: outside the footprint means "not looked
at"). It writes ``cloud_mask.json`` in the work folder: per scene, how many pixels that would
otherwise have been analysed were masked; the scan's finish step (``tasks.run.steps``) copies it
into the manifest as ``inputs.cloud_mask``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tasks.core.errors import InputError
from tasks.core.files import atomic_write_text

RECORD_NAME = "cloud_mask.json"

# Sentinel Hub's CLM band (s2cloudless run by Sentinel Hub at 160 m): 0 clear, 1 cloud, 255 no data.
# The Process API resamples CLM with the request's up/downsampling (bilinear here), so between a
# cloud and a clear pixel values stay 0 or 1 after rounding, but next to no data (255) they take
# values in between: anything from 1 to 254 is counted as cloud (conservative at scene edges).
SH_CLM_BAND = "CLM"
SH_CLM_CLOUD_RANGE = (1, 254)
SH_CLM_ORIGIN = "Sentinel Hub CLM band (s2cloudless cloud mask, 160 m), cloud = 1..254"


def check_cloud_mask(spec: dict | None) -> dict | None:
    """Validate a ``cloud_mask`` spec (None passes through).

    Raises:
        InputError: no path, or neither/both of ``cloud_values`` and ``cloud_range``.
    """
    if spec is None:
        return None
    if not spec.get("path"):
        raise InputError(f"cloud mask spec {spec!r} has no 'path'")
    has_values, has_range = bool(spec.get("cloud_values")), spec.get("cloud_range") is not None
    if has_values == has_range:
        raise InputError(f"cloud mask {spec['path']}: give exactly one of cloud_values or cloud_range")
    if has_range and len(spec["cloud_range"]) != 2:
        raise InputError(f"cloud mask {spec['path']}: cloud_range must be [lo, hi]")
    return spec


def cloud_pixels(values: np.ndarray, spec: dict) -> np.ndarray:
    """Boolean array: True where ``values`` (a mask on the grid) marks cloud per ``spec``."""
    if spec.get("cloud_values"):
        return np.isin(values, np.asarray(spec["cloud_values"]))
    lo, hi = spec["cloud_range"]
    return (values >= lo) & (values <= hi)


def write_record(work_dir: str | Path, scene_id: str, spec: dict | None, cloud_masked_px: int,
                 grid_px: int) -> dict:
    """Write ``cloud_mask.json`` (what the manifest reports) and return it."""
    if spec is None:
        record = {"applied": False, "scenes": {scene_id: {"cloud_masked_px": 0}},
                  "note": "the source provides no cloud mask: no pixel was cloud-masked"}
    else:
        record = {"applied": True, "origin": spec.get("origin", ""),
                  "rule": ({"cloud_values": list(spec["cloud_values"])} if spec.get("cloud_values")
                           else {"cloud_range": list(spec["cloud_range"])}),
                  "scenes": {scene_id: {"cloud_masked_px": int(cloud_masked_px),
                                        "cloud_masked_fraction_of_grid": round(cloud_masked_px / max(grid_px, 1), 6)}}}
    atomic_write_text(Path(work_dir) / RECORD_NAME, json.dumps(record, indent=2))
    return record


def write_records(work_dir: str | Path, scenes: list[tuple[str, dict | None, int]], grid_px: int) -> dict:
    """``cloud_mask.json`` for one or more scenes (a mosaic): ``(scene_id, spec or None, cloud_masked_px)``.

    A scene's ``cloud_masked_px`` counts the pixels that scene would have given (no better-ranked scene
    had data and no cloud there, it had data) but its mask marked cloud. One scene: the same file as
    ``write_record``.
    """
    if len(scenes) == 1:
        scene_id, spec, n = scenes[0]
        return write_record(work_dir, scene_id, spec, n, grid_px)
    applied = [spec for _, spec, _ in scenes if spec is not None]
    record: dict = {"applied": bool(applied), "scenes": {}}
    if applied:
        record["origin"] = "; ".join(dict.fromkeys(spec.get("origin", "") for spec in applied))
        first = applied[0]
        record["rule"] = ({"cloud_values": list(first["cloud_values"])} if first.get("cloud_values")
                          else {"cloud_range": list(first["cloud_range"])})
    else:
        record["note"] = "the sources provide no cloud mask: no pixel was cloud-masked"
    for scene_id, spec, n in scenes:
        entry = {"cloud_masked_px": int(n) if spec is not None else 0, "mask": spec is not None}
        if spec is not None:
            entry["cloud_masked_fraction_of_grid"] = round(n / max(grid_px, 1), 6)
        record["scenes"][scene_id] = entry
    atomic_write_text(Path(work_dir) / RECORD_NAME, json.dumps(record, indent=2))
    return record


def read_record(work_dir: str | Path) -> dict | None:
    """The ``cloud_mask.json`` of a work folder, or None if alignment wrote none."""
    path = Path(work_dir) / RECORD_NAME
    return json.loads(path.read_text()) if path.exists() else None
