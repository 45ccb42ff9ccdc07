"""Joint band statistics (mean vector and covariance) accumulated block by block, in bounded memory.

One implementation for both sides of the out-of-domain check: training records the moments of its
training pixels in the model card, a scan those of its valid pixels while it writes the stack, and
``models.cards.domain_check`` compares the two. Values are in physical units (``tasks.core.bands``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

CHUNK_PX = 32768  # pixels per accumulation step


@dataclass
class BandMoments:
    """Running count, sum and cross-product sum of pixels over ``bands`` (float64).

    A pixel counts only where every band is finite, so the covariance is that of one pixel set.
    """

    bands: tuple[str, ...]
    n_px: int = 0
    value_sum: np.ndarray = field(default=None)  # (k,)
    cross_sum: np.ndarray = field(default=None)  # (k, k): sum of x x^T

    def __post_init__(self) -> None:
        self.bands = tuple(self.bands)
        k = len(self.bands)
        if self.value_sum is None:
            self.value_sum = np.zeros(k, dtype=np.float64)
        if self.cross_sum is None:
            self.cross_sum = np.zeros((k, k), dtype=np.float64)

    def add(self, values: np.ndarray) -> None:
        """Add pixels: ``values`` is (k, ...) in ``bands`` order; pixels with any NaN are skipped."""
        flat = np.asarray(values).reshape(len(self.bands), -1)
        # in runs of CHUNK_PX pixels, so the float64 copies stay in the CPU caches (5-8x faster
        # than whole windows, benchmarks/README.md); only the summation order differs
        for start in range(0, flat.shape[1], CHUNK_PX):
            part = flat[:, start:start + CHUNK_PX]
            keep = np.isfinite(part).all(axis=0)
            if keep.all():
                x = part.astype(np.float64)
            elif keep.any():
                x = part[:, keep].astype(np.float64)
            else:
                continue
            self.n_px += x.shape[1]
            self.value_sum += x.sum(axis=1)
            self.cross_sum += x @ x.T

    @property
    def mean(self) -> np.ndarray | None:
        return self.value_sum / self.n_px if self.n_px else None

    @property
    def covariance(self) -> np.ndarray | None:
        """Population covariance (divided by n); None without pixels."""
        if not self.n_px:
            return None
        m = self.mean
        cov = self.cross_sum / self.n_px - np.outer(m, m)
        return (cov + cov.T) / 2

    def to_json(self) -> dict[str, Any]:
        """``{"bands", "n_px", "mean", "covariance"}`` (lists; None without pixels)."""
        mean, cov = self.mean, self.covariance
        return {"bands": list(self.bands), "n_px": int(self.n_px),
                "mean": None if mean is None else [float(v) for v in mean],
                "covariance": None if cov is None else [[float(v) for v in row] for row in cov]}


def moments_of(values: np.ndarray, bands: Sequence[str]) -> BandMoments:
    """The moments of one array (k, ...) of pixels in ``bands`` order."""
    moments = BandMoments(tuple(bands))
    moments.add(values)
    return moments
