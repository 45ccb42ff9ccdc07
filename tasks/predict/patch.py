"""``landslide predict-patch FILE.h5``: the detector on one Landslide4Sense patch (no georeference).

The patch is read by the L4S reader (``models.data.l4s.read_l4s_patch``: L4S units times
``L4S_SCALE``, so physical units like an aligned scan stack), its channels are taken in the
detector's band order, and the detector's own ``predict`` applies its card's input transform, the
same call a scan's blocks make. Outputs beside each other in ``out``:

- ``<stem>_probability.npy``: float32 (H, W), probability 0..1;
- ``<stem>_probability.png``: 8-bit greyscale, value = round(p x 255) (black 0, white 1);
- ``<stem>_mask.png``: 8-bit greyscale, 255 where p >= the card's threshold, else 0.

L4S patches carry no georeference, so nothing here is a map: these are the arrays to look at or
to compare with an L4S mask.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.data.l4s import read_l4s_patch
from models.detectors import cached_detector
from tasks.core.bands import BAND_NAMES
from tasks.core.errors import InputError
from tasks.core.files import atomic_write

log = logging.getLogger(__name__)

PNG_SCALE = 255  # probability.png value = round(p x 255)


@dataclass(frozen=True)
class PatchPrediction:
    """What :func:`predict_patch` wrote and found."""

    patch: str
    detector: str  # name@sha256 prefix
    threshold: float
    probability_npy: str
    probability_png: str
    mask_png: str
    height_px: int
    width_px: int
    max_prob: float
    mean_prob: float
    mask_px: int  # pixels at or above the threshold

    def to_dict(self) -> dict:
        return asdict(self)


def patch_channels(image: np.ndarray, bands: tuple[str, ...], ref: str) -> np.ndarray:
    """The detector's channels of a (14, H, W) L4S patch, in the detector's order (pure).

    Raises:
        InputError: the detector needs a band an L4S patch cannot give (a bi-temporal detector's
            pre-event bands: a patch is one date).
    """
    missing = [b for b in bands if b not in BAND_NAMES]
    if missing:
        raise InputError(f"detector {ref} needs {', '.join(missing)}, which a Landslide4Sense patch "
                         "(one date, 14 channels) does not have; choose a single-date detector")
    return image[[BAND_NAMES.index(b) for b in bands]]


def probability_png(prob: np.ndarray) -> np.ndarray:
    """uint8 greyscale of a probability array: round(p x 255)."""
    return np.round(np.clip(prob, 0.0, 1.0) * PNG_SCALE).astype(np.uint8)


def mask_png(prob: np.ndarray, threshold: float) -> np.ndarray:
    """uint8: 255 where ``prob >= threshold`` (the scan's cleaning threshold rule), else 0."""
    return np.where(prob >= threshold, 255, 0).astype(np.uint8)


def _write_png(array: np.ndarray, path: Path) -> None:
    with atomic_write(path, suffix=".tmp.png") as tmp:
        Image.fromarray(array, mode="L").save(tmp, format="PNG", optimize=True)


def _write_npy(array: np.ndarray, path: Path) -> None:
    with atomic_write(path, suffix=".tmp.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def predict_patch(patch: str | Path, out: str | Path, detector: str | None = None,
                  device: str = "auto") -> PatchPrediction:
    """Predict one L4S ``.h5`` patch and write its probability (npy, png) and mask (png) into ``out``.

    Args:
        patch: an L4S image file (key ``img``, (H, W, 14), L4S units).
        out: folder for the outputs (created).
        detector: checkpoint name/path (a card, an ensemble card, an ``.onnx``), ``index``, or None
            for the shipped default; loaded as a scan loads it.
        device: ``auto``, ``cpu``, ``cuda``.

    Raises:
        InputError: not an L4S patch (missing, not HDF5, wrong key or shape, NaN), a patch whose
            side is not the detector's patch size, or a detector needing bands it lacks.
    """
    patch = Path(patch)
    image = read_l4s_patch(patch)
    det = cached_detector(detector, device)
    h, w = image.shape[1:]
    if (h, w) != (det.patch_size, det.patch_size):
        raise InputError(f"{patch} is {h} x {w} px; detector {det.ref} takes {det.patch_size} x "
                         f"{det.patch_size} px patches, the Landslide4Sense size")
    x = patch_channels(image, tuple(det.bands), det.ref)[None]
    valid = np.isfinite(x).all(axis=1)
    prob = np.asarray(det.predict(x, valid)[0], dtype=np.float32)
    if prob.shape != (h, w) or not np.isfinite(prob).all():
        raise RuntimeError(f"detector {det.ref} returned {prob.shape} with non-finite values for {patch}")
    prob = np.clip(prob, 0.0, 1.0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = patch.stem
    npy, png, mask = (out / f"{stem}_probability.npy", out / f"{stem}_probability.png",
                      out / f"{stem}_mask.png")
    _write_npy(prob, npy)
    _write_png(probability_png(prob), png)
    binary = mask_png(prob, det.threshold)
    _write_png(binary, mask)
    result = PatchPrediction(patch=str(patch), detector=det.ref, threshold=float(det.threshold),
                             probability_npy=str(npy), probability_png=str(png), mask_png=str(mask),
                             height_px=int(h), width_px=int(w), max_prob=float(prob.max()),
                             mean_prob=float(prob.mean()), mask_px=int((binary > 0).sum()))
    log.info("patch %s: max p %.3f, %d px >= %.2f -> %s", patch.name, result.max_prob, result.mask_px,
             det.threshold, out)
    return result
