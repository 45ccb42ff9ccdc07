"""Weak labels: the bare-soil rule, its score, label combination and the agreement scores.

Real crops come from ../shared/data/iburi_2018 (S2 post RGB, AW3D30 slope and the published
reference predictions); the numbers they pin are documented in docs/weak_labels.md.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window

from models.index_rule import (
    IGNORE,
    RuleParams,
    binary_scores,
    combine_weak_labels,
    redness_index,
    scar_rule,
    scar_score,
    threshold_at_fraction,
)
from tasks.core.errors import InputError

P = RuleParams()


# ---------------------------------------------------------------------------- real Iburi crops
@pytest.fixture(scope="module")
def iburi(shared_data: Path) -> dict:
    """The north part of the S2/reference overlap (340 x 442 px), bands as float with NaN nodata."""
    root = shared_data / "iburi_2018"
    win = Window(0, 0, 442, 340)
    bands = {}
    for name, num in (("red", 4), ("green", 3), ("blue", 2)):
        with rasterio.open(root / "s2_post" / f"S2_post_B{num}.tif") as src:
            dn = src.read(1, window=win)
            transform = src.transform  # the window starts at (0, 0)
            crs = src.crs
            s2_full_transform = src.transform
        band = dn.astype(np.float32)
        band[dn == 0] = np.nan
        bands[name] = band
    with rasterio.open(root / "dem" / "AW3D30_slope_deg.tif") as src:
        slope = np.full(bands["red"].shape, np.nan, np.float32)
        reproject(src.read(1), slope, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=transform, dst_crs=crs, resampling=Resampling.bilinear,
                  dst_nodata=np.nan)
    ref_dir = root / "reference_predictions_west"
    with rasterio.open(ref_dir / "sentry_ex1_Predict_LS_HighConf_50.tif") as src:
        ref_transform = src.transform
        ref = src.read(1, window=Window(894, 1341, 442, 340))
    with rasterio.open(ref_dir / "sentry_ex1_MaskImage.tif") as src:
        cloud = src.read(1, window=Window(894, 1341, 442, 340)) != 0
    return {**bands, "slope": slope, "ref": ref, "cloud": cloud,
            "s2_transform": s2_full_transform, "ref_transform": ref_transform}


def test_reference_grid_is_an_exact_integer_offset_of_the_s2_grid(iburi: dict) -> None:
    s2, ref = iburi["s2_transform"], iburi["ref_transform"]
    assert s2.a == pytest.approx(ref.a, rel=1e-12) and s2.e == pytest.approx(ref.e, rel=1e-12)
    col = (s2.c - ref.c) / ref.a
    row = (s2.f - ref.f) / ref.e
    assert (round(row), round(col)) == (1341, 894)
    assert abs(col - 894) < 1e-6 and abs(row - 1341) < 1e-6


def test_rule_and_score_agree_on_real_crop(iburi: dict) -> None:
    args = (iburi["red"], iburi["green"], iburi["blue"], iburi["slope"])
    rule = scar_rule(*args)
    score = scar_score(*args)
    assert rule.dtype == bool and score.dtype == np.float32
    assert np.array_equal(score >= 0.5, rule)
    finite = np.isfinite(score)
    assert finite.all()  # no nodata in this crop
    assert score.min() >= 0.0 and score.max() <= 1.0
    assert 0.05 < rule.mean() < 0.25  # ~0.12 measured: a scar class, not the whole scene


def test_rule_beats_redness_against_reference_on_real_crop(iburi: dict) -> None:
    valid = ~iburi["cloud"]
    truth = iburi["ref"] != 0
    rule = scar_rule(iburi["red"], iburi["green"], iburi["blue"], iburi["slope"])
    red = redness_index(iburi["red"], iburi["blue"])
    t = threshold_at_fraction(red, valid, float(truth[valid].mean()))
    rule_iou = binary_scores(rule, truth, valid)["iou"]
    red_iou = binary_scores(red >= t, truth, valid)["iou"]
    # Documented: rule 0.310 vs redness 0.192 on this (north) part.
    assert rule_iou == pytest.approx(0.310, abs=0.005)
    assert red_iou == pytest.approx(0.192, abs=0.005)


def test_rule_false_and_score_nan_on_nodata_real_pixels(iburi: dict) -> None:
    red = iburi["red"][:32, :32].copy()
    red[5, 7] = np.nan
    slope = iburi["slope"][:32, :32].copy()
    slope[9, 9] = np.nan
    args = (red, iburi["green"][:32, :32], iburi["blue"][:32, :32], slope)
    rule, score = scar_rule(*args), scar_score(*args)
    assert not rule[5, 7] and not rule[9, 9]
    assert np.isnan(score[5, 7]) and np.isnan(score[9, 9])
    assert np.isfinite(score).sum() == 32 * 32 - 2


# ------------------------------------------------------------------------ constructed arrays
def _scar_pixel() -> tuple[float, float, float]:
    """A bright, reddish pixel well inside the rule: R=1400, G=1150, B=1200 (x 10000)."""
    return 1400.0, 1150.0, 1200.0


def test_rule_requires_each_condition() -> None:
    r, g, b = _scar_pixel()
    red = np.array([r, r, r, 700.0, r])
    green = np.array([g, g, r, 600.0, g])  # 3rd: R == G (not redder than green)
    blue = np.array([b, b, b, 650.0, b])  # 4th: dark (mean 650 < 900)
    slope = np.array([20.0, 3.0, 20.0, 20.0, np.nan])  # 2nd: flat; 5th: no slope
    assert scar_rule(red, green, blue, slope).tolist() == [True, False, False, False, False]


def test_rule_thresholds_are_inclusive() -> None:
    # Exactly at every threshold: slope == 8, (R-G)/(R+G) == 0.02, mean == 900.
    g = 900.0 * 3 / (1 + 1.02 / 0.98 + 1)  # solve R = G * 1.02/0.98, B = G, mean(R,G,B) = 900
    r = g * 1.02 / 0.98
    red, green, blue = (np.array([v], np.float64) for v in (r, g, g))
    slope = np.array([P.min_slope_deg])
    params = dataclasses.replace(P, min_red_green_index=float((r - g) / (r + g)),
                                 min_brightness_refl=float((r + g + g) / 30000.0))
    assert scar_rule(red, green, blue, slope, params)[0]
    assert scar_score(red, green, blue, slope, params)[0] >= 0.5
    below = np.nextafter(P.min_slope_deg, 0.0)
    assert not scar_rule(red, green, blue, np.array([below]), params)[0]
    assert scar_score(red, green, blue, np.array([below]), params)[0] < 0.5


def test_score_consistent_with_rule_on_random_and_boundary_values() -> None:
    rng = np.random.default_rng(7)
    n = 20000
    red = rng.uniform(300, 2500, n)
    green = red / rng.uniform(0.9, 1.15, n)
    blue = rng.uniform(600, 2000, n)
    slope = rng.uniform(0, 40, n)
    # Put many pixels a hair away from the slope threshold, where float32 rounding bites.
    slope[:2000] = P.min_slope_deg + rng.choice([-1, 1], 2000) * rng.uniform(0, 1e-9, 2000)
    rule = scar_rule(red, green, blue, slope)
    score = scar_score(red, green, blue, slope)
    assert np.array_equal(score >= 0.5, rule)
    assert ((score >= 0) & (score <= 1)).all()
    assert 0 < rule.mean() < 1


def test_score_grows_with_margin() -> None:
    r, g, b = _scar_pixel()
    slopes = np.array([0.0, 7.0, 8.0, 10.0, 30.0])
    ones = np.ones_like(slopes)
    score = scar_score(r * ones, g * ones, b * ones, slopes)
    assert np.all(np.diff(score) >= 0)
    assert score[2] == pytest.approx(0.5, abs=1e-6) and score[-1] > 0.9 and score[0] < 0.1


def test_inputs_must_share_a_shape() -> None:
    with pytest.raises(InputError, match="shape"):
        scar_rule(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(InputError, match="shape"):
        redness_index(np.ones(3), np.ones(4))


def test_rule_params_are_frozen_and_checked() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.min_slope_deg = 5.0  # type: ignore[misc]
    with pytest.raises(InputError, match="slope_softness_deg"):
        RuleParams(slope_softness_deg=0.0)


def test_redness_index_values_and_nan() -> None:
    red = np.array([1500.0, 1000.0, np.nan, 0.0])
    blue = np.array([500.0, 1000.0, 800.0, 0.0])
    out = redness_index(red, blue)
    assert out.dtype == np.float32
    assert out[0] == pytest.approx(0.5) and out[1] == 0.0
    assert np.isnan(out[2]) and np.isnan(out[3])


def test_combine_weak_labels_semantics() -> None:
    #              agree-1 agree-0 rule-only ref-only  invalid-ref  cloud(valid=0)+agree
    rule = np.array([True, False, True, False, True, False])
    ref = np.array([1, 0, 0, 1, 1, 0], np.uint8)
    valid = np.array([True, True, True, True, False, False])
    labels = combine_weak_labels(rule, ref, valid)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [1, 0, IGNORE, IGNORE, IGNORE, IGNORE]
    image_ok = np.array([True, False, True, True, True, True])
    labels = combine_weak_labels(rule, ref, valid, rule_valid=image_ok)
    assert labels.tolist() == [1, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]
    with pytest.raises(InputError, match="shape"):
        combine_weak_labels(rule, ref[:3], valid)


def test_binary_scores_numerics() -> None:
    pred = np.array([[1, 1, 1, 0], [0, 0, 1, 0]], bool)
    truth = np.array([[1, 1, 0, 1], [0, 0, 1, 1]], bool)
    valid = np.array([[True, True, True, True], [True, True, True, False]])
    s = binary_scores(pred, truth, valid)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (3, 1, 1, 2)
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(0.75) and s["iou"] == pytest.approx(0.6)
    empty = binary_scores(np.zeros(4, bool), np.zeros(4, bool), np.ones(4, bool))
    assert empty["tn"] == 4
    assert all(math.isnan(empty[k]) for k in ("precision", "recall", "f1", "iou"))


def test_threshold_at_fraction() -> None:
    score = np.array([0.1, 0.9, 0.5, 0.7, np.nan, 0.3, 0.8, 0.2, 0.6, 0.4, 0.95])
    valid = np.ones(score.shape, bool)
    valid[-1] = False  # 0.95 is outside the valid area
    t = threshold_at_fraction(score, valid, 0.3)  # 9 valid finite -> round(2.7) = 3
    assert t == pytest.approx(0.7)
    assert np.count_nonzero((score >= t) & valid) == 3
    assert threshold_at_fraction(score, valid, 0.0) == math.inf
    assert threshold_at_fraction(score, valid, 1.0) == pytest.approx(0.1)
    ties = np.array([1.0, 1.0, 1.0, 0.0])
    assert np.count_nonzero(ties >= threshold_at_fraction(ties, np.ones(4, bool), 0.25)) == 3
    with pytest.raises(InputError, match="fraction"):
        threshold_at_fraction(score, valid, 1.5)
    with pytest.raises(InputError, match="no valid"):
        threshold_at_fraction(score, np.zeros(score.shape, bool), 0.5)
