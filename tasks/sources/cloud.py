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

# s2cloudless's 10-band classifier inputs, in its order (tasks.raster.clouds runs it); B8A is not part of
# the band contract: a source gives it beside the contract bands, or B08 stands in (docs/clouds.md)
S2CLOUDLESS_BANDS: tuple[str, ...] = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11",
                                      "B12")
S2CLOUDLESS_CONTRACT_BANDS: tuple[str, ...] = tuple(b for b in S2CLOUDLESS_BANDS if b != "B8A")
B8A_STANDIN = "B08 stands in for B8A (the scene gives no B8A; measured effect in docs/clouds.md)"

# Sentinel Hub's CLM band (s2cloudless run by Sentinel Hub at 160 m): 0 clear, 1 cloud, 255 no data.
# The Process API resamples CLM with the request's up/downsampling (bilinear here), so between a
# cloud and a clear pixel values stay 0 or 1 after rounding, but next to no data (255) they take
# values in between: anything from 1 to 254 is counted as cloud (conservative at scene edges).
SH_CLM_BAND = "CLM"
SH_CLM_CLOUD_RANGE = (1, 254)
SH_CLM_ORIGIN = "Sentinel Hub CLM band (s2cloudless cloud mask, 160 m), cloud = 1..254"


def missing_detector_bands(have: set[str] | tuple[str, ...]) -> list[str]:
    """The contract bands s2cloudless needs that ``have`` lacks (B8A is never required: B08 stands in)."""
    return [b for b in S2CLOUDLESS_CONTRACT_BANDS if b not in have]


def missing_bands_reason(missing: list[str], scene_id: str) -> str:
    return (f"s2cloudless needs bands {', '.join(S2CLOUDLESS_CONTRACT_BANDS)} (and B8A or B08 for it); "
            f"scene {scene_id} lacks {', '.join(missing)}")


def shadow_plan(options, band_paths: dict[str, str], acquired: str | None,
                sun: tuple[float, float, str] | None, scene_id: str,
                source_name: str) -> tuple[dict | None, str]:
    """The shadow projection settings of one scene (``tasks.raster.clouds``), or why there are none.

    Args:
        options: the source's shadow settings (``catalog._ShadowOptions``: ``cloud_shadows``,
            ``cloud_heights_m``, ``shadow_nir_max_dn``).
        band_paths: the scene's rasters; B03 there adds the water test to the darkness rule.
        acquired: ISO acquisition time (sun angles are computed from it when ``sun`` is None).
        sun: (azimuth, zenith, where from) from the scene's metadata, or None.

    Returns:
        (the ``shadows`` dict or None, the reason when None, else "").
    """
    if not options.cloud_shadows:
        return None, f"cloud_shadows: false for source {source_name!r}"
    if sun is not None:
        shadows = {"sun_azimuth_deg": round(sun[0], 2), "sun_zenith_deg": round(sun[1], 2), "sun_from": sun[2]}
    elif acquired:
        shadows = {"sun_from": f"computed for {acquired} at the grid centre"}
    else:
        return None, f"scene {scene_id} has no acquisition time and no sun angles: shadows not projected"
    rule = f"in the cloud mask shifted away from the sun, B08 < {options.shadow_nir_max_dn:g}"
    if "B03" in band_paths:
        rule += " and B08 >= B03 (not water)"
    shadows.update(heights_m=list(options.cloud_heights_m), nir_dark_dn=options.shadow_nir_max_dn, rule=rule)
    return shadows, ""


def detector_plan(options, band_paths: dict[str, str], b8a_note: str, acquired: str | None,
                  sun: tuple[float, float, str] | None, scene_id: str, source_name: str) -> dict:
    """The ``cloud_detector`` plan of one scene (what ``tasks.raster.clouds.detect_clouds`` runs).

    Args:
        options: the source's detector settings (``catalog._CloudDetectorOptions``).
        band_paths: rasters of ``S2CLOUDLESS_BANDS`` (B8A may be B08's file), and B03 when the scene
            has it (the shadow rule's water test).
        b8a_note: where B8A comes from (recorded in the manifest).
        acquired: ISO acquisition time (sun angles are computed from it when ``sun`` is None).
        sun: (azimuth, zenith, where from) from the scene's metadata, or None.
    """
    shadows, shadows_off = shadow_plan(options, band_paths, acquired, sun, scene_id, source_name)
    return {"method": "s2cloudless", "band_paths": dict(band_paths), "b8a": b8a_note,
            "threshold": options.cloud_threshold, "dilation_m": options.cloud_dilation_m,
            "acquired": acquired, "shadows": shadows, "shadows_off": shadows_off}


