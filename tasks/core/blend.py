"""The one patch loop: tile, batch (always padded to the batch size), predict, blend.

Every prediction goes through :func:`blend_patches`: the scan's block jobs
(``tasks.predict.blocks``) read patches from the aligned stack on disk, while evaluation, checkpoint
selection during training and ``landslide compare`` call :func:`predict_array` on an in-memory
scene. Both give a pixel the same bits: the same global patch layout, the same batch size (short
batches are padded), the same blending order.

A :class:`Detector` maps a batch of patches in physical units (B, C, H, W) to landslide
probabilities (B, H, W); ``models.detectors`` holds the implementations (a network from a
checkpoint, an ensemble, an ONNX export, the weights-free index rule).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from tasks.core import defaults
from tasks.core.bands import band_index, validate_bands
from tasks.core.prefetch import prefetch
from tasks.core.stitch import Stitcher, binary_entropy
from tasks.core.tiling import Patch, iter_windows, pad_to, read_patches, windows_intersect


class Detector(Protocol):
    name: str
    ref: str  # "name@sha256-prefix" for the manifest and the polygons' `model` attribute
    bands: tuple[str, ...]  # channels consumed, contract order
    threshold: float
    patch_size: int
    forward_s: float  # seconds spent in the network (or rule), summed over calls

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 physical units (NaN = nodata), (B, H, W) bool -> (B, H, W) prob."""

    def describe(self) -> dict:
        """What the manifest records about this detector."""


class PatchReader(Protocol):
    def read(self, windows: Sequence[Window], band_indexes: Sequence[int], size: int) -> list[Patch]:
        """The non-empty patches of ``windows`` (channels ``band_indexes``, 0-based), padded to
        ``size``, in the given order."""


class RasterPatches:
    """Patches of an aligned stack on disk (``stack.tif`` + ``valid.tif``, open datasets)."""

    def __init__(self, stack: rasterio.DatasetReader, valid: rasterio.DatasetReader):
        self.stack, self.valid = stack, valid

    def read(self, windows: Sequence[Window], band_indexes: Sequence[int], size: int) -> list[Patch]:
        return read_patches(self.stack, self.valid, windows, band_indexes, size)


class ArrayPatches:
    """Patches of an in-memory scene: ``image`` (14, H, W) float32 in contract order and physical
    units (NaN = nodata), ``valid`` (H, W) bool."""

    def __init__(self, image: np.ndarray, valid: np.ndarray):
        self.image, self.valid = image, valid

    def read(self, windows: Sequence[Window], band_indexes: Sequence[int], size: int) -> list[Patch]:
        patches = []
        for w in windows:
            r, c, h, wd = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
            ok = self.valid[r:r + h, c:c + wd].astype(bool)
            if not ok.any():
                continue
            data = self.image[band_indexes, r:r + h, c:c + wd].astype(np.float32, copy=False)
            pad_ok = np.zeros((size, size), dtype=bool)
            pad_ok[:h, :wd] = ok
            patches.append(Patch(w, pad_to(data, size), pad_ok))
        return patches


class BorderPatches:
    """Predictions of the patches that straddle block borders, kept until every block that needs
    them has taken them, so that blocks run one after another in one process predict each patch
    once (blocks on a Dask cluster run in other processes and predict such a patch once per block
    it touches; benchmarks/README.md has the extra forward passes this costs).

    A taken prediction is the one a second forward pass would give: every forward pass has the same
    batch size (:func:`blend_patches` pads short batches), a network's output for a patch then does not
    depend on the other patches of its batch (checked bitwise in ``tests/tasks/test_blocks_shared.py``;
    it does depend on the batch size), and every block adds its patches in the global layout's order,
    so outputs do not depend on which block predicted a patch. Memory: the patches along the
    borders of the blocks still to run, at most about two patch rows across the grid (an estimated
    20 MB for a full Sentinel-2 tile).
    """

    def __init__(self, windows: list[Window], blocks: list[Window]):
        rows = np.array([int(w.row_off) for w in windows])
        cols = np.array([int(w.col_off) for w in windows])
        heights = np.array([int(w.height) for w in windows])
        widths = np.array([int(w.width) for w in windows])
        uses = np.zeros(len(windows), dtype=np.int64)
        for b in blocks:  # the same test as windows_intersect, for all windows at once
            uses += ((cols < b.col_off + b.width) & (b.col_off < cols + widths)
                     & (rows < b.row_off + b.height) & (b.row_off < rows + heights))
        self._uses = {(int(rows[i]), int(cols[i])): int(uses[i]) for i in np.flatnonzero(uses > 1)}
        self._kept: dict[tuple[int, int], tuple] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def shared(self, key: tuple[int, int]) -> bool:
        """Whether another block (still to run) needs this patch too."""
        return key in self._uses

    def has(self, key: tuple[int, int]) -> bool:
        return key in self._kept

    def offer(self, key: tuple[int, int], entry: tuple) -> None:
        """Keep a fresh prediction for the other blocks that need it."""
        if self._uses.get(key, 0) > 1:
            self._kept[key] = entry
            self._uses[key] -= 1

    def take(self, key: tuple[int, int]) -> tuple:
        """A kept prediction; dropped once the last block that needs it has taken it."""
        entry = self._kept[key]
        self._uses[key] -= 1
        if self._uses[key] <= 0:
            del self._kept[key], self._uses[key]
        return entry


