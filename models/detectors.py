"""Detectors: what maps a batch of patches to landslide probabilities (``tasks.core.blend.Detector``).

Four kinds: a network from a checkpoint (safetensors + model card), an ensemble card over such
networks, an ONNX Runtime export (``models.export``), and the weights-free spectral index rule
(``models.index_rule``), the "traditional method". Device choice lives here and nowhere else.
:func:`load_detector` builds one from a spec; :func:`cached_detector` loads each spec once per
process (the CLI's checks, the scan's inference step and the block jobs it runs share it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from models import accel
from models.cards import DEFAULT_CHECKPOINT, INDEX_DETECTOR, ONNX_SUFFIX
from models.checkpoint import (
    CardFields,
    InferenceTolerance,
    ModelCard,
    load_checkpoint,
    resolve_checkpoint,
    sha256_file,
)
from models.ensemble import EnsembleCard, is_ensemble_card, member_refs, read_ensemble
from models.export import load_onnx_detector
from models.index_rule import RuleParams, scar_score
from tasks.core import defaults
from tasks.core.bands import validate_bands
from tasks.core.blend import Detector
from tasks.core.errors import CheckpointError, InputError

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> "torch.device":  # noqa: F821
    """``auto``: CUDA when available, else CPU. ``cpu``/``cuda``/``cuda:N`` force a device."""
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA GPU is available; use --device auto")
    return device


@dataclass
class ModelDetector(CardFields):
    """A segmentation network loaded from a checkpoint card.

    ``precision``: the dtype the forward pass computes in (float32, or autocast to bfloat16 /
    float16), chosen at load by :func:`load_detector` with the reason in ``precision_reason``.
    ``prefetch_batches``: batches ``blend_patches`` reads ahead while the device computes (0 on
    the CPU: the loop runs as before)."""

    model: "torch.nn.Module"  # noqa: F821
    card: ModelCard
    card_path: str
    device: "torch.device"  # noqa: F821
    forward_s: float = 0.0
    channels_last: bool = False  # the model's weights and inputs in NHWC memory order
    precision: str = accel.FP32
    precision_reason: str = "float32"
    precision_check: dict | None = None  # the reduced precision against float32 at load
    prefetch_batches: int = 0
    batch_size_choice: dict | None = None  # --batch-size auto: the size and why
    malloc_choice: dict | None = None  # the CPU path's allocator setting (accel.keep_freed_memory)
    _pinned: dict = field(default_factory=dict, repr=False)  # CUDA: page-locked input buffers by shape
    _host: threading.local = field(default_factory=threading.local, repr=False)  # predict's input buffer

    def model_input(self, x: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """``x`` (N, C, H, W) on the device, in the memory order the model's weights use. On CUDA
        through a reused page-locked buffer with a non-blocking copy (``predict`` waits for the
        result before the buffer is filled again)."""
        import torch

        if self.device.type == "cuda" and x.device.type == "cpu":
            if not x.is_pinned():  # predict's own input already is (_input_buffer)
                buf = self._pinned.get((tuple(x.shape), x.dtype))
                if buf is None:
                    buf = self._pinned[(tuple(x.shape), x.dtype)] = torch.empty_like(x).pin_memory()
                buf.copy_(x)
                x = buf
            x = x.to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self, precision: str | None = None):
        """The autocast context of ``precision`` (default: the detector's); none for float32."""
        import torch

        precision = precision or self.precision
        if precision == accel.FP32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, precision))

    def _input_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """Where ``predict`` writes the transformed batch: a (B, C, H, W) float32 view, reused by
        this thread while the shape stays the same (a fresh buffer for every batch of 512 patches
        page-faulted hundreds of MB each time). In the model's memory order (channels-last: no reordering
        copy later) and, on CUDA, page-locked: the copy to the GPU starts from it directly. Reuse is
        safe: ``predict`` returns only after the forward pass has consumed its input."""
        host = self._host
        if getattr(host, "shape", None) != tuple(shape):
            import torch

            b, c, h, w = shape
            host.array = None  # the old buffer goes before the new one is allocated
            tensor = torch.empty((b, h, w, c) if self.channels_last else (b, c, h, w), dtype=torch.float32)
            if self.device.type == "cuda":
                tensor = tensor.pin_memory()
            array = tensor.numpy()  # shares the tensor's memory and keeps it alive
            host.shape, host.array = tuple(shape), (array.transpose(0, 3, 1, 2) if self.channels_last
                                                    else array)
        return host.array

    def forward_probs(self, x: np.ndarray, precision: str | None = None) -> np.ndarray:
        """Probabilities (B, H, W) float32 of network input ``x`` (B, C, H, W), normalized, in
        any memory order with non-negative strides (a channels-last view goes in without a copy)."""
        import torch

        if min(x.strides) < 0:
            x = np.ascontiguousarray(x)
        with torch.inference_mode(), self.autocast(precision):
            logits = self.model(self.model_input(torch.from_numpy(x)))
            return torch.sigmoid(logits[:, 0].float()).cpu().numpy()

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        # nodata -> the training mean; written straight into the memory order the model uses
        x = self.card.input_transform.apply_filled(batch, out=self._input_buffer(batch.shape))
        t0 = time.perf_counter()
        prob = self.forward_probs(x)
        self.forward_s += time.perf_counter() - t0
        return prob

    def fits(self, batch: int) -> bool:
        """Whether a forward pass of ``batch`` patches fits in the GPU's memory (a probe for
        ``--batch-size auto``; always True off CUDA)."""
        if self.device.type != "cuda":
            return True
        import torch

        x = np.zeros((batch, self.card.in_channels, self.patch_size, self.patch_size), np.float32)
        try:
            self.forward_probs(x)
            torch.cuda.synchronize(self.device)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        except RuntimeError as exc:  # cuDNN reports a failed workspace allocation this way
            if "out of memory" in str(exc).lower() or "ALLOC_FAILED" in str(exc):
                return False
            raise
        finally:
            self._pinned.clear()
            torch.cuda.empty_cache()

    def describe(self) -> dict:
        import torch

        return {"kind": "model", "ref": self.ref, "card_path": self.card_path,
                "card_sha256": sha256_file(self.card_path), "device": str(self.device),
                "memory_format": "channels_last" if self.channels_last else "NCHW",
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "precision": self.precision, "precision_reason": self.precision_reason,
                "precision_check": self.precision_check, "prefetch_batches": self.prefetch_batches,
                **({"batch_size_choice": self.batch_size_choice} if self.batch_size_choice else {}),
                **({"malloc": self.malloc_choice} if self.malloc_choice else {}),
                "card": self.card.model_dump(mode="json")}


