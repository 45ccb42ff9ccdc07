"""Clean the stitched probability map into a binary landslide mask: pure numpy/scipy/skimage.

Steps (docs/contracts.md section 3): threshold, binary opening (removes speckle), binary closing
(bridges small gaps), fill small holes, remove objects smaller than a minimum area, zero outside the
valid mask.

Connectivity: a landslide is a **4-connected** set of pixels (pixels sharing an edge). Diagonal-only
contacts do not join two objects. The same rule is used here (labelling, minimum area) and in
tasks.vector.vectorize (``rasterio.features.shapes(connectivity=4)``), so one object is one valid Polygon:
two blobs that touch only at a pixel corner cannot form a single valid Polygon (the ring would touch
itself), and the landslides layer holds Polygons, not MultiPolygons. Holes are the dual: a background
region counts as a hole when it is 8-connected and does not reach the array border.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from tasks.core import defaults
from tasks.core.errors import InputError
from tasks.core.files import atomic_write, work_raster_profile
from tasks.core.tiling import iter_blocks

CONNECTIVITY = 4  # pixel connectivity of an object, shared with tasks.vector.vectorize
# scipy structuring elements for that connectivity (objects) and its dual (background / holes)
OBJECT_STRUCTURE = ndimage.generate_binary_structure(2, 1)
BACKGROUND_STRUCTURE = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True)
class CleanParams:
    """Parameters of :func:`clean_mask`.

    Attributes:
        threshold: a pixel is a landslide candidate when ``prob >= threshold``; in (0, 1).
        opening_radius_px: radius of the disk used for the binary opening (0 skips it).
        closing_radius_px: radius of the disk used for the binary closing (0 skips it).
        fill_holes_max_area_m2: holes smaller than this inside a detection are filled (0 disables).
        min_area_m2: objects smaller than this are removed (0 keeps everything).
    """

    threshold: float = defaults.THRESHOLD
    opening_radius_px: int = defaults.OPENING_RADIUS_PX
    closing_radius_px: int = defaults.CLOSING_RADIUS_PX
    fill_holes_max_area_m2: float = defaults.FILL_HOLES_MAX_AREA_M2
    min_area_m2: float = defaults.MIN_AREA_M2

    def __post_init__(self) -> None:
        if not (_is_real(self.threshold) and 0.0 < self.threshold < 1.0):
            raise InputError(f"threshold must be a probability strictly between 0 and 1, got "
                             f"{self.threshold!r}")
        for name in ("opening_radius_px", "closing_radius_px"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise InputError(f"{name} must be a whole number of pixels >= 0 (0 skips the step), "
                                 f"got {value!r}")
        for name in ("fill_holes_max_area_m2", "min_area_m2"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite area in m2 >= 0 (0 disables it), "
                                 f"got {value!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_res(res_m: float) -> float:
    if not _is_real(res_m) or not (math.isfinite(res_m) and res_m > 0):
        raise InputError(f"res_m must be the pixel size in metres (> 0), got {res_m!r}")
    return float(res_m)


def _min_pixels(area_m2: float, res_m: float) -> int:
    """Smallest pixel count whose area is >= ``area_m2`` (tolerant of float rounding)."""
    return max(int(math.ceil(area_m2 / res_m**2 - 1e-9)), 0)


def _open(mask: np.ndarray, radius: int) -> np.ndarray:
    se = disk(radius).astype(bool)
    # border_value=1 for the erosion: the array edge is not evidence against a detection there
    eroded = ndimage.binary_erosion(mask, se, border_value=1)
    return ndimage.binary_dilation(eroded, se, border_value=0)


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    se = disk(radius).astype(bool)
    dilated = ndimage.binary_dilation(mask, se, border_value=0)
    # border_value=1 again: scipy's default (0) would erase detections along the array edge
    return ndimage.binary_erosion(dilated, se, border_value=1)


def _fill_small_holes(mask: np.ndarray, max_pixels: int) -> np.ndarray:
    """Fill background regions (8-connected) that do not reach the border and are < max_pixels."""
    holes, n = ndimage.label(~mask, structure=BACKGROUND_STRUCTURE)
    if n == 0:
        return mask
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    fill = sizes < max_pixels
    fill[0] = False
    edge_labels = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill[edge_labels] = False
    return mask | fill[holes]


def _remove_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=OBJECT_STRUCTURE)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def clean_mask(prob: np.ndarray, valid: np.ndarray, res_m: float,
               params: CleanParams = CleanParams()) -> np.ndarray:
    """Turn a probability map into a cleaned binary landslide mask.

    Args:
        prob: (H, W) landslide probability in [0, 1]; NaN counts as "not a landslide".
        valid: (H, W) bool (or 0/1), True where the pixel was analysed (valid, cloud-free).
        res_m: pixel size in metres (square pixels), to turn the m2 parameters into pixel counts.
        params: thresholds and radii, see :class:`CleanParams`.

    Returns:
        (H, W) uint8 mask, 1 = landslide, 0 elsewhere (and everywhere outside ``valid``). Every
        4-connected object has an area >= ``params.min_area_m2``.

    Raises:
        InputError: arrays not 2-D or of different shapes, or a bad ``res_m``.
    """
    prob = np.asarray(prob)
    valid = np.asarray(valid)
    if prob.ndim != 2:
        raise InputError(f"prob must be a 2-D (H, W) array, got shape {prob.shape}")
    if valid.shape != prob.shape:
        raise InputError(f"valid mask shape {valid.shape} differs from prob shape {prob.shape}")
    res_m = _check_res(res_m)
    if not isinstance(params, CleanParams):
        raise InputError(f"params must be a CleanParams, got {type(params).__name__}")
    valid = valid.astype(bool, copy=False)

    with np.errstate(invalid="ignore"):
        mask = (prob >= params.threshold) & valid
    if params.opening_radius_px > 0:
        mask = _open(mask, int(params.opening_radius_px))
    if params.closing_radius_px > 0:
        mask = _close(mask, int(params.closing_radius_px))
    if params.fill_holes_max_area_m2 > 0:
        max_px = _min_pixels(params.fill_holes_max_area_m2, res_m)
        mask = _fill_small_holes(mask, max_px)
    mask &= valid  # closing and hole filling may reach into nodata
    if params.min_area_m2 > 0:
        mask = _remove_small(mask, _min_pixels(params.min_area_m2, res_m))
    return mask.astype(np.uint8)


def label_objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 4-connected objects of a binary mask.

    Labels are 1..n in raster order of each object's first pixel (top row first, then left to
    right), 0 is background.

    Args:
        mask: (H, W) bool or 0/1 array.

    Returns:
        ``(labels, n)``: (H, W) int32 labels and the number of objects.

    Raises:
        InputError: ``mask`` is not 2-D.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be a 2-D (H, W) array, got shape {mask.shape}")
    labels = np.zeros(mask.shape, dtype=np.int32)
    n = ndimage.label(mask.astype(bool, copy=False), structure=OBJECT_STRUCTURE, output=labels)
    return labels, int(n)


def clean_halo_px(params: CleanParams, res_m: float) -> int:
    """Halo that makes :func:`clean_mask` on a block exact in the block's core.

    Opening then closing reach ``2 r_open + 2 r_close`` pixels; a hole small enough to be filled,
    and an object small enough to be removed, has fewer than ``max_hole`` / ``min_area`` pixels, so
    it lies within that many pixels of any pixel it touches. A component that reaches further is
    at least that large both in the block and in the whole scene, so it is treated alike.
    """
    res_m = _check_res(res_m)
    reach = 2 * int(params.opening_radius_px) + 2 * int(params.closing_radius_px)
    if params.fill_holes_max_area_m2 > 0:
        reach += _min_pixels(params.fill_holes_max_area_m2, res_m) + 1
    if params.min_area_m2 > 0:
        reach += _min_pixels(params.min_area_m2, res_m) + 1
    return reach + 2


def clean_raster(prob_path, valid_path, out_path, res_m: float, params: CleanParams = CleanParams(),
                 block_px: int = defaults.BLOCK_PX) -> int:
    """Block-wise :func:`clean_mask` from rasters to a tiled uint8 raster; returns landslide pixels.

    Each block is cleaned with a halo of :func:`clean_halo_px`, so the result equals cleaning the
    whole scene at once, with memory bounded by the block size.
    """
    from pathlib import Path

    import rasterio
    from rasterio.windows import Window

    halo = clean_halo_px(params, res_m)
    out_path = Path(out_path)
    total = 0
    with rasterio.open(prob_path) as prob_src, rasterio.open(valid_path) as valid_src:
        h, w = prob_src.height, prob_src.width
        profile = work_raster_profile(prob_src.profile, dtype="uint8", nodata=None, predictor=1)
        with atomic_write(out_path, suffix=".tmp.tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for block in iter_blocks(h, w, block_px):
                r, c = int(block.row_off), int(block.col_off)
                bh, bw = int(block.height), int(block.width)
                r0, c0 = max(r - halo, 0), max(c - halo, 0)
                r1, c1 = min(r + bh + halo, h), min(c + bw + halo, w)
                ext = Window(c0, r0, c1 - c0, r1 - r0)
                prob = prob_src.read(1, window=ext)
                valid = valid_src.read(1, window=ext).astype(bool)
                mask = clean_mask(np.nan_to_num(prob, nan=0.0), valid, res_m, params)
                core = mask[r - r0:r - r0 + bh, c - c0:c - c0 + bw]
                dst.write(core, 1, window=block)
                total += int(core.sum())
    return total