def blend_patches(reader: PatchReader, detector: Detector, block: Window, windows: list[Window],
                  overlap: int, batch_size: int, border: BorderPatches | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, set[tuple[int, int]], int]:
    """Blend every patch of the global layout touching ``block``; return its core probability, its
    core uncertainty, the patches blended (global row/col offsets) and the forward passes (patches
    the network ran on, short batches' padding included).

    The uncertainty is the detector's own per-pixel uncertainty blended like the probability when
    it has one (an ensemble: std of member probabilities), else the predictive entropy (bits) of
    the blended probability. ``border`` (blocks run in this process) supplies the patches an earlier
    block predicted and keeps the ones later blocks need.
    """
    size = detector.patch_size
    band_idx = [band_index(b) for b in validate_bands(detector.bands)]
    sel = [w for w in windows if windows_intersect(w, block)]
    r0 = min(int(w.row_off) for w in sel)
    c0 = min(int(w.col_off) for w in sel)
    r1 = max(int(w.row_off + w.height) for w in sel)
    c1 = max(int(w.col_off + w.width) for w in sel)
    stitcher = Stitcher(r1 - r0, c1 - c0, size, overlap)
    own_unc = hasattr(detector, "predict_with_uncertainty")
    unc_stitcher = Stitcher(r1 - r0, c1 - c0, size, overlap) if own_unc else None
    keys = [(int(w.row_off), int(w.col_off)) for w in sel]
    to_predict = [w for w, key in zip(sel, keys) if border is None or not border.has(key)]
    # patches are added in the layout's order whoever predicted them, so every pixel sums the same
    # values in the same order (bitwise the same result for any block size or split of the work)
    ready: dict[tuple[int, int], tuple | None] = {}  # None: an empty patch (no valid pixel)
    predicted: set[tuple[int, int]] = set()
    n_added = 0

    def add_ready() -> None:
        nonlocal n_added
        while n_added < len(sel):
            key, w = keys[n_added], sel[n_added]
            if key in ready:
                entry = ready.pop(key)
            elif border is not None and border.has(key):
                entry = border.take(key)
            else:
                return  # its batch has not been predicted yet
            n_added += 1
            if entry is None:
                continue
            prob, unc, ok = entry
            predicted.add(key)
            local = Window(w.col_off - c0, w.row_off - r0, w.width, w.height)
            stitcher.add(local, prob, ok)
            if unc_stitcher is not None:
                unc_stitcher.add(local, unc, ok)

    depth = getattr(detector, "prefetch_batches", 0)
    # the stacked batches' arrays, reused round-robin within this call: the consumer's batch, the
    # queue's depth and the one being stacked (one without read-ahead: the loop is done with a
    # batch before the next is stacked). A fresh batch of 512 patches page-faulted 400 MB in again
    # each time (benchmarks.gpu's loop on the CPU at batch 512 without the queue: 1,956-1,988 ->
    # 2,407-2,609 patches/s); it pays where a call has many batches (predict_array, large blocks).
    # A detector's outputs never alias its input, so nothing kept refers to a reused array.
    slots: list[tuple[np.ndarray, np.ndarray] | None] = [None] * (depth + 2 if depth else 1)

    def batches():
        """(windows read, the window and valid mask of each non-empty patch, the batch of their
        data and valid masks stacked or None without patches): batch_size patches each, fewer in
        the last. With read-ahead the stacking runs in the reader's thread too, beside the
        device's work on the batch before; the patches' own arrays are then dropped."""
        start, n_batches = 0, 0
        while start < len(to_predict):
            taken, patches = [], []
            while len(patches) < batch_size and start < len(to_predict):
                more = to_predict[start:start + batch_size - len(patches)]
                start += len(more)
                taken += more
                patches += reader.read(more, band_idx, size)
            stacked = None
            if patches:
                # every forward pass gets exactly batch_size patches (a short batch repeats its
                # first patch): a network's output for a patch depends on the batch size, not on
                # the other patches in it, so a patch gets the same bits whichever block or batch
                # it falls in
                rows = [*range(len(patches)), *[0] * (batch_size - len(patches))]
                k = n_batches % len(slots)
                n_batches += 1
                first = patches[0]
                if slots[k] is None or slots[k][0].shape[1:] != first.data.shape \
                        or slots[k][0].dtype != first.data.dtype:  # as np.stack would make them
                    slots[k] = (np.empty((batch_size, *first.data.shape), first.data.dtype),
                                np.empty((batch_size, *first.valid.shape), first.valid.dtype))
                stacked = (np.stack([patches[i].data for i in rows], out=slots[k][0]),
                           np.stack([patches[i].valid for i in rows], out=slots[k][1]))
            placed = [(p.window, p.valid) for p in patches]
            del patches  # their data is in the stacked batch now
            yield taken, placed, stacked

    n_forward = 0
    # GPU path (issue 19): a detector with prefetch_batches > 0 has the next batches read by a
    # background thread while it computes; 0 (CPU, the default) iterates batches() itself
    for batch_windows, placed, stacked in prefetch(batches(), depth):
        for w in batch_windows:
            ready[(int(w.row_off), int(w.col_off))] = None
        if stacked is not None:
            batch, ok = stacked
            if own_unc:
                prob, unc = detector.predict_with_uncertainty(batch, ok)
            else:
                prob, unc = detector.predict(batch, ok), None
            n_forward += len(batch)  # padding included: the network ran on it
            for j, (window, patch_ok) in enumerate(placed):
                key = (int(window.row_off), int(window.col_off))
                ready[key] = (prob[j], None if unc is None else unc[j], patch_ok)
                if border is not None and border.shared(key):  # a copy: not the whole batch
                    border.offer(key, (prob[j].copy(), None if unc is None else unc[j].copy(),
                                       patch_ok))
        add_ready()
    add_ready()
    br, bc = int(block.row_off) - r0, int(block.col_off) - c0
    core = stitcher.result()[br:br + int(block.height), bc:bc + int(block.width)]
    unc_core = (unc_stitcher.result()[br:br + int(block.height), bc:bc + int(block.width)]
                if unc_stitcher is not None else binary_entropy(core))
    return core, unc_core, predicted, n_forward


