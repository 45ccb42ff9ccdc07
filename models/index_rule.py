"""Weak landslide labels: a transparent bare-soil rule that must agree with a reference model.

No real scar masks exist for the bundled Iburi 2018 sample. The labels we train on are the pixels
where two independent opinions agree:

* a published CNN's predictions (Prakash et al. 2021), available west of 141.93 E only, and
* a three-line spectral-and-terrain rule on post-event RGB plus slope (``scar_rule``):
  fresh scars are *bright*, *redder than green* (bare pumice soil, no canopy) and *on slopes*
  (which excludes flat, bright floodplain fields, river gravel, roads and buildings).

Where the two disagree, or the reference was not computed or is cloud-masked, the pixel is
``IGNORE``. How the thresholds were chosen and how well the rule agrees with the reference is in
``docs/weak_labels.md`` (reproduce with ``tests/data/measure_weak_labels.py``).

All functions are pure numpy. Reflectance inputs are top-of-atmosphere reflectance x 10000 (the
pipeline's physical S2 units, docs/contracts.md section 1) as float arrays on one grid, NaN = nodata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.core.errors import InputError

IGNORE = 255
"""Label value of pixels that carry no label (disagreement, no reference, cloud, nodata)."""

_REFL_SCALE = 10000.0  # S2 L1C digital numbers are reflectance x 10000


@dataclass(frozen=True)
class RuleParams:
    """Thresholds of the bare-soil-on-slope rule (chosen on the northern 2/3 of the overlap).

    A pixel is a scar when all three hold:
    ``slope_deg >= min_slope_deg``, ``(R - G) / (R + G) >= min_red_green_index`` and
    ``mean(R, G, B) / 10000 >= min_brightness_refl``.

    The ``*_softness*`` values only shape ``scar_score``: a margin of one softness unit above the
    tightest threshold gives a score of about 0.73, three units about 0.95. They do not change
    which pixels pass the rule.

    Attributes:
        min_slope_deg: Minimum terrain slope in degrees (30 m DSM slope resampled to the S2 grid).
            Excludes flat, bright fields, river gravel bars, roads and buildings.
        min_red_green_index: Minimum ``(R - G) / (R + G)`` (dimensionless, -1..1). Bare pumice
            soil is redder than green; green canopy and grass are not.
        min_brightness_refl: Minimum mean of the R, G, B TOA reflectances (0..1). Fresh scars are
            bright; forest (also reddish in autumn) and shaded slopes are dark.
        slope_softness_deg: Scale of the slope margin in ``scar_score`` (degrees).
        red_green_softness: Scale of the red-green index margin in ``scar_score``.
        brightness_softness_refl: Scale of the brightness margin in ``scar_score`` (reflectance).
    """

    min_slope_deg: float = 8.0
    min_red_green_index: float = 0.02
    min_brightness_refl: float = 0.090
    slope_softness_deg: float = 2.5
    red_green_softness: float = 0.025
    brightness_softness_refl: float = 0.005

    def __post_init__(self) -> None:
        for name in ("slope_softness_deg", "red_green_softness", "brightness_softness_refl"):
            if not getattr(self, name) > 0:
                raise InputError(f"RuleParams.{name} must be > 0, got {getattr(self, name)!r}")


def _as_float_arrays(**arrays: np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays.values()]
    shapes = {name: a.shape for name, a in zip(arrays, out)}
    if len(set(shapes.values())) != 1:
        raise InputError(f"inputs must share one grid shape, got {shapes}; resample them first")
    return out


def redness_index(red: np.ndarray, blue: np.ndarray) -> np.ndarray:
    """Normalised red-blue difference ``(R - B) / (R + B)``, the plain baseline index.

    Args:
        red: Red band (S2 B04), reflectance x 10000, NaN = nodata, any shape.
        blue: Blue band (S2 B02) on the same grid.

    Returns:
        float32 array of the same shape in -1..1; NaN where either input is NaN or ``R + B <= 0``.

    Raises:
        InputError: The shapes differ.
    """
    r, b = _as_float_arrays(red=red, blue=blue)
    total = r + b
    ok = np.isfinite(r) & np.isfinite(b) & (total > 0)
    out = np.full(r.shape, np.nan, dtype=np.float32)
    out[ok] = ((r[ok] - b[ok]) / total[ok]).astype(np.float32)
    return out


def _margins(red: np.ndarray, green: np.ndarray, blue: np.ndarray, slope_deg: np.ndarray,
             params: RuleParams) -> tuple[np.ndarray, np.ndarray]:
    """Smallest threshold margin in softness units (>= 0 passes the rule) and the valid mask."""
    r, g, b, s = _as_float_arrays(red=red, green=green, blue=blue, slope_deg=slope_deg)
    valid = np.isfinite(r) & np.isfinite(g) & np.isfinite(b) & np.isfinite(s) & (r + g > 0)
    margin = np.full(r.shape, -np.inf)
    rv, gv, bv, sv = r[valid], g[valid], b[valid], s[valid]
    red_green = (rv - gv) / (rv + gv)
    brightness_refl = (rv + gv + bv) / (3.0 * _REFL_SCALE)
    margin[valid] = np.minimum.reduce([
        (sv - params.min_slope_deg) / params.slope_softness_deg,
        (red_green - params.min_red_green_index) / params.red_green_softness,
        (brightness_refl - params.min_brightness_refl) / params.brightness_softness_refl,
    ])
    return margin, valid


def scar_rule(red: np.ndarray, green: np.ndarray, blue: np.ndarray, slope_deg: np.ndarray,
              params: RuleParams = RuleParams()) -> np.ndarray:
    """Fresh bare soil on a slope: bright, redder than green, steeper than ``min_slope_deg``.

    Args:
        red: Red band (S2 B04), reflectance x 10000, float, NaN = nodata, shape (H, W).
        green: Green band (S2 B03), same grid.
        blue: Blue band (S2 B02), same grid.
        slope_deg: Terrain slope in degrees on the same grid, NaN = nodata.
        params: Thresholds; the defaults are the ones documented in docs/weak_labels.md.

    Returns:
        bool array (H, W); False wherever any input is NaN.

    Raises:
        InputError: The shapes differ.
    """
    margin, _ = _margins(red, green, blue, slope_deg, params)
    return margin >= 0


def scar_score(red: np.ndarray, green: np.ndarray, blue: np.ndarray, slope_deg: np.ndarray,
               params: RuleParams = RuleParams()) -> np.ndarray:
    """Continuous 0..1 version of ``scar_rule``, for a pipeline that thresholds at 0.5.

    The score is a logistic of the tightest margin (a fuzzy AND):
    ``sigmoid(min_i (x_i - threshold_i) / softness_i)`` over slope, red-green index and brightness.
    It is exactly consistent with the rule: ``score >= 0.5`` where ``scar_rule`` is True and
    ``score < 0.5`` where it is False (rounding at the boundary is corrected explicitly).

    Args:
        red: Red band (S2 B04), reflectance x 10000, float, NaN = nodata, shape (H, W).
        green: Green band (S2 B03), same grid.
        blue: Blue band (S2 B02), same grid.
        slope_deg: Terrain slope in degrees on the same grid, NaN = nodata.
        params: Thresholds and softness scales.

    Returns:
        float32 array (H, W) in 0..1; NaN wherever any input is NaN (nodata is kept as nodata,
        and ``NaN >= 0.5`` is False, consistent with the rule).

    Raises:
        InputError: The shapes differ.
    """
    margin, valid = _margins(red, green, blue, slope_deg, params)
    score = np.full(margin.shape, np.nan, dtype=np.float32)
    m = margin[valid]
    prob = (0.5 * (1.0 + np.tanh(0.5 * m))).astype(np.float32)  # = sigmoid(m), overflow-free
    below = np.nextafter(np.float32(0.5), np.float32(0.0))
    # Near the threshold float32 rounding could put a failing pixel at exactly 0.5 (or a passing
    # one just under it); pin both sides so score >= 0.5 is exactly the rule.
    prob = np.where(m >= 0, np.maximum(prob, np.float32(0.5)), np.minimum(prob, below))
    score[valid] = prob
    return score


def combine_weak_labels(rule_mask: np.ndarray, reference_mask: np.ndarray,
                        reference_valid: np.ndarray,
                        rule_valid: np.ndarray | None = None) -> np.ndarray:
    """Label pixels where the rule and the reference agree; ignore the rest.

    Args:
        rule_mask: bool (H, W), ``scar_rule`` output.
        reference_mask: (H, W) reference predictions, non-zero = landslide.
        reference_valid: bool (H, W), True where the reference was computed and is not cloud.
        rule_valid: Optional bool (H, W), True where the image and slope are valid. The rule is
            False on nodata, which would otherwise count as "no landslide"; pass this to ignore
            nodata pixels instead.

    Returns:
        uint8 (H, W): 1 where both say landslide, 0 where both say no landslide, ``IGNORE`` (255)
        where they disagree or the reference (or, if given, the image) is not valid.

    Raises:
        InputError: The shapes differ.
    """
    arrays = {"rule_mask": rule_mask, "reference_mask": reference_mask,
              "reference_valid": reference_valid}
    if rule_valid is not None:
        arrays["rule_valid"] = rule_valid
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise InputError(f"label inputs must share one grid shape, got {shapes}")
    rule = np.asarray(rule_mask).astype(bool)
    ref = np.asarray(reference_mask) != 0
    usable = np.asarray(reference_valid).astype(bool)
    if rule_valid is not None:
        usable &= np.asarray(rule_valid).astype(bool)
    labels = np.full(rule.shape, IGNORE, dtype=np.uint8)
    agree = usable & (rule == ref)
    labels[agree] = rule[agree].astype(np.uint8)
    return labels


def binary_scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Confusion counts and scores of a binary prediction, over valid pixels only.

    Args:
        pred: (H, W) prediction, non-zero/True = positive.
        truth: (H, W) reference, non-zero/True = positive.
        valid: bool (H, W), pixels to count.

    Returns:
        dict with ``tp``, ``fp``, ``fn``, ``tn`` (ints) and ``precision``, ``recall``, ``f1``,
        ``iou`` (floats; NaN where the denominator is zero, e.g. precision with no positives).

    Raises:
        InputError: The shapes differ.
    """
    shapes = {"pred": np.shape(pred), "truth": np.shape(truth), "valid": np.shape(valid)}
    if len(set(shapes.values())) != 1:
        raise InputError(f"binary_scores inputs must share one shape, got {shapes}")
    ok = np.asarray(valid).astype(bool)
    p = np.asarray(pred).astype(bool)[ok]
    t = np.asarray(truth).astype(bool)[ok]
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(np.count_nonzero(~p & ~t))

    def ratio(num: int, den: int) -> float:
        return num / den if den else float("nan")

    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn)}