def clm_plan(options, clm_path: str, band_paths: dict[str, str], acquired: str | None, scene_id: str,
             source_name: str) -> dict:
    """The ``cloud_detector`` plan of a Sentinel Hub scene: its ``CLM`` band is the cloud class, and the
    shadows of its clouds are projected as for s2cloudless's (``tasks.raster.clouds.detect_clouds``).

    Args:
        options: the source's shadow settings (``catalog.SentinelHubSource``).
        clm_path: the CLM raster on the analysis grid (0 clear, 1 cloud, 255 no data, blends between).
        band_paths: B08 (and B03) on the grid, for the darkness rule; without B08 no shadow is kept.
        acquired: ISO acquisition time: the sun angles are computed from it at the grid centre.
    """
    shadows, shadows_off = shadow_plan(options, band_paths, acquired, None, scene_id, source_name)
    return {"method": "sentinelhub-clm", "clm_path": clm_path, "cloud_range": list(SH_CLM_CLOUD_RANGE),
            "band_paths": dict(band_paths), "acquired": acquired, "shadows": shadows,
            "shadows_off": shadows_off}


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
                 grid_px: int, detector_off: dict[str, str] | None = None) -> dict:
    """Write ``cloud_mask.json`` (what the manifest reports) and return it."""
    if spec is None:
        record = {"applied": False, "scenes": {scene_id: {"cloud_masked_px": 0}},
                  "note": "the source provides no cloud mask: no pixel was cloud-masked"}
    else:
        record = {"applied": True, "origin": spec.get("origin", ""),
                  "rule": ({"cloud_values": list(spec["cloud_values"])} if spec.get("cloud_values")
                           else {"cloud_range": list(spec["cloud_range"])}),
                  "scenes": {scene_id: {"cloud_masked_px": int(cloud_masked_px),
                                        "cloud_masked_fraction_of_grid": round(cloud_masked_px / max(grid_px, 1), 6),
                                        **_detector_entry(spec, grid_px)}}}
    add_detector_notes(record, detector_off or {})
    atomic_write_text(Path(work_dir) / RECORD_NAME, json.dumps(record, indent=2))
    return record


def _detector_entry(spec: dict, grid_px: int) -> dict:
    """A computed mask's method, parameters and per-class pixel counts over the grid (empty for a
    source's own mask)."""
    if "class_px" not in spec:
        return {}
    return {"method": spec["method"], "class_px": dict(spec["class_px"]),
            "class_fraction_of_grid": {k: round(v / max(grid_px, 1), 6) for k, v in spec["class_px"].items()},
            "max_cloud_probability": spec.get("max_probability")}


def add_detector_notes(record: dict, off: dict[str, str]) -> dict:
    """Say in ``record`` why no cloud detector ran for the scenes in ``off`` (scene id -> reason)."""
    if off:
        record["detector_off"] = dict(off)
    return record


def write_records(work_dir: str | Path, scenes: list[tuple[str, dict | None, int]], grid_px: int,
                  detector_off: dict[str, str] | None = None) -> dict:
    """``cloud_mask.json`` for one or more scenes (a mosaic): ``(scene_id, spec or None, cloud_masked_px)``.

    A scene's ``cloud_masked_px`` counts the pixels that scene would have given (no better-ranked scene
    had data and no cloud there, it had data) but its mask marked cloud. One scene: the same file as
    ``write_record``.
    """
    if len(scenes) == 1:
        scene_id, spec, n = scenes[0]
        return write_record(work_dir, scene_id, spec, n, grid_px, detector_off)
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
            entry.update(_detector_entry(spec, grid_px))
        record["scenes"][scene_id] = entry
    add_detector_notes(record, detector_off or {})
    atomic_write_text(Path(work_dir) / RECORD_NAME, json.dumps(record, indent=2))
    return record


def read_record(work_dir: str | Path) -> dict | None:
    """The ``cloud_mask.json`` of a work folder, or None if alignment wrote none."""
    path = Path(work_dir) / RECORD_NAME
    return json.loads(path.read_text()) if path.exists() else None
