"""CPU-speed variants of a checkpoint: ONNX Runtime (float32, static int8) and channel pruning.

Each variant is a detector with the same interface as :class:`models.detectors.ModelDetector`
(physical-unit patches in, probabilities out; the card's input transform and nodata fill), so a
variant is scored by the same tiling/stitching code as a scan. ``benchmarks/cpu_inference.py``
measures their speed and F1 change against the original.

An exported ``.onnx`` file carries its model card (JSON) in the ONNX metadata under ``model_card``
and the sha256 of the source weights, so it is self-describing: ``load_onnx_detector(path)`` needs
nothing else.

int8 uses ONNX Runtime's static quantization (QDQ, per-channel weights, activations calibrated on
patches of a calibration dataset, MinMax): dynamic quantization only covers Linear/LSTM layers and
would leave a convolutional network unchanged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.accel import onnx_providers, prefetch_depth
from models.checkpoint import CardFields, ModelCard, load_checkpoint, resolve_checkpoint
from models.data.datasets import load_scene_dataset
from tasks.core.bands import band_index
from tasks.core.errors import CheckpointError, InputError
from tasks.core.files import atomic_write

CARD_KEY = "model_card"


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise InputError("ONNX export needs the optional packages: pip install -c constraints.txt "
                         "-e '.[onnx]'") from None


def export_onnx(card_ref: str | Path, out_path: str | Path, batch: int = 16) -> Path:
    """Export a checkpoint's network (float32) to ONNX with a dynamic batch axis.

    The file is written next to its final name and renamed, with the card in its metadata.
    """
    _require_onnx()
    import onnx
    import torch

    model, card = load_checkpoint(card_ref, device="cpu")
    model = model.float().eval()
    x = torch.zeros(batch, card.in_channels, card.patch_size, card.patch_size)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_path) as tmp:
        torch.onnx.export(model, (x,), str(tmp), input_names=["x"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                          dynamo=True, opset_version=18, verbose=False)
        proto = onnx.load(str(tmp))
        _set_metadata(proto, card.model_dump_json(), str(resolve_checkpoint(card_ref)))
        onnx.save(proto, str(tmp))
    for extra in tmp.parent.glob(tmp.name + "*.data"):  # external-data leftovers, if any
        extra.unlink()
    return out_path


def _set_metadata(proto, card_json: str, source: str) -> None:
    for key, value in ((CARD_KEY, card_json), ("source_card", source)):
        entry = next((p for p in proto.metadata_props if p.key == key), None)
        if entry is None:
            entry = proto.metadata_props.add()
            entry.key = key
        entry.value = value


class _CalibrationReader:
    """Feeds normalized patches of a scene-layout dataset to ONNX Runtime's calibrator."""

    def __init__(self, card, data_dir: str | Path, n_patches: int, batch: int = 8, seed: int = 0):
        data = load_scene_dataset(data_dir, require_labels=False)
        idx = [band_index(b) for b in card.bands]
        image = data.image[idx]
        s = card.patch_size
        h, w = image.shape[1:]
        if h < s or w < s:
            raise InputError(f"{data_dir} is {w}x{h} px, smaller than one {s} px patch")
        rng = np.random.default_rng(seed)
        patches = []
        for _ in range(n_patches):
            r, c = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            patches.append(card.input_transform.apply_filled(image[None, :, r:r + s, c:c + s])[0])
        self._batches = iter([np.stack(patches[i:i + batch]).astype(np.float32)
                              for i in range(0, len(patches), batch)])

    def get_next(self):
        b = next(self._batches, None)
        return None if b is None else {"x": b}


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration_dir: str | Path,
                  n_patches: int = 64) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on ``calibration_dir``."""
    _require_onnx()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    card = card_of_onnx(onnx_path)
    out_path = Path(out_path)
    pre = out_path.with_name(out_path.name + ".pre.onnx")
    try:
        with atomic_write(out_path) as tmp:
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(tmp), _CalibrationReader(card, calibration_dir, n_patches),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            proto = onnx.load(str(tmp))
            _set_metadata(proto, card.model_dump_json(), str(onnx_path))
            meta = proto.metadata_props.add()
            meta.key, meta.value = "quantization", (f"static int8 (QDQ, per-channel weights, MinMax "
                                                    f"calibration on {n_patches} patches of "
                                                    f"{Path(calibration_dir).name})")
            onnx.save(proto, str(tmp))
    finally:
        pre.unlink(missing_ok=True)
    return out_path


def card_of_onnx(path: str | Path):
    """The model card stored in an exported ONNX file."""
    _require_onnx()
    import onnx

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CheckpointError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if CARD_KEY not in meta:
        raise CheckpointError(f"{path} has no '{CARD_KEY}' metadata: export it with "
                              "models.export.export_onnx")
    return ModelCard.model_validate(json.loads(meta[CARD_KEY]))


@dataclass
class OnnxDetector(CardFields):
    """An exported network run by ONNX Runtime (same interface as ModelDetector): on the CPU, or
    on a GPU through the CUDA execution provider when it is installed and the device allows."""

    session: object
    card: object
    path: str
    forward_s: float = 0.0
    prefetch_batches: int = 0  # batches read ahead while the GPU computes (0: CPU)

    @property
    def ref(self) -> str:
        return f"{self.card.model_ref}+onnx:{Path(self.path).name}"

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (the first of the session's)."""
        return self.session.get_providers()[0]

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(self.card.input_transform.apply_filled(batch), dtype=np.float32)
        t0 = time.perf_counter()
        logits = self.session.run(None, {"x": x})[0]
        self.forward_s += time.perf_counter() - t0
        return (1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))).astype(np.float32)

    def describe(self) -> dict:
        return {"kind": "onnx", "ref": self.ref, "path": self.path, "provider": self.provider,
                "card": self.card.model_dump(mode="json")}


