"""``quicklook.png``: the post-event scene in true colour (B04, B03, B02), small enough to look at.

Read from the aligned stack (``.work/stack.tif``, or the post-event stack in event mode) with a
decimated read: GDAL averages each output pixel from the blocks it streams, so memory holds the
small image, never the scene at full resolution. Each band is stretched linearly between its 2nd
and 98th percentile over the analysed pixels; pixels without data are transparent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import Resampling

from tasks.core.bands import BAND_NAMES
from tasks.core.files import atomic_write

log = logging.getLogger(__name__)

RGB_BANDS = ("B04", "B03", "B02")  # red, green, blue
QUICKLOOK_MAX_PX = 1024  # the long side of quicklook.png, at most (px)
STRETCH_PERCENTILES = (2.0, 98.0)
NO_RGB_GREY = 160  # analysed pixels of a run whose inputs have no true-colour bands


@dataclass(frozen=True)
class Quicklook:
    """An RGBA image of the run's grid, decimated.

    Attributes:
        rgba: (H, W, 4) uint8; alpha 0 where no band has data.
        transform: affine transform of the image's pixels (the grid's CRS).
        crs: the grid's CRS (e.g. ``EPSG:32654``).
        has_rgb: False when the stack had no true-colour data (a grey image of the analysed area).
        stretch: per band (red, green, blue) the (low, high) reflectance mapped to 0 and 255.
    """

    rgba: np.ndarray
    transform: Affine
    crs: str
    has_rgb: bool
    stretch: tuple[tuple[float, float], ...]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in ``crs``."""
        h, w = self.rgba.shape[:2]
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (w, h)
        return (left, bottom, right, top)


def quicklook_shape(height: int, width: int, max_px: int = QUICKLOOK_MAX_PX) -> tuple[int, int]:
    """(H, W) of the quicklook: the grid's aspect, the long side at most ``max_px`` (never upsampled)."""
    scale = min(1.0, max_px / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def stretch_band(values: np.ndarray, percentiles: tuple[float, float] = STRETCH_PERCENTILES
                 ) -> tuple[np.ndarray, tuple[float, float]]:
    """Linear stretch of (H, W) float values (NaN = no data) to uint8 between two percentiles.

    Returns:
        ((H, W) uint8 with 0 where NaN, (low, high) in the values' units).
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8), (float("nan"), float("nan"))
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    span = high - low if high > low else 1.0
    scaled = np.clip((np.nan_to_num(values, nan=low) - low) / span, 0.0, 1.0)
    return np.rint(scaled * 255).astype(np.uint8), (low, high)


def read_quicklook(stack_path: str | Path, max_px: int = QUICKLOOK_MAX_PX) -> Quicklook:
    """The true-colour quicklook of a 14-channel stack (band order :data:`tasks.core.bands.BAND_NAMES`).

    Args:
        stack_path: the aligned stack (float32, NaN = no data).
        max_px: long side of the image (px).
    """
    indexes = [BAND_NAMES.index(b) + 1 for b in RGB_BANDS]
    with rasterio.open(stack_path) as src:
        h, w = quicklook_shape(src.height, src.width, max_px)
        # averaging over each output pixel: GDAL streams the blocks, memory holds (3, h, w)
        rgb = src.read(indexes, out_shape=(3, h, w), resampling=Resampling.average,
                       out_dtype="float32", masked=False)
        transform = src.transform * Affine.scale(src.width / w, src.height / h)
        crs = src.crs.to_string()
    data = np.isfinite(rgb).all(axis=0)
    has_rgb = bool(data.any())
    if not has_rgb:  # the inputs have no true-colour bands: grey where any channel was analysed
        with rasterio.open(stack_path) as src:
            any_band = src.read(out_shape=(src.count, h, w), resampling=Resampling.nearest,
                                out_dtype="float32")
        data = np.isfinite(any_band).any(axis=0)
        channels = [np.where(data, NO_RGB_GREY, 0).astype(np.uint8)] * 3
        stretch: tuple[tuple[float, float], ...] = ()
    else:
        pairs = [stretch_band(np.where(data, band, np.nan)) for band in rgb]
        channels = [p[0] for p in pairs]
        stretch = tuple(p[1] for p in pairs)
    alpha = np.where(data, 255, 0).astype(np.uint8)
    rgba = np.dstack([*channels, alpha])
    return Quicklook(rgba, transform, crs, has_rgb, stretch)


def write_quicklook_png(quicklook: Quicklook, path: str | Path) -> Path:
    """Write the quicklook as an RGBA PNG (renamed into place when complete)."""
    path = Path(path)
    with atomic_write(path, suffix=".tmp.png") as tmp:
        Image.fromarray(quicklook.rgba, mode="RGBA").save(tmp, format="PNG", optimize=True)
    log.info("wrote %s (%d x %d px)", path, quicklook.rgba.shape[1], quicklook.rgba.shape[0])
    return path
