"""The chip layout: GeoTIFF image chips plus label rasters of the same name.

::

    IMAGES/000000000000.tif   N bands in ``band_order`` (e.g. B04 B03 B02 B08), S2 DN
                              (reflectance x 10000), any CRS; 0 in every band = no data
    LABELS/000000000000.tif   1 band, same grid; values mapped through ``label_map`` to
                              1 landslide / 0 background / 255 ignore

This is what ArcGIS Pro's "Export Training Data" (Classified Tiles) writes, e.g. the Chittagong
chips in ``../shared/data/chittagong_s2_landslide_labels`` (labels 0 unlabelled, 1 non-landslide,
2 landslide; ``.tfw`` world files beside each chip). Each sample keeps its CRS and transform so
predictions can be written back georeferenced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio

from models.data.dataset_api import PatchDataset, Sample, check_label_values, name_files
from models.metrics import IGNORE
from tasks.core.bands import BAND_NAMES, normalize_band_name, validate_bands
from tasks.core.errors import InputError

log = logging.getLogger(__name__)

CHITTAGONG_LABEL_MAP: dict[int, int] = {0: IGNORE, 1: 0, 2: 1}
_SUFFIXES = (".tif", ".tiff")


def _list_tifs(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in _SUFFIXES}


class ChipDataset(PatchDataset):
    """GeoTIFF chips with label rasters paired by file name.

    Args:
        images_dir: folder of image chips (``*.tif``).
        labels_dir: folder of label rasters with the same file names; ``None``, a missing or an
            empty folder gives an unlabelled dataset (``has_labels`` False; reading images works,
            ``require_labels`` refuses).
        band_order: the contract band of each image band, in file order. The default is the
            Chittagong chips' order (R, G, B, NIR), measured on the real files.
        label_map: stored label value -> 1 landslide / 0 background / 255 ignore. A value not in
            the map is an error (never silently background).
        nodata: the value that marks a no-data pixel when it is in every band, used when the file
            declares none (0: Sentinel-2's no-data DN). Such pixels become NaN and their labels 255.
            ``None`` keeps them as data.
        on_nonfinite: ``"raise"`` (default) refuses chips holding NaN/inf outside no-data pixels;
            ``"keep"`` passes them through.

    Raises:
        InputError: missing image folder, no chips, an unknown or repeated band name, a label map
            with targets other than 0/1/255, or images and labels that do not pair up by name.
    """

    def __init__(self, images_dir: str | Path, labels_dir: str | Path | None = None,
                 band_order: Sequence[str] = ("B04", "B03", "B02", "B08"),
                 label_map: Mapping[int, int] | None = None, nodata: float | None = 0.0,
                 on_nonfinite: str = "raise") -> None:
        if on_nonfinite not in ("raise", "keep"):
            raise InputError(f"on_nonfinite={on_nonfinite!r}; use 'raise' or 'keep'")
        self.on_nonfinite = on_nonfinite
        self.nodata = nodata
        self.band_order = tuple(normalize_band_name(b) for b in band_order)
        # validate_bands rejects duplicates and empty lists; bands_available is in contract order
        self.bands_available = validate_bands(self.band_order)
        self._channel_idx = [BAND_NAMES.index(b) for b in self.band_order]
        self.label_map = dict(CHITTAGONG_LABEL_MAP if label_map is None else label_map)
        bad_targets = sorted({int(v) for v in self.label_map.values()} - {0, 1, IGNORE})
        if bad_targets:
            raise InputError(f"label_map maps to {bad_targets}; targets must be 1 landslide, "
                             f"0 background or {IGNORE} ignore")
        self._lut_keys = np.array(sorted(self.label_map), dtype=np.int64)
        self._lut_vals = np.array([self.label_map[k] for k in self._lut_keys], dtype=np.uint8)

        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise InputError(f"chip image folder {self.images_dir} not found; pass the folder of "
                             "image GeoTIFFs")
        images = _list_tifs(self.images_dir)
        if not images:
            raise InputError(f"{self.images_dir} holds no .tif chips")
        self.names = sorted(images)
        self.image_paths = [images[n] for n in self.names]

        self.labels_dir = Path(labels_dir) if labels_dir is not None else None
        labels = (_list_tifs(self.labels_dir)
                  if self.labels_dir is not None and self.labels_dir.is_dir() else {})
        if labels:
            lonely_img = [images[n].name for n in self.names if n not in labels]
            lonely_lab = [labels[n].name for n in sorted(labels) if n not in images]
            if lonely_img or lonely_lab:
                parts = []
                if lonely_img:
                    parts.append(f"images without a label in {self.labels_dir}: "
                                 f"{name_files(lonely_img)}")
                if lonely_lab:
                    parts.append(f"labels without an image in {self.images_dir}: "
                                 f"{name_files(lonely_lab)}")
                raise InputError(f"{len(images)} chips vs {len(labels)} labels do not pair up by "
                                 f"file name ({'; '.join(parts)}); add or remove those files")
            self.label_paths: list[Path] | None = [labels[n] for n in self.names]
        else:
            if self.labels_dir is not None:
                log.warning("%s: no label rasters, the chips are unlabelled", self.labels_dir)
            self.label_paths = None
        self.has_labels = self.label_paths is not None
        log.info("chip dataset %s: %d chips, bands %s, %s", self.images_dir, len(self),
                 " ".join(self.band_order), "labelled" if self.has_labels else "no labels")

    def __len__(self) -> int:
        return len(self.image_paths)

    def describe(self) -> str:
        return f"chip dataset {self.images_dir}"

    def labels_hint(self) -> str:
        where = self.labels_dir if self.labels_dir is not None else "labels_dir=<folder>"
        return f"label rasters named like the chips in {where}"

    def source_files(self, i: int) -> tuple[Path, ...]:
        img = self.image_paths[i]
        return (img, self.label_paths[i]) if self.label_paths else (img,)

    # -- reading ---------------------------------------------------------------------------
    def _read(self, i: int):
        path = self.image_paths[i]
        try:
            with rasterio.open(path) as src:
                if src.count != len(self.band_order):
                    raise InputError(
                        f"{path} has {src.count} bands but band_order names {len(self.band_order)} "
                        f"({' '.join(self.band_order)}); pass the band_order of these files")
                raw = src.read().astype(np.float64)
                nodata = src.nodata if src.nodata is not None else self.nodata
                return raw, nodata, src.crs, src.transform
        except rasterio.errors.RasterioIOError as e:
            raise InputError(f"{path} is not a readable GeoTIFF ({e})") from e

    @staticmethod
    def _nodata_mask(raw: np.ndarray, nodata: float | None) -> np.ndarray:
        if nodata is None:
            return np.zeros(raw.shape[1:], dtype=bool)
        if np.isnan(nodata):
            return np.isnan(raw).all(axis=0)
        return (raw == nodata).all(axis=0)

    def _read_raw_image(self, i: int) -> np.ndarray:
        return self._read(i)[0]

    def _count_nonfinite(self, i: int) -> int:
        raw, nodata, _, _ = self._read(i)
        return int((~np.isfinite(raw) & ~self._nodata_mask(raw, nodata)).sum())

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"chip {i} out of range for {len(self)} chips")
        i %= len(self)
        path = self.image_paths[i]
        raw, nodata, crs, transform = self._read(i)
        empty = self._nodata_mask(raw, nodata)
        if self.on_nonfinite == "raise":
            self._refuse_nonfinite(raw, path, ok=empty[None])
        h, w = raw.shape[1:]
        image = np.full((len(BAND_NAMES), h, w), np.nan, dtype=np.float32)
        image[self._channel_idx] = raw
        image[:, empty] = np.nan
        labels = None
        if self.label_paths is not None:
            labels = self._read_labels(self.label_paths[i], path, (h, w), crs, transform)
            labels[empty] = IGNORE
        return Sample(image=image, labels=labels, name=self.names[i], crs=crs, transform=transform)

    def _read_labels(self, lab_path: Path, img_path: Path, hw: tuple[int, int], crs,
                     transform) -> np.ndarray:
        with rasterio.open(lab_path) as src:
            if src.shape != hw:
                raise InputError(f"{lab_path} is {src.width}x{src.height} px but {img_path} is "
                                 f"{hw[1]}x{hw[0]}; a label raster must cover its chip pixel for pixel")
            if crs is not None and src.crs is not None and (
                    src.crs != crs or not src.transform.almost_equals(transform)):
                raise InputError(f"{lab_path} is on another grid than {img_path} "
                                 f"({src.crs} {tuple(src.transform)[:6]} vs {crs} "
                                 f"{tuple(transform)[:6]}); re-export the labels on the chip grid")
            stored = src.read(1)
        if np.issubdtype(stored.dtype, np.floating) and not np.isfinite(stored).all():
            raise InputError(f"{lab_path} holds NaN/inf; label rasters hold integer classes")
        check_label_values(stored, self._lut_keys, lab_path,
                           fix="add the other values to label_map")
        return self._lut_vals[np.searchsorted(self._lut_keys, stored.astype(np.int64))]
