"""Detectors: what maps a batch of patches to landslide probabilities (``tasks.core.blend.Detector``).

Four kinds: a network from a checkpoint (safetensors + model card), an ensemble card over such
networks, an ONNX Runtime export (``models.export``), and the weights-free spectral index rule
(``models.index_rule``), the "traditional method". Device choice lives here and nowhere else.
:func:`load_detector` builds one from a spec; :func:`cached_detector` loads each spec once per
process (the CLI's checks, the scan's inference step and the block jobs it runs share it).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from models.cards import DEFAULT_CHECKPOINT, INDEX_DETECTOR, ONNX_SUFFIX
from models.checkpoint import CardFields, ModelCard, load_checkpoint, resolve_checkpoint, sha256_file
from models.ensemble import EnsembleCard, is_ensemble_card, member_refs, read_ensemble
from models.export import load_onnx_detector
from models.index_rule import RuleParams, scar_score
from tasks.core.bands import validate_bands
from tasks.core.blend import Detector
from tasks.core.errors import CheckpointError, InputError


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
    """A segmentation network loaded from a checkpoint card."""

    model: "torch.nn.Module"  # noqa: F821
    card: ModelCard
    card_path: str
    device: "torch.device"  # noqa: F821
    forward_s: float = 0.0
    channels_last: bool = False  # the model's weights and inputs in NHWC memory order

    def model_input(self, x: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """``x`` (N, C, H, W) on the device, in the memory order the model's weights use."""
        import torch

        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _input_buffer(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """A (B, C, H, W) float32 view of a channels-last buffer when the model runs channels-last
        (the transformed batch then needs no reordering copy), else None."""
        if not self.channels_last:
            return None
        b, c, h, w = shape
        return np.empty((b, h, w, c), dtype=np.float32).transpose(0, 3, 1, 2)

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        import torch

        # nodata -> the training mean; written straight into the memory order the model uses
        x = self.card.input_transform.apply_filled(batch, out=self._input_buffer(batch.shape))
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(self.model_input(torch.from_numpy(x)))
            prob = torch.sigmoid(logits[:, 0]).float().cpu().numpy()
        self.forward_s += time.perf_counter() - t0
        return prob

    def describe(self) -> dict:
        import torch

        return {"kind": "model", "ref": self.ref, "card_path": self.card_path,
                "card_sha256": sha256_file(self.card_path), "device": str(self.device),
                "memory_format": "channels_last" if self.channels_last else "NCHW",
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "card": self.card.model_dump(mode="json")}


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
                "card": self.card.model_dump(mode="json")}


def network_cards(detector) -> list[dict]:
    """The model cards (as JSON) of the networks a detector runs: one for a network or its ONNX
    export, one per member for an ensemble, none for the index rule."""
    members = getattr(detector, "members", None) or [detector]
    return [m.card.model_dump(mode="json") for m in members
            if getattr(getattr(m, "card", None), "input_transform", None) is not None]


def load_detector(spec: str | None, device: str = "auto", channels_last: bool | None = None) -> Detector:
    """``index`` -> the rule; None -> the shipped default checkpoint; a ``.onnx`` path -> an ONNX
    Runtime export (``landslide export``); else a checkpoint name/path (a model card, or an
    ensemble card listing member cards).

    ``channels_last`` (networks; None = :func:`cpu_channels_last`): weights and inputs in NHWC
    memory order. Faster on CPU with probabilities within float rounding of the NCHW forward
    (measurements: ``benchmarks/README.md``). Not measured on a GPU, so CUDA keeps NCHW unless
    asked."""
    if spec == INDEX_DETECTOR:
        return IndexDetector()
    if spec is not None and str(spec).endswith(ONNX_SUFFIX):  # an export of `landslide export`
        return load_onnx_detector(spec)
    ref = spec or DEFAULT_CHECKPOINT
    dev = select_device(device)
    card_path = resolve_checkpoint(ref)
    if is_ensemble_card(card_path):
        ens = read_ensemble(card_path)
        members = [load_detector(m, device, channels_last) for m in member_refs(ens, card_path)]
        if any(not isinstance(m, ModelDetector) for m in members):
            raise CheckpointError(f"{card_path}: ensemble members must be model cards")
        if len({m.patch_size for m in members}) != 1:
            raise CheckpointError(f"{card_path}: members use different patch sizes")
        return EnsembleDetector(members=members, card=ens, card_path=str(card_path))
    model, card = load_checkpoint(ref, device=str(dev))
    batch_invariant_squeeze(model)
    if channels_last is None:
        channels_last = dev.type == "cpu" and cpu_channels_last()
    if channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    return ModelDetector(model=model, card=card, card_path=str(card_path), device=dev,
                         channels_last=channels_last)


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
