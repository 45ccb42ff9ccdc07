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

from models.data.chips import ChipDataset
from models.data.l4s import L4SDataset
from models.metrics import IGNORE
from tasks.core.bands import BAND_NAMES, EVENT_BAND_NAMES, PRE_EVENT_BAND_NAMES, band_index
from tasks.core.errors import InputError

IMAGE_NAME = "image.tif"
LABELS_NAME = "labels.tif"


@dataclass
class SceneData:
    image: np.ndarray  # (14, H, W) float32; (26, H, W) in event mode (tasks.core.bands)
    labels: np.ndarray | None  # (H, W) uint8 or None when the folder has no labels
    valid: np.ndarray  # (H, W) bool: some channel finite
    transform: object
    crs: object
    provenance: dict
    pitch: int | None = None  # a mosaic of independent patches: cells of pitch x pitch pixels
    files: tuple = ()  # the files the data came from (recorded in model cards)

    def require_bands(self, bands: tuple[str, ...] | list[str], who: str) -> None:
        """Raise InputError when the image lacks a channel of ``bands`` (a bi-temporal ``PRE_``
        band on a single-date dataset)."""
        missing = [b for b in bands if band_index(b) >= self.image.shape[0]]
        if missing:
            where = f" ({self.files[0]})" if self.files else ""
            raise InputError(f"{who} needs the pre-event band(s) {', '.join(missing)}, but the "
                             f"dataset{where} is single-date ({self.image.shape[0]} channels); "
                             "build a bi-temporal one with `landslide make-dataset --event-date`")


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
        layout = {len(BAND_NAMES): BAND_NAMES, len(EVENT_BAND_NAMES): EVENT_BAND_NAMES}.get(src.count)
        if layout is None:
            raise InputError(f"{image_path} has {src.count} bands; the scene layout needs "
                             f"{len(BAND_NAMES)} ({' '.join(BAND_NAMES)}), NaN for missing ones, "
                             f"or {len(EVENT_BAND_NAMES)} in event mode (those and "
                             f"{' '.join(PRE_EVENT_BAND_NAMES)})")
        desc = tuple(d or "" for d in src.descriptions)
        if any(desc) and desc != layout:
            raise InputError(f"{image_path} band descriptions {desc} are not in contract order "
                             f"{layout}")
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
    valid = np.isfinite(image).any(axis=0)
    return SceneData(image, labels, valid, transform, crs, load_provenance(data_dir))


def load_provenance(data_dir: str | Path) -> dict:
    """DIR/dataset.json (how the labels were made), or {} when the folder has none."""
    prov_path = Path(data_dir) / "dataset.json"
    return json.loads(prov_path.read_text()) if prov_path.exists() else {}


def file_list_sha256(paths: list[Path]) -> str:
    """sha256 over the listed files' names and bytes (recorded in model cards)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def mosaic_patches(ds, require_labels: bool = True) -> SceneData:
    """Lay the patches of a PatchDataset (L4S h5, chips) side by side as one SceneData.

    Cells are ``pitch`` x ``pitch`` pixels (the patch size); training crops stay inside one cell
    and evaluation predicts each cell on its own, so unrelated neighbouring patches never mix.
    Memory: 14 x 4 bytes per pixel (the full L4S training split is about 3.5 GB).
    """
    if require_labels:
        ds.require_labels("training and evaluation")
    n = len(ds)
    if n == 0:
        raise InputError(f"{ds.describe()} holds no patch")
    first = ds[0]
    pitch = first.image.shape[1]
    if first.image.shape[1] != first.image.shape[2]:
        raise InputError(f"{first.name}: patches must be square, got {first.image.shape[1:]}")
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    image = np.full((len(BAND_NAMES), rows * pitch, cols * pitch), np.nan, dtype=np.float32)
    labels = np.full((rows * pitch, cols * pitch), IGNORE, dtype=np.uint8)
    files = []
    for i in range(n):
        sample = first if i == 0 else ds[i]
        if sample.image.shape[1:] != (pitch, pitch):
            raise InputError(f"{sample.name}: {sample.image.shape[1:]} px, the others {pitch}x{pitch}")
        r, c = divmod(i, cols)
        image[:, r * pitch:(r + 1) * pitch, c * pitch:(c + 1) * pitch] = sample.image
        if sample.labels is not None:
            labels[r * pitch:(r + 1) * pitch, c * pitch:(c + 1) * pitch] = sample.labels
        files.extend(ds.source_files(i))
    return SceneData(image, labels, np.isfinite(image).any(axis=0), None, None,
                     {"name": ds.describe(), "labels": ds.labels_hint()}, pitch=pitch,
                     files=tuple(files))


def load_training_data(path: str | Path, layout: str = "scene", split_list: str | None = None) -> SceneData:
    """One split of a dataset in any supported layout, as SceneData.

    Layouts: ``scene`` (DIR/image.tif + labels.tif), ``l4s`` (Landslide4Sense: the download root
    plus an official split list such as dataset_train.txt, or a folder with img/ and mask/),
    ``chips`` (DIR/images/*.tif + DIR/labels/*.tif with the Chittagong conventions).
    """
    path = Path(path)
    if layout == "scene":
        data = load_scene_dataset(path)
        return SceneData(data.image, data.labels, data.valid, data.transform, data.crs,
                         data.provenance, files=(path / IMAGE_NAME, path / LABELS_NAME))
    if layout == "l4s":
        return mosaic_patches(L4SDataset(path, split_list))
    if layout == "chips":
        return mosaic_patches(ChipDataset(path / "images", path / "labels"))
    raise InputError(f"unknown dataset layout {layout!r}; use scene, l4s or chips")