def session_providers(available: list[str], device: str) -> list:
    """The providers (with options) for an ONNX Runtime session on ``device`` (auto, cpu, cuda,
    cuda:N): ``models.accel.onnx_providers``, with the GPU's index for ``cuda:N``.

    Raises:
        InputError: ``device`` asks for CUDA and ONNX Runtime has no CUDA execution provider.
    """
    device_type, _, index = str(device).partition(":")
    if device_type == "cuda" and "CUDAExecutionProvider" not in available:
        raise InputError(f"--device {device} was asked for but ONNX Runtime has no "
                         "CUDAExecutionProvider (install onnxruntime-gpu); use --device auto")
    providers: list = onnx_providers(available, device_type)
    if providers[0] == "CUDAExecutionProvider" and index:
        providers[0] = ("CUDAExecutionProvider", {"device_id": int(index)})
    return providers


def load_onnx_detector(path: str | Path, threads: int | None = None, device: str = "cpu") -> OnnxDetector:
    """An exported ``.onnx`` as a detector on ``device`` (auto, cpu, cuda, cuda:N): the CUDA
    execution provider when installed and allowed, else the CPU's."""
    _require_onnx()
    import onnxruntime as ort

    card = card_of_onnx(path)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    providers = session_providers(ort.get_available_providers(), device)
    session = ort.InferenceSession(str(path), opts, providers=providers)
    det = OnnxDetector(session=session, card=card, path=str(path))
    det.prefetch_batches = prefetch_depth("cuda" if det.provider == "CUDAExecutionProvider" else "cpu")
    return det


def prune_channels(model, amount: float):
    """L1 structured pruning of every Conv2d's output channels (weights zeroed, made permanent).

    Zeroed channels still cost their FLOPs in dense kernels; this shows the accuracy side of
    pruning. Removing the channels physically is what would pay, and only if accuracy holds.
    """
    import torch
    from torch.nn.utils import prune

    if not 0 < amount < 1:
        raise InputError(f"pruning amount must be in (0, 1), got {amount}")
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.out_channels > 1:
            prune.ln_structured(module, name="weight", amount=amount, n=1, dim=0)
            prune.remove(module, "weight")
    return model
