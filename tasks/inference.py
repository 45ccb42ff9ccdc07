"""Batched patch inference and stitching. Device choice lives here and nowhere else.

A detector maps a batch of patches in physical units (B, C, H, W) to landslide probabilities
(B, H, W). Two kinds exist: a trained network from a checkpoint (safetensors + model card), and the
weights-free spectral index rule (``tasks.weak_labels.scar_score``), the "traditional method".
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm.auto import tqdm

from tasks.bands import BAND_NAMES, validate_bands
from tasks.stitch import Stitcher
from tasks.tiling import iter_blocks, iter_windows, read_patches, windows_intersect

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "iburi2018-weak-unet-mobilenet_v2"
DEFAULT_BLOCK_PX = 2048  # inference block side: memory ~ (block + 2 patches)^2 x 8 bytes
INDEX_DETECTOR = "index"


def select_device(preference: str = "auto") -> "torch.device":  # noqa: F821
    """``auto``: CUDA when available, else CPU. ``cpu``/``cuda``/``cuda:N`` force a device."""
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        from tasks.errors import InputError

        raise InputError("--device cuda was requested but no CUDA GPU is available; use --device auto")
    return device


class Detector(Protocol):
    name: str
    ref: str  # "name@sha256-prefix" for the manifest and the polygons' `model` attribute
    bands: tuple[str, ...]  # channels consumed, contract order
    threshold: float
    patch_size: int

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 physical units (NaN = nodata), (B, H, W) bool -> (B, H, W) prob."""

    def describe(self) -> dict:
        """What the manifest records about this detector."""


class CardFields:
    """The Detector fields a network's card holds (for detectors with a ``card`` attribute)."""

    card: "models.checkpoint.ModelCard"  # noqa: F821

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def ref(self) -> str:
        return self.card.model_ref

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.card.bands)

    @property
    def threshold(self) -> float:
        return float(self.card.threshold)

    @property
    def patch_size(self) -> int:
        return int(self.card.patch_size)


