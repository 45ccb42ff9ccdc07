"""Classes of the ``landslides`` layer's attributes, defined once: confidence from ``mean_prob`` and
slope from ``mean_slope_deg``. The run report (``tasks.run.report``) counts polygons by them; a
``confidence_class`` field, when one is added to the layer, must use the same thresholds.

Pure Python and numpy: no GDAL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ValueClass:
    """One class of a value: ``lower <= value < upper`` (``upper`` None = no upper bound)."""

    name: str
    lower: float
    upper: float | None


# Confidence of a polygon from its mean probability (mean_prob, 0..1), highest first. "high" and
# "medium" are the polygons the detector is surest of; they are not calibrated error rates.
CONFIDENCE_HIGH_MIN_PROB = 0.85
CONFIDENCE_MEDIUM_MIN_PROB = 0.70
CONFIDENCE_CLASSES: tuple[ValueClass, ...] = (
    ValueClass("high", CONFIDENCE_HIGH_MIN_PROB, None),
    ValueClass("medium", CONFIDENCE_MEDIUM_MIN_PROB, CONFIDENCE_HIGH_MIN_PROB),
    ValueClass("low", float("-inf"), CONFIDENCE_MEDIUM_MIN_PROB),
)

# Slope classes of a polygon's mean slope (mean_slope_deg, degrees), gentlest first.
SLOPE_CLASSES_DEG: tuple[ValueClass, ...] = (
    ValueClass("<15°", float("-inf"), 15.0),
    ValueClass("15-30°", 15.0, 30.0),
    ValueClass("30-45°", 30.0, 45.0),
    ValueClass("≥45°", 45.0, None),
)
NO_VALUE_CLASS = "no value"  # NaN: e.g. no slope where the DEM had no data


def classify(values, classes: tuple[ValueClass, ...]) -> np.ndarray:
    """The class name of each value (NaN -> :data:`NO_VALUE_CLASS`).

    Args:
        values: array-like of floats (N,).
        classes: non-overlapping classes covering every finite value.

    Returns:
        (N,) object array of class names.
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, NO_VALUE_CLASS, dtype=object)
    for c in classes:
        upper = np.inf if c.upper is None else c.upper
        out[np.isfinite(v) & (v >= c.lower) & (v < upper)] = c.name
    return out


def confidence_class(mean_prob) -> np.ndarray:
    """``high`` / ``medium`` / ``low`` of each mean probability (:data:`CONFIDENCE_CLASSES`)."""
    return classify(mean_prob, CONFIDENCE_CLASSES)


def slope_class(mean_slope_deg) -> np.ndarray:
    """The slope class of each mean slope in degrees (:data:`SLOPE_CLASSES_DEG`)."""
    return classify(mean_slope_deg, SLOPE_CLASSES_DEG)
