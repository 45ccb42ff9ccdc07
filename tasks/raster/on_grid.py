"""Rasters whose pixels already are the analysis grid's: read as they are, not through GDAL's warper.

Sentinel-2's 10 m bands in the ROI's UTM zone are such rasters. The warper gives exactly their pixels
there (bilinear weights of 1 and 0) at many times the cost of a plain read (tests/tasks/test_on_grid.py).
"""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.windows import Window

from tasks.core.grid import AnalysisGrid


def on_grid_offset_px(src, grid: AnalysisGrid) -> tuple[int, int] | None:
    """(row, col) of the grid's first pixel in ``src``'s pixels when ``src``'s pixels are the grid's
    (same CRS, pixel size and orientation; origins a whole number of pixels apart); else None."""
    return aligned_offset_px(src, grid, 1, res_atol_m=1e-9, offset_atol_px=1e-6)


def aligned_offset_px(src, grid: AnalysisGrid, factor: int, res_atol_m: float = 0.0,
                      offset_atol_px: float = 0.0) -> tuple[int, int] | None:
    """(row, col) of the grid's first pixel from ``src``'s first pixel, in grid pixels, when each
    pixel of ``src`` is ``factor`` x ``factor`` grid pixels (pixel size within ``res_atol_m``) with
    its edges on grid edges (origins a whole number of grid pixels apart, within
    ``offset_atol_px``), in the same CRS and orientation; else None."""
    t, g = src.transform, grid.transform
    if t.b != 0 or t.d != 0 or abs(t.a - factor * g.a) > res_atol_m or abs(t.e - factor * g.e) > res_atol_m:
        return None
    col, row = (g.c - t.c) / (t.a / factor), (g.f - t.f) / (t.e / factor)
    if abs(col - round(col)) > offset_atol_px or abs(row - round(row)) > offset_atol_px:
        return None
    if src.crs != rasterio.crs.CRS.from_user_input(grid.crs):
        return None
    return int(round(row)), int(round(col))


def read_on_grid(src, offset_px: tuple[int, int], win: Window, fill: float) -> np.ndarray:
    """float32 (h, w): the grid window ``win`` of band 1 of ``src``, whose pixels are the grid's
    (``offset_px`` from :func:`on_grid_offset_px`); ``fill`` beyond the file's edge, as the warper
    fills there (the nodata value, else 0)."""
    row_px, col_px = offset_px
    height, width = int(win.height), int(win.width)
    out = np.full((height, width), fill, dtype="float32")
    top, left = int(win.row_off) + row_px, int(win.col_off) + col_px
    rs, re = max(top, 0), min(top + height, src.height)
    cs, ce = max(left, 0), min(left + width, src.width)
    if rs < re and cs < ce:
        out[rs - top:re - top, cs - left:ce - left] = src.read(1, window=Window(cs, rs, ce - cs, re - rs))
    return out
