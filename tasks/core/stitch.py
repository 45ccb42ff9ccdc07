"""Blend overlapping patch probabilities without seams.

Like Raster Vision's ``add_window``/``get_score_arr`` (sum of scores and of hits, then divide), but every
patch is weighted by a smooth window that is 1 in its core and falls off with a raised cosine across
the overlap, so a pixel near one patch's border takes most of its value from the neighbour that sees
it in its interior. Only valid pixels count.
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

# The 1-D ramps never reach 0, so a pixel covered only by a patch border still gets a value. The
# floor is applied to the 1-D ramps, not to their 2-D product: flooring the product would change the
# ratio of two patches' weights along the scene edges and leave a step there.
MIN_WEIGHT = 1e-3


def blend_window(size: int, overlap: int) -> np.ndarray:
    """(size, size) float32 weights: raised-cosine ramps ``overlap`` px wide, 1 in the core."""
    ramp = np.ones(size, dtype=np.float64)
    if overlap > 0:
        n = min(overlap, size // 2)
        t = (np.arange(n) + 0.5) / n
        edge = np.maximum(0.5 - 0.5 * np.cos(np.pi * t), MIN_WEIGHT)
        ramp[:n] = edge
        ramp[size - n:] = edge[::-1]
    return np.outer(ramp, ramp).astype(np.float32)


class Stitcher:
    """Accumulates weighted probabilities on a (H, W) canvas.

    Memory is two float32 canvases; block-wise processing (one Stitcher per block plus a halo) keeps
    it bounded for scenes that do not fit.
    """

    def __init__(self, height: int, width: int, patch_size: int = 128, overlap: int = 32):
        self.height, self.width, self.patch_size = height, width, patch_size
        self.weights = blend_window(patch_size, overlap)
        self.prob_sum = np.zeros((height, width), dtype=np.float32)
        self.weight_sum = np.zeros((height, width), dtype=np.float32)

    def add(self, window: Window, prob: np.ndarray, valid: np.ndarray) -> None:
        """Add one patch's probabilities (size x size, padded) over ``window``."""
        r, c = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        weight = self.weights[:h, :w] * valid[:h, :w]
        self.prob_sum[r:r + h, c:c + w] += weight * prob[:h, :w]
        self.weight_sum[r:r + h, c:c + w] += weight

    def result(self) -> np.ndarray:
        """(H, W) float32 blended probability; NaN where no valid patch pixel landed."""
        out = np.full((self.height, self.width), np.nan, dtype=np.float32)
        np.divide(self.prob_sum, self.weight_sum, out=out, where=self.weight_sum > 0)
        return out


# pixels per step of binary_entropy: its float64 temporaries stay in the CPU caches
ENTROPY_CHUNK_PX = 65536


def binary_entropy(prob: np.ndarray) -> np.ndarray:
    """Predictive entropy of a Bernoulli probability, in bits (0 = certain, 1 = p of 0.5); NaN kept."""
    # The same float64 operations as -(p log2 p + (1-p) log2 (1-p)), element by element, so bit for
    # bit the same result, in runs of ENTROPY_CHUNK_PX pixels through three reused float64 buffers:
    # 3x less CPU than whole-array temporaries (1.1 s with page faults, 0.26 s warm, 0.09 s in runs
    # for 19 M pixels), which made it a quarter of the GPU patch loop's CPU time.
    flat = np.ascontiguousarray(prob).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    n = min(ENTROPY_CHUNK_PX, flat.size)
    p_buf, q_buf, h_buf = (np.empty(n, dtype=np.float64) for _ in range(3))
    for start in range(0, flat.size, ENTROPY_CHUNK_PX):
        stop = min(start + ENTROPY_CHUNK_PX, flat.size)
        p, q, h = p_buf[:stop - start], q_buf[:stop - start], h_buf[:stop - start]
        p[...] = flat[start:stop]
        np.clip(p, 1e-7, 1 - 1e-7, out=p)
        np.subtract(1, p, out=q)
        np.log2(p, out=h)
        h *= p
        np.log2(q, out=p)
        p *= q
        h += p
        np.negative(h, out=h)
        out[start:stop] = h
    out = out.reshape(np.shape(prob))
    out[~np.isfinite(prob)] = np.nan
    return out