def threshold_at_fraction(score: np.ndarray, valid: np.ndarray, fraction: float) -> float:
    """Threshold ``t`` such that ``score >= t`` marks ``fraction`` of the valid pixels.

    Used to compare a score (e.g. ``redness_index``) with a reference at the reference's own
    positive fraction. With ``k = round(fraction * n)`` valid finite scores, ``t`` is the k-th
    largest, so exactly k pixels pass when scores are distinct and at least k with ties.

    Args:
        score: (H, W) float scores; NaN pixels never count.
        valid: bool (H, W), pixels to consider.
        fraction: Wanted positive fraction in [0, 1].

    Returns:
        The threshold; ``inf`` when ``k == 0`` (nothing passes).

    Raises:
        InputError: ``fraction`` outside [0, 1], shapes differ, or no valid finite score.
    """
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"fraction must be in [0, 1], got {fraction!r}")
    if np.shape(score) != np.shape(valid):
        raise InputError(f"score {np.shape(score)} and valid {np.shape(valid)} differ in shape")
    s = np.asarray(score, dtype=np.float64)
    values = s[np.asarray(valid).astype(bool) & np.isfinite(s)]
    if values.size == 0:
        raise InputError("threshold_at_fraction: no valid finite score to rank")
    k = int(round(fraction * values.size))
    if k == 0:
        return float("inf")
    # k-th largest = element (n - k) in ascending order
    return float(np.partition(values, values.size - k)[values.size - k])
