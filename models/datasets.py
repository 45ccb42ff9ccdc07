"""Datasets on disk.

The scene layout (used for the Iburi weak labels; more layouts come with the training flow)::

    DIR/image.tif    14 bands in contract order (band descriptions B01..DEM), float32 physical
                     units, NaN = nodata  (the same format as a scan's stack.tif)
    DIR/labels.tif   uint8, 1 = landslide, 0 = background, 255 = ignore (not labelled)
    DIR/dataset.json optional provenance: how the labels were made
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from models.metrics import IGNORE
from tasks.bands import BAND_NAMES
from tasks.errors import InputError

IMAGE_NAME = "image.tif"
LABELS_NAME = "labels.tif"


@dataclass
class SceneData:
    image: np.ndarray  # (14, H, W) float32
    labels: np.ndarray | None  # (H, W) uint8 or None when the folder has no labels
    valid: np.ndarray  # (H, W) bool: some channel finite
    transform: object
    crs: object
    provenance: dict


def load_scene_dataset(data_dir: str | Path, require_labels: bool = True) -> SceneData:
    """Read a scene-layout dataset.

    Raises:
        InputError: missing folder/files, wrong band layout, label raster of another shape, or
            label values other than 0, 1 and 255.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"--data-dir {data_dir} is not a folder")
    image_path, labels_path = data_dir / IMAGE_NAME, data_dir / LABELS_NAME
    if not image_path.exists():
        raise InputError(f"{data_dir} has no {IMAGE_NAME} (a 14-band stack in contract order); "
                         "build one with `landslide weak-labels`")
    with rasterio.open(image_path) as src:
        if src.count != len(BAND_NAMES):
            raise InputError(f"{image_path} has {src.count} bands; the scene layout needs "
                             f"{len(BAND_NAMES)} ({' '.join(BAND_NAMES)}), NaN for missing ones")
        desc = tuple(d or "" for d in src.descriptions)
        if any(desc) and desc != BAND_NAMES:
            raise InputError(f"{image_path} band descriptions {desc} are not in contract order "
                             f"{BAND_NAMES}")
        image = src.read().astype(np.float32)
        transform, crs = src.transform, src.crs
    labels = None
    if labels_path.exists():
        with rasterio.open(labels_path) as src:
            labels = src.read(1)
        if labels.shape != image.shape[1:]:
            raise InputError(f"{labels_path} is {labels.shape[1]}x{labels.shape[0]} px but "
                             f"{image_path} is {image.shape[2]}x{image.shape[1]}; they must match")
        bad = np.setdiff1d(np.unique(labels), [0, 1, IGNORE])
        if bad.size:
            raise InputError(f"{labels_path} holds values {bad.tolist()[:5]}; allowed are 0, 1, {IGNORE}")
    elif require_labels:
        raise InputError(f"{data_dir} has no {LABELS_NAME}: evaluation needs labels "
                         f"(1 landslide, 0 background, {IGNORE} ignore); prediction works without")
    prov_path = data_dir / "dataset.json"
    provenance = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    valid = np.isfinite(image).any(axis=0)
    return SceneData(image, labels, valid, transform, crs, provenance)


def file_list_sha256(paths: list[Path]) -> str:
    """sha256 over the listed files' names and bytes (recorded in model cards)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()
