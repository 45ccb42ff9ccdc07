"""Cut the analysis grid into overlapping 128 x 128 patches.

Windows step by ``size - overlap``; the last window of a row/column is shifted inward so it ends at
the grid edge (no partial patches). A grid side shorter than one patch gets one window of that side,
which ``read_patch`` reflect-pads to the full patch size (an ROI smaller than a patch still runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from tasks.core.errors import InputError


def _starts(length: int, size: int, overlap: int) -> list[int]:
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def iter_windows(height: int, width: int, size: int = 128, overlap: int = 32) -> Iterator[Window]:
    """Yield patch windows covering a ``height`` x ``width`` grid, row-major.

    Raises:
        InputError: ``overlap`` not in [0, size).
    """
    if size <= 0 or not 0 <= overlap < size:
        raise InputError(f"patch overlap must be in [0, {size}), got {overlap}")
    for row in _starts(height, size, overlap):
        for col in _starts(width, size, overlap):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def iter_blocks(height: int, width: int, block_px: int) -> list[Window]:
    """Core windows of ``block_px`` squares tiling the grid row-major (last row/column smaller).

    The block layout every block-wise stage shares; a block's row/column index is
    ``row_off // block_px`` / ``col_off // block_px``.
    """
    if block_px < 1:
        raise InputError(f"block_px must be >= 1, got {block_px}")
    return [Window(c, r, min(block_px, width - c), min(block_px, height - r))
            for r in range(0, height, block_px) for c in range(0, width, block_px)]


def windows_intersect(a: Window, b: Window) -> bool:
    return (a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width
            and a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height)


def count_windows(height: int, width: int, size: int = 128, overlap: int = 32) -> int:
    return len(_starts(height, size, overlap)) * len(_starts(width, size, overlap))


@dataclass(frozen=True)
class Patch:
    window: Window
    data: np.ndarray  # (C, size, size) float32, physical units, NaN = nodata
    valid: np.ndarray  # (size, size) bool; False in padding


def pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad the last two axes up to ``size`` (edge mode where reflect is impossible)."""
    h, w = arr.shape[-2:]
    if h == size and w == size:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, size - h), (0, size - w)]
    mode = "reflect" if h > 1 and w > 1 and size - h < h and size - w < w else "edge"
    return np.pad(arr, pad, mode=mode)


def read_patches(stack: rasterio.DatasetReader, valid: rasterio.DatasetReader,
                 windows: Sequence[Window], band_indexes: Sequence[int], size: int) -> list[Patch]:
    """Read windows of the channels ``band_indexes`` (0-based) and the valid mask; skip empty ones.

    Windows of one patch row (same ``row_off`` and height) are read as one strip spanning their
    columns and cut into patches: neighbouring patches overlap, and one read per strip instead of
    one per patch decompresses each stored block once instead of up to four times. The values are
    exactly those of a read per window.
    """
    patches: list[Patch] = []
    indexes = [i + 1 for i in band_indexes]
    for strip in _strips(windows):
        c0 = min(int(w.col_off) for w in strip)
        c1 = max(int(w.col_off + w.width) for w in strip)
        r0, height = int(strip[0].row_off), int(strip[0].height)
        span = Window(c0, r0, c1 - c0, height)
        ok_strip = valid.read(1, window=span).astype(bool)
        if not ok_strip.any():
            continue  # entirely nodata: nothing to predict
        data_strip = None
        for window in strip:
            cols = slice(int(window.col_off) - c0, int(window.col_off + window.width) - c0)
            ok = ok_strip[:, cols]
            if not ok.any():
                continue
            if data_strip is None:
                data_strip = stack.read(indexes, window=span).astype(np.float32, copy=False)
            data = data_strip[:, :, cols]
            patches.append(Patch(window, pad_to(data, size), pad_to(ok, size) & _pad_mask(ok.shape, size)))
    return patches


def _strips(windows: Sequence[Window]) -> list[list[Window]]:
    """Runs of consecutive windows with the same row offset and height that overlap or touch
    their predecessor (one patch row of a block), in the given order."""
    strips: list[list[Window]] = []
    for window in windows:
        last = strips[-1][-1] if strips else None
        if (last is not None and (last.row_off, last.height) == (window.row_off, window.height)
                and last.col_off <= window.col_off <= last.col_off + last.width):
            strips[-1].append(window)
        else:
            strips.append([window])
    return strips


def _pad_mask(shape: tuple[int, int], size: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[: shape[0], : shape[1]] = True
    return m
