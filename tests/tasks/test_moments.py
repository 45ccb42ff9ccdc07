"""BandMoments: joint mean and covariance accumulated block by block."""

from __future__ import annotations

import numpy as np

from tasks.core.moments import BandMoments, moments_of


def test_blockwise_moments_equal_the_whole_array_and_skip_incomplete_pixels():
    rng = np.random.default_rng(0)
    values = rng.normal([1000.0, 800.0, 90.0], [120.0, 170.0, 40.0], size=(5000, 3)).T.copy()
    values[0] += 0.5 * values[1]  # correlated bands
    values[1, 17] = np.nan  # a pixel missing one band is left out of every band's sums
    whole = moments_of(values, ("B02", "B03", "DEM"))
    blocks = BandMoments(("B02", "B03", "DEM"))
    for chunk in np.array_split(values, 7, axis=1):
        blocks.add(chunk)
    complete = values[:, np.isfinite(values).all(axis=0)]
    assert whole.n_px == blocks.n_px == complete.shape[1] == 4999
    np.testing.assert_allclose(blocks.mean, complete.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(blocks.covariance, np.cov(complete, bias=True), rtol=1e-9)
    js = blocks.to_json()
    assert js["bands"] == ["B02", "B03", "DEM"] and len(js["covariance"]) == 3


def test_no_pixel_gives_no_statistics():
    empty = moments_of(np.full((2, 10), np.nan), ("B02", "B03"))
    assert empty.n_px == 0 and empty.mean is None and empty.to_json()["covariance"] is None
