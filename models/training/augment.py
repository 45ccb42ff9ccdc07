"""Training augmentation of one patch: numpy, deterministic given a ``numpy.random.Generator``.

A patch is ``image`` (C, H, W) float32, already normalized (0 = the band's training mean), and
``labels`` (H, W) uint8 with 1 = landslide, 0 = background and 255 = ignored. Geometric transforms
(flips, 90-degree rotations, scaling, arbitrary rotation) move image and labels together; radiometric
ones (Gaussian noise, spectral gain jitter) touch the image only.

Scaling and arbitrary rotation are one affine resampling (bilinear for the image, nearest for the
labels) back onto the same H x W grid: zooming in crops a random window, zooming out places the shrunk
patch at a random position; every output pixel that comes from outside the patch is 255 in the labels
(never a made-up background) and 0 (the mean) in the image.

The random draws happen in a fixed order for a given config, so the same seed and config always give
the same patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.metrics import IGNORE
from tasks.core.errors import InputError


@dataclass(frozen=True)
class AugmentConfig:
    """What to apply to each training patch.

    Attributes:
        flip: random left-right and up-down flips, each with probability 0.5.
        rot90: rotation by k x 90 degrees, k uniform in 0..3.
        scale_range: (min, max) zoom factor, drawn log-uniformly (so 0.8 and 1.25 are equally
            likely); > 1 zooms in. None: no scaling.
        rotate_deg: arbitrary rotation by an angle uniform in [-rotate_deg, rotate_deg]; 0: none.
        noise_std: standard deviation of additive Gaussian noise, in normalized units; 0: none.
        noise_bands: channel indices that get noise; None: every channel.
        spectral_jitter: per-band multiplicative gain ``1 + U(-j, j)``, drawn independently for each
            band in ``spectral_bands``; 0: none.
        spectral_bands: channel indices (of the patch, not of the 14-band stack) that get the gain;
            typically the spectral bands, never SLOPE/DEM.
        spectral_mean_over_std: optional ``mean / std`` of each band in ``spectral_bands``. Given,
            the gain is applied in physical units (``v' = g v``, i.e. ``x' = g x + (g - 1) mean/std``
            on normalized values, as the scene trainer does); empty, the gain scales the normalized
            values (contrast around the mean).
    """

    flip: bool = True
    rot90: bool = True
    scale_range: tuple[float, float] | None = (0.8, 1.25)
    rotate_deg: float = 0.0
    noise_std: float = 0.0
    noise_bands: tuple[int, ...] | None = None
    spectral_jitter: float = 0.0
    spectral_bands: tuple[int, ...] = ()
    spectral_mean_over_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.scale_range is not None:
            if len(self.scale_range) != 2:
                raise InputError(f"scale_range must be (min, max), got {self.scale_range!r}")
            lo, hi = (float(v) for v in self.scale_range)
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise InputError(f"scale_range must satisfy 0 < min <= max, got {self.scale_range!r}")
        if not (0 <= self.rotate_deg <= 180):
            raise InputError(f"rotate_deg must be in [0, 180], got {self.rotate_deg}")
        if not self.noise_std >= 0:
            raise InputError(f"noise_std must be >= 0, got {self.noise_std}")
        if not 0 <= self.spectral_jitter < 1:
            raise InputError(f"spectral_jitter must be in [0, 1) (a gain of 1 +- j), got "
                             f"{self.spectral_jitter}")
        for name in ("spectral_bands", "noise_bands"):
            idx = getattr(self, name)
            if idx is None:
                continue
            if any(int(i) != i or i < 0 for i in idx) or len(set(idx)) != len(idx):
                raise InputError(f"{name} must be distinct channel indices >= 0, got {idx!r}")
        if self.spectral_jitter and not self.spectral_bands:
            raise InputError("spectral_jitter needs spectral_bands: the channel indices it applies to "
                             "(never SLOPE or DEM)")
        if self.spectral_mean_over_std and len(self.spectral_mean_over_std) != len(self.spectral_bands):
            raise InputError(f"spectral_mean_over_std has {len(self.spectral_mean_over_std)} values "
                             f"for {len(self.spectral_bands)} spectral_bands; give one per band or none")


def _check(image: np.ndarray, labels: np.ndarray, cfg: AugmentConfig) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise InputError(f"image must be a (C, H, W) array, got shape {np.shape(image)}")
    if not isinstance(labels, np.ndarray) or labels.shape != image.shape[1:]:
        raise InputError(f"labels must be (H, W) = {image.shape[1:]}, got shape {np.shape(labels)}")
    c = image.shape[0]
    used = list(cfg.spectral_bands) if cfg.spectral_jitter else []
    used += list(cfg.noise_bands or ()) if cfg.noise_std else []
    bad = sorted({i for i in used if i >= c})
    if bad:
        raise InputError(f"augmentation band index {bad} out of range for a {c}-channel patch")


def _affine(image: np.ndarray, labels: np.ndarray, scale: float, angle_deg: float,
            shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Resample onto the same grid: output pixel o reads input ``A (o - c) + c + shift``."""
    h, w = labels.shape
    center = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    matrix = rot / scale  # output -> input: zooming in (scale > 1) reads a smaller window
    offset = center + np.asarray(shift) - matrix @ center
    out_img = np.empty_like(image)
    for ch in range(image.shape[0]):
        ndimage.affine_transform(image[ch], matrix, offset=offset, output=out_img[ch], order=1,
                                 mode="constant", cval=0.0, prefilter=False)
    out_lab = ndimage.affine_transform(labels, matrix, offset=offset, order=0, mode="constant",
                                       cval=IGNORE, prefilter=False)
    return out_img, out_lab.astype(labels.dtype, copy=False)


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Augment one patch.

    Args:
        image: (C, H, W) float array, normalized; not modified.
        labels: (H, W) uint8 labels, 255 = ignored; not modified.
        rng: the generator all random draws come from.
        cfg: what to apply.

    Returns:
        ``(image, labels)``: new C-contiguous arrays of the same shapes and dtypes.

    Raises:
        InputError: shapes disagree or a band index is outside the patch.
    """
    _check(image, labels, cfg)
    x, y = image, labels
    if cfg.flip:
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            x, y = x[:, ::-1, :], y[::-1, :]
    if cfg.rot90:
        k = int(rng.integers(0, 4))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
    if cfg.scale_range is not None or cfg.rotate_deg:
        scale = 1.0
        if cfg.scale_range is not None:
            lo, hi = cfg.scale_range
            scale = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        angle = float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)) if cfg.rotate_deg else 0.0
        h, w = y.shape
        # the window moves by up to half the size difference (in pixel-centre units, less a hair
        # for rounding): a zoomed-in crop stays inside the patch, so it gains no 255 border, and a
        # zoomed-out patch stays inside the output
        dy, dx = (max(abs((n - 1) - (n - 1) / scale) / 2.0 - 1e-6, 0.0) for n in (h, w))
        shift = (float(rng.uniform(-dy, dy)), float(rng.uniform(-dx, dx)))
        if scale != 1.0 or angle != 0.0 or shift != (0.0, 0.0):
            x, y = _affine(np.ascontiguousarray(x), np.ascontiguousarray(y), scale, angle, shift)
    x = np.array(x, dtype=image.dtype, order="C", copy=True)
    y = np.ascontiguousarray(y, dtype=labels.dtype)
    if cfg.spectral_jitter:
        idx = list(cfg.spectral_bands)
        gain = (1.0 + rng.uniform(-cfg.spectral_jitter, cfg.spectral_jitter, size=len(idx)))
        gain = gain.astype(x.dtype)[:, None, None]
        x[idx] = x[idx] * gain
        if cfg.spectral_mean_over_std:
            m = np.asarray(cfg.spectral_mean_over_std, dtype=x.dtype)[:, None, None]
            x[idx] += (gain - 1.0) * m
    if cfg.noise_std:
        idx = list(range(x.shape[0])) if cfg.noise_bands is None else list(cfg.noise_bands)
        x[idx] += rng.normal(0.0, cfg.noise_std, size=(len(idx),) + x.shape[1:]).astype(x.dtype)
    if y is labels:  # nothing geometric happened: never hand back the caller's array
        y = y.copy()
    return x, y


def describe(cfg: AugmentConfig) -> str:
    """One line for a model card's ``training.augmentation``."""
    parts = []
    if cfg.flip:
        parts.append("random left-right and up-down flips (p 0.5 each)")
    if cfg.rot90:
        parts.append("rot90 (k uniform 0-3)")
    if cfg.scale_range is not None:
        lo, hi = cfg.scale_range
        parts.append(f"zoom x{lo:g}-{hi:g} (log-uniform, random crop/placement, bilinear image, "
                     f"nearest labels, padding labelled {IGNORE})")
    if cfg.rotate_deg:
        parts.append(f"rotation +-{cfg.rotate_deg:g} deg (corners labelled {IGNORE})")
    if cfg.spectral_jitter:
        unit = "in physical units" if cfg.spectral_mean_over_std else "on normalized values"
        parts.append(f"per-band gain x(1+-{cfg.spectral_jitter:g}) {unit} on channels "
                     f"{list(cfg.spectral_bands)}")
    if cfg.noise_std:
        where = "all channels" if cfg.noise_bands is None else f"channels {list(cfg.noise_bands)}"
        parts.append(f"Gaussian noise std {cfg.noise_std:g} (normalized units, {where})")
    return "; ".join(parts) if parts else "none"