def predict_array(image: np.ndarray, valid: np.ndarray, detector: Detector,
                  overlap: int = defaults.OVERLAP_PX, batch_size: int = defaults.BATCH_SIZE,
                  cell_px: int | None = None) -> np.ndarray:
    """The blended probability of an in-memory scene (evaluation, training, ``compare``).

    Args:
        image: (14, H, W) float32 stack in contract order and physical units (NaN = nodata).
        valid: (H, W) bool.
        cell_px: the scene is a grid of independent ``cell_px`` cells (a mosaic of dataset
            patches): each cell is tiled on its own and no patch crosses a cell border. The cells'
            patches still share full batches.

    Returns:
        (H, W) float32 blended probability, NaN where nothing valid was predicted.
    """
    height, width = valid.shape
    size = detector.patch_size
    if cell_px:
        windows = [Window(c + w.col_off, r + w.row_off, w.width, w.height)
                   for r in range(0, height, cell_px) for c in range(0, width, cell_px)
                   for w in iter_windows(min(cell_px, height - r), min(cell_px, width - c), size,
                                         overlap)]
    else:
        windows = list(iter_windows(height, width, size, overlap))
    whole = Window(0, 0, width, height)
    return blend_patches(ArrayPatches(image, valid), detector, whole, windows, overlap, batch_size)[0]