@dataclass
class ModelDetector(CardFields):
    """A segmentation network loaded from a checkpoint card."""

    model: "torch.nn.Module"  # noqa: F821
    card: "models.checkpoint.ModelCard"  # noqa: F821
    card_path: str
    device: "torch.device"  # noqa: F821
    forward_s: float = 0.0
    channels_last: bool = False  # the model's weights and inputs in NHWC memory order

    def model_input(self, x: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """``x`` (N, C, H, W) on the device, in the memory order the model's weights use."""
        import torch

        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        import torch

        x = self.card.input_transform.apply_filled(batch)  # nodata -> the training mean
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(self.model_input(torch.from_numpy(np.ascontiguousarray(x))))
            prob = torch.sigmoid(logits[:, 0]).float().cpu().numpy()
        self.forward_s += time.perf_counter() - t0
        return prob

    def describe(self) -> dict:
        from models.checkpoint import sha256_file

        return {"kind": "model", "ref": self.ref, "card_path": self.card_path,
                "card_sha256": sha256_file(self.card_path), "device": str(self.device),
                "card": self.card.model_dump(mode="json")}


@dataclass
class IndexDetector:
    """The weights-free bare-soil rule on RGB + slope (``tasks.weak_labels``)."""

    forward_s: float = 0.0
    name: str = INDEX_DETECTOR
    threshold: float = 0.5
    patch_size: int = 128

    @property
    def bands(self) -> tuple[str, ...]:
        return ("B02", "B03", "B04", "SLOPE")

    @property
    def ref(self) -> str:
        from tasks.weak_labels import RuleParams

        return f"index-rule@{_params_digest(RuleParams())}"

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        from tasks.weak_labels import scar_score

        t0 = time.perf_counter()
        blue, green, red, slope = (batch[:, i] for i in range(4))
        score = scar_score(red, green, blue, slope)
        self.forward_s += time.perf_counter() - t0
        return np.where(valid, np.nan_to_num(score, nan=0.0), 0.0).astype(np.float32)

    def describe(self) -> dict:
        from dataclasses import asdict

        from tasks.weak_labels import RuleParams

        return {"kind": "index", "ref": self.ref, "rule": "tasks.weak_labels.scar_score",
                "params": asdict(RuleParams()), "bands": list(self.bands)}


def _params_digest(params: object) -> str:
    import hashlib
    import json
    from dataclasses import asdict

    return hashlib.sha256(json.dumps(asdict(params), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class EnsembleDetector:
    """Members combined by the ensemble card's rule; uncertainty = std of member probabilities."""

    members: list[ModelDetector]
    card: "models.ensemble.EnsembleCard"  # noqa: F821
    card_path: str
    forward_s: float = 0.0

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def ref(self) -> str:
        import hashlib

        digest = hashlib.sha256("|".join(m.ref for m in self.members).encode()
                                + self.card.rule.encode()).hexdigest()[:12]
        return f"{self.card.name}@{digest}"

    @property
    def bands(self) -> tuple[str, ...]:
        return validate_bands({b for m in self.members for b in m.bands})

    @property
    def threshold(self) -> float:
        return float(self.card.threshold)

    @property
    def patch_size(self) -> int:
        return self.members[0].patch_size

    def predict_with_uncertainty(self, batch: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        own = self.bands
        probs = []
        t0 = time.perf_counter()
        for m in self.members:
            idx = [own.index(b) for b in m.bands]
            probs.append(m.predict(batch[:, idx], valid))
        p = np.stack(probs)  # (M, B, H, W)
        self.forward_s += time.perf_counter() - t0
        if self.card.rule == "mean":
            combined = p.mean(axis=0)
        elif self.card.rule == "weighted":
            w = np.asarray(self.card.weights, dtype=np.float32)[:, None, None, None]
            combined = (w * p).sum(axis=0) / w.sum()
        else:  # majority: the share of members voting landslide at their own thresholds
            thr = np.asarray([m.threshold for m in self.members], np.float32)[:, None, None, None]
            combined = (p >= thr).mean(axis=0)
        return combined.astype(np.float32), p.std(axis=0).astype(np.float32)

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self.predict_with_uncertainty(batch, valid)[0]

    def describe(self) -> dict:
        return {"kind": "ensemble", "ref": self.ref, "card_path": self.card_path,
                "rule": self.card.rule, "weights": self.card.weights,
                "uncertainty": "standard deviation of the member probabilities",
                "members": [m.describe() for m in self.members],
                "card": self.card.model_dump(mode="json")}


def load_detector(spec: str | None, device: str = "auto", channels_last: bool | None = None) -> Detector:
    """``index`` -> the rule; None -> the shipped default checkpoint; a ``.onnx`` path -> an ONNX
    Runtime export (``landslide export``); else a checkpoint name/path (a model card, or an
    ensemble card listing member cards).

    ``channels_last`` (networks; None = on CPU only): weights and inputs in NHWC memory order.
    Measured on this project's 2-core CPU: the forward 1.27-1.53x faster (U-Net MobileNetV2,
    ``benchmarks/scale.py``; 1.33-1.46x for the shipped checkpoint, ``benchmarks/cpu_inference.py``),
    probabilities within 4e-6 of the NCHW forward and the same F1. Not measured on a GPU, so CUDA
    keeps NCHW unless asked."""
    if spec == INDEX_DETECTOR:
        return IndexDetector()
    if spec is not None and str(spec).endswith(".onnx"):  # an export of `landslide export`
        from models.export import load_onnx_detector

        return load_onnx_detector(spec)
    from models.checkpoint import load_checkpoint, resolve_checkpoint
    from models.ensemble import is_ensemble_card, member_refs, read_ensemble

    ref = spec or DEFAULT_CHECKPOINT
    dev = select_device(device)
    card_path = resolve_checkpoint(ref)
    if is_ensemble_card(card_path):
        ens = read_ensemble(card_path)
        members = [load_detector(m, device, channels_last) for m in member_refs(ens, card_path)]
        if any(not isinstance(m, ModelDetector) for m in members):
            from tasks.errors import CheckpointError

            raise CheckpointError(f"{card_path}: ensemble members must be model cards")
        if len({m.patch_size for m in members}) != 1:
            from tasks.errors import CheckpointError

            raise CheckpointError(f"{card_path}: members use different patch sizes")
        return EnsembleDetector(members=members, card=ens, card_path=str(card_path))
    model, card = load_checkpoint(ref, device=str(dev))
    if channels_last is None:
        channels_last = dev.type == "cpu"
    if channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    return ModelDetector(model=model, card=card, card_path=str(card_path), device=dev,
                         channels_last=channels_last)


@dataclass(frozen=True)
class InferenceResult:
    prob_path: str
    uncertainty_path: str
    n_patches: int
    n_skipped: int
    model_forward_s: float
    total_s: float


def predict_stack(stack_path: str | Path, valid_path: str | Path, detector: Detector,
                  work_dir: str | Path, overlap: int = 32, batch_size: int = 16,
                  progress: bool = True, block_px: int = DEFAULT_BLOCK_PX) -> InferenceResult:
    """Tile the stack, run the detector batch by batch, blend, and write probability + uncertainty.

    Writes ``prob.tif`` and ``uncertainty_raw.tif`` (float32, tiled, NaN = not analysed) in
    ``work_dir``. The uncertainty of a single model is the per-pixel predictive entropy of the
    blended probability, in bits (0 certain .. 1 at p = 0.5).

    Memory is bounded by ``block_px``: the grid is cut into blocks, and each block blends every
    patch of the global patch layout that touches it on a canvas just large enough for those
    patches, then writes its core. Because the patch layout is the global one and each pixel sums
    the same patches in the same order, the result is identical to blending the whole scene at
    once. Blocks run one after another and share the predictions of patches that straddle their
    borders (:class:`tasks.blocks.BorderPatches`), so each patch is predicted once.
    """
    t_start = time.perf_counter()
    work_dir = Path(work_dir)
    size = detector.patch_size
    detector.forward_s = 0.0
    prob_path, unc_path = work_dir / "prob.tif", work_dir / "uncertainty_raw.tif"
    tmp_prob, tmp_unc = prob_path.with_suffix(".tmp.tif"), unc_path.with_suffix(".tmp.tif")
    from tasks.blocks import BorderPatches, blend_block

    predicted: set[tuple[int, int]] = set()
    n_forward = 0
    with rasterio.open(stack_path) as stack, rasterio.open(valid_path) as valid:
        height, width = stack.height, stack.width
        windows = list(iter_windows(height, width, size, overlap))
        blocks = iter_blocks(height, width, block_px)
        per_block = [[w for w in windows if windows_intersect(w, b)] for b in blocks]  # for progress
        border = BorderPatches(windows, blocks)
        profile = stack.profile.copy()
        profile.update(count=1, dtype="float32", nodata=np.nan, tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate", predictor=3, interleave="band")
        bar = tqdm(total=sum(len(p) for p in per_block), desc="inference", unit="patch",
                   disable=not progress, mininterval=1.0)
        with rasterio.open(tmp_prob, "w", **profile) as dst_prob, \
                rasterio.open(tmp_unc, "w", **profile) as dst_unc:
            dst_prob.set_band_description(1, "landslide probability")
            dst_unc.set_band_description(1, "predictive entropy (bits)")
            for block, sel in zip(blocks, per_block):
                core, unc_core, done, n_fwd = blend_block(stack, valid, detector, block, windows,
                                                          overlap, batch_size, border)
                predicted |= done
                n_forward += n_fwd
                bar.update(len(sel))
                dst_prob.write(core, 1, window=block)
                dst_unc.write(unc_core, 1, window=block)
        bar.close()
    os.replace(tmp_prob, prob_path)
    os.replace(tmp_unc, unc_path)
    total = time.perf_counter() - t_start
    n_done = len(predicted)
    log.info("inference: %d patches (%d empty skipped, %d forward passes over %d blocks), "
             "model %.2fs of %.2fs", n_done, len(windows) - n_done, n_forward, len(blocks),
             detector.forward_s, total)
    return InferenceResult(str(prob_path), str(unc_path), n_done, len(windows) - n_done,
                           detector.forward_s, total)


def predict_array(image: np.ndarray, valid: np.ndarray, detector: Detector, overlap: int = 32,
                  batch_size: int = 16) -> np.ndarray:
    """In-memory version of :func:`predict_stack` for small scenes (evaluation, training).

    Args:
        image: (14, H, W) float32 stack in contract order and physical units (NaN = nodata).
        valid: (H, W) bool.

    Returns:
        (H, W) float32 blended probability, NaN where nothing valid was predicted.
    """
    from tasks.tiling import pad_to

    size = detector.patch_size
    band_idx = [BAND_NAMES.index(b) for b in validate_bands(detector.bands)]
    height, width = valid.shape
    stitcher = Stitcher(height, width, size, overlap)
    windows = [w for w in iter_windows(height, width, size, overlap)]
    for start in range(0, len(windows), batch_size):
        batch, oks, kept = [], [], []
        for w in windows[start:start + batch_size]:
            r, c, h, wd = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
            ok = valid[r:r + h, c:c + wd]
            if not ok.any():
                continue
            pad_ok = np.zeros((size, size), dtype=bool)
            pad_ok[:h, :wd] = ok
            batch.append(pad_to(image[band_idx, r:r + h, c:c + wd], size))
            oks.append(pad_ok)
            kept.append(w)
        if not batch:
            continue
        prob = detector.predict(np.stack(batch).astype(np.float32), np.stack(oks))
        for w, p, ok in zip(kept, prob, oks):
            stitcher.add(w, p, ok)
    return stitcher.result()