def validation_patches(card: ModelCard, n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` deterministic patches (n, C, S, S) in physical units for the load-time precision
    check, and their valid mask: smooth random fields (16 px cells) around the card's training
    means with its training standard deviations (its ``training_statistics`` when present, else
    the input transform's), so the network sees inputs in its training range. Synthetic, not a
    validation split: ``benchmarks/gpu.py`` checks the tolerance on the bundled real sample."""
    transform = card.input_transform
    stats = card.training_statistics
    if stats is not None and list(stats.bands) == list(card.bands):
        mean = np.asarray(stats.mean, np.float64)
        std = np.sqrt(np.maximum(np.diag(np.asarray(stats.covariance, np.float64)), 1e-12))
    else:  # physical = (normalized * std + mean - offset) / scale, per band
        scale, offset = np.asarray(transform.scale), np.asarray(transform.offset)
        mean = (np.asarray(transform.mean) - offset) / scale
        std = np.asarray(transform.std) / np.abs(scale)
    size, cell = card.patch_size, 16
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, len(card.bands), -(-size // cell), -(-size // cell)))
    field_ = np.kron(coarse, np.ones((cell, cell)))[..., :size, :size]
    x = (mean[None, :, None, None] + std[None, :, None, None] * field_).astype(np.float32)
    return x, np.ones((n, size, size), bool)


def check_precision(detector: ModelDetector, precision: str, patches: tuple | None = None
                    ) -> accel.PrecisionCheck:
    """``precision`` against float32 on validation patches (default :func:`validation_patches`)
    with the card's tolerance (``inference_tolerance``, else ``models.accel``'s defaults)."""
    batch, valid = patches if patches is not None else validation_patches(detector.card)
    x = detector.card.input_transform.apply_filled(batch)
    tol = detector.card.inference_tolerance or InferenceTolerance()
    return accel.precision_within_tolerance(
        detector.forward_probs(x, accel.FP32), detector.forward_probs(x, precision), valid,
        detector.threshold, precision, tol.max_abs_prob, tol.max_flip_fraction)


def _time_forward(detector: ModelDetector, x: np.ndarray, precision: str, repeats: int = 2) -> float:
    """Seconds of the fastest of ``repeats`` forward passes of ``x`` (after a warm-up)."""
    detector.forward_probs(x, precision)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detector.forward_probs(x, precision)
        times.append(time.perf_counter() - t0)
    return min(times)


def choose_precision(detector: ModelDetector, requested: str = "auto",
                     cpu_flags: frozenset[str] | None = None) -> accel.Choice:
    """Set ``detector.precision`` (and its reason and check) for its device; returns the choice.

    ``auto``: on CUDA bfloat16/float16 autocast if within the card's tolerance, else float32 with
    a warning; on the CPU float32 unless the CPU has native bfloat16 (``cpu_flags``, default
    ``/proc/cpuinfo``) and a timing at load finds it faster and within the tolerance. Another
    ``requested`` value is used as asked (no check)."""
    import torch

    dev = detector.device.type
    if requested != "auto":
        if requested not in (accel.FP32, accel.BF16, accel.FP16):
            raise InputError(f"precision {requested!r}: choose auto, float32, bfloat16 or float16")
        choice = accel.Choice(requested, "asked for")
    elif dev == "cuda":  # the first autocast dtype within the card's tolerance, else float32
        rejected: list[str] = []
        choice = None
        for candidate in accel.cuda_autocast_candidates(torch.cuda.is_bf16_supported()):
            check = check_precision(detector, candidate)
            detector.precision_check = check.as_dict()
            if check.ok:
                choice = accel.Choice(candidate, f"CUDA autocast to {candidate} within the card's "
                                                 "tolerance at load" + "".join(
                                                     f"; {r} was outside it" for r in rejected))
                break
            rejected.append(candidate)
            log.warning("%s: %s autocast is outside the card's tolerance (max probability "
                        "difference %.4f, %.4f%% of pixels change class)",
                        detector.ref, candidate, check.max_abs_prob, 100 * check.flip_fraction)
        if choice is None:
            choice = accel.Choice(accel.FP32, f"{' and '.join(rejected)} autocast outside the card's "
                                              "tolerance at load: float32")
    elif dev == "cpu":
        flags = accel.read_cpu_flags() if cpu_flags is None else cpu_flags
        capable = accel.cpu_bf16_capable(flags)
        if not capable:
            choice = accel.choose_cpu_precision(False)
        else:  # time it: bf16 autocast was 60x slower on a CPU without native bf16, 1.8x faster with
            batch, valid = validation_patches(detector.card)
            x = detector.card.input_transform.apply_filled(batch)
            fp32_s = _time_forward(detector, x, accel.FP32)
            bf16_s = _time_forward(detector, x, accel.BF16)
            within = None
            if bf16_s * accel.MIN_SPEEDUP <= fp32_s:
                check = check_precision(detector, accel.BF16, (batch, valid))
                detector.precision_check = check.as_dict()
                within = check.ok
            choice = accel.choose_cpu_precision(True, fp32_s, bf16_s, within)
    else:
        choice = accel.Choice(accel.FP32, f"{dev}: float32")
    detector.precision, detector.precision_reason = str(choice.value), choice.reason
    return choice


@dataclass
class IndexDetector:
    """The weights-free bare-soil rule on RGB + slope (``models.index_rule``)."""

    forward_s: float = 0.0
    name: str = INDEX_DETECTOR
    threshold: float = 0.5
    patch_size: int = 128

    @property
    def bands(self) -> tuple[str, ...]:
        return ("B02", "B03", "B04", "SLOPE")

    @property
    def ref(self) -> str:
        return f"index-rule@{_params_digest(RuleParams())}"

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        blue, green, red, slope = (batch[:, i] for i in range(4))
        score = scar_score(red, green, blue, slope)
        self.forward_s += time.perf_counter() - t0
        return np.where(valid, np.nan_to_num(score, nan=0.0), 0.0).astype(np.float32)

    def describe(self) -> dict:
        return {"kind": "index", "ref": self.ref, "rule": "models.index_rule.scar_score",
                "params": asdict(RuleParams()), "bands": list(self.bands)}


def _params_digest(params: object) -> str:
    return hashlib.sha256(json.dumps(asdict(params), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class EnsembleDetector:
    """Members combined by the ensemble card's rule; uncertainty = std of member probabilities."""

    members: list[ModelDetector]
    card: EnsembleCard
    card_path: str
    forward_s: float = 0.0
    prefetch_batches: int = 0  # batches read ahead while the device computes (0: CPU)
    batch_size_choice: dict | None = None  # --batch-size auto: the size and why

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def ref(self) -> str:
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
                "prefetch_batches": self.prefetch_batches,
                **({"batch_size_choice": self.batch_size_choice} if self.batch_size_choice else {}),
                "card": self.card.model_dump(mode="json")}


def network_cards(detector) -> list[dict]:
    """The model cards (as JSON) of the networks a detector runs: one for a network or its ONNX
    export, one per member for an ensemble, none for the index rule."""
    members = getattr(detector, "members", None) or [detector]
    return [m.card.model_dump(mode="json") for m in members
            if getattr(getattr(m, "card", None), "input_transform", None) is not None]


def load_detector(spec: str | None, device: str = "auto", channels_last: bool | None = None,
                  precision: str | None = None) -> Detector:
    """``index`` -> the rule; None -> the shipped default checkpoint; a ``.onnx`` path -> an ONNX
    Runtime export (``landslide export``; the CUDA execution provider when present and ``device``
    allows); else a checkpoint name/path (a model card, or an ensemble card listing member cards).

    ``channels_last`` (networks; None = :func:`cpu_channels_last`): weights and inputs in NHWC
    memory order. Faster on CPU with probabilities within float rounding of the NCHW forward
    (measurements: ``benchmarks/README.md``). Not measured on a GPU, so CUDA keeps NCHW unless
    asked.

    ``precision`` (networks): ``auto`` chooses by device and capability (:func:`choose_precision`:
    CUDA autocast within the card's tolerance; on the CPU float32 unless bfloat16 is native,
    faster at load and within the tolerance); ``float32``/``bfloat16``/``float16`` force one.
    None (the scan's): ``auto`` on CUDA, float32 on the CPU (:func:`default_cpu_precision`)."""
    if spec == INDEX_DETECTOR:
        return IndexDetector()
    if spec is not None and str(spec).endswith(ONNX_SUFFIX):  # an export of `landslide export`
        return load_onnx_detector(spec, device=device)
    ref = spec or DEFAULT_CHECKPOINT
    dev = select_device(device)
    card_path = resolve_checkpoint(ref)
    if is_ensemble_card(card_path):
        ens = read_ensemble(card_path)
        members = [load_detector(m, device, channels_last, precision)
                   for m in member_refs(ens, card_path)]
        if any(not isinstance(m, ModelDetector) for m in members):
            raise CheckpointError(f"{card_path}: ensemble members must be model cards")
        if len({m.patch_size for m in members}) != 1:
            raise CheckpointError(f"{card_path}: members use different patch sizes")
        return EnsembleDetector(members=members, card=ens, card_path=str(card_path),
                                prefetch_batches=accel.prefetch_depth(dev.type))
    model, card = load_checkpoint(ref, device=str(dev))
    batch_invariant_squeeze(model)
    if channels_last is None:
        channels_last = dev.type == "cpu" and cpu_channels_last()
    if channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    detector = ModelDetector(model=model, card=card, card_path=str(card_path), device=dev,
                             channels_last=channels_last,
                             prefetch_batches=accel.prefetch_depth(dev.type),
                             malloc_choice=accel.keep_freed_memory().as_dict() if dev.type == "cpu" else None)
    if precision is None and dev.type == "cpu":
        choice = default_cpu_precision()
        detector.precision, detector.precision_reason = str(choice.value), choice.reason
    else:
        choose_precision(detector, precision or "auto")
    return detector


def default_cpu_precision(cpu_flags: frozenset[str] | None = None) -> accel.Choice:
    """The CPU's default precision: float32, whatever the CPU offers. A choice by a timing at
    load (``precision="auto"``) can differ between the processes of one run (a loaded machine, a
    Dask worker elsewhere) and would mix precisions across blocks, which the scan's bitwise
    resume and block-sharing promises rule out; the reason says whether bfloat16 is native here."""
    flags = accel.read_cpu_flags() if cpu_flags is None else cpu_flags
    if accel.cpu_bf16_capable(flags):
        return accel.Choice(accel.FP32, "CPU default; native bfloat16 present (precision='auto' "
                                        "times it at load and checks the card's tolerance)")
    return accel.Choice(accel.FP32, "CPU default; no native bfloat16 on this CPU")


def auto_batch_size(detector: Detector, default: int = defaults.BATCH_SIZE) -> accel.Choice:
    """``--batch-size auto`` for a loaded detector: on CUDA the largest power of two whose forward
    pass fits (every network of an ensemble), else ``default``; recorded on the detector (its
    ``describe()``) as ``batch_size_choice``."""
    nets = [m for m in (getattr(detector, "members", None) or [detector]) if isinstance(m, ModelDetector)]
    device_type = nets[0].device.type if nets else "cpu"
    fits = (lambda b: all(n.fits(b) for n in nets)) if nets and device_type == "cuda" else None
    choice = accel.choose_batch_size(device_type, fits, default)
    for obj in (detector, *nets):
        if hasattr(obj, "batch_size_choice"):
            obj.batch_size_choice = choice.as_dict()
    return choice


# CPU ISA levels at which oneDNN has NHWC convolution kernels that the measurements found faster
# (1.15-1.64x on AVX-512 here, benchmarks/README.md); elsewhere (e.g. "DEFAULT", ARM) NCHW is kept.
CHANNELS_LAST_CPU_CAPABILITIES = ("AVX2", "AVX512")


def cpu_channels_last() -> bool:
    """Whether the CPU path uses channels-last: chosen from what the CPU and torch's build offer
    (oneDNN present and an AVX2/AVX-512 kernel level), never assumed."""
    import torch

    return bool(torch.backends.mkldnn.is_available()
                and torch.backends.cpu.get_cpu_capability() in CHANNELS_LAST_CPU_CAPABILITIES)


def batch_invariant_squeeze(model: "torch.nn.Module") -> None:  # noqa: F821
    """Make a patch's probabilities independent of its place in the batch (in place).

    Border-patch sharing, resumed runs and Dask workers rely on a patch giving the same bits in
    any batch of the same size. Squeeze-and-excitation blocks (EfficientNet, SE-ResNet, ...)
    break that: their convolutions output one value per channel, (N, C, 1, 1), and the
    activations after them (SiLU, sigmoid) run over the N * C values in vector chunks with a
    scalar loop for the remainder, whose exp rounds differently, so a sample's last bits depended
    on how many samples preceded it. Each such output is returned as a view with a row stride of
    C + 1: elementwise ops then run row by row, the same way for every sample. Values are
    unchanged; ReLU-only networks have no such convolution and are untouched.
    """
    import torch

    def per_sample_rows(module, inputs, out):
        if out.dim() != 4 or out.shape[2] * out.shape[3] != 1 or out.shape[1] < 2:
            return out
        n, c = out.shape[:2]
        rows = out.new_zeros((n, c + 1))
        rows[:, :c] = out.reshape(n, c)
        return rows[:, :c, None, None]

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(per_sample_rows)


_DETECTORS: dict = {}  # per-process cache: a worker loads each checkpoint once


def cached_detector(spec: str | None, device: str = "auto") -> Detector:
    """The detector of ``spec`` on ``device``, loaded once per process (the plan's checks, the
    scan's inference step and every block job run here share it)."""
    key = (spec, device)
    if key not in _DETECTORS:
        _DETECTORS[key] = load_detector(spec, device)
    return _DETECTORS[key]
