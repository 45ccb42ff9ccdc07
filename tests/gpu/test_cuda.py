"""The CUDA path on a real GPU (issue 19, item 4). Deselected by default; on a GPU machine:

    python -m pytest -m gpu tests/gpu

Without a CUDA GPU they skip. Their CPU-side logic (device and precision choice, batch-size
probe, read-ahead queue, the AMP training steps forced on the CPU, ONNX providers) is covered in
the default suite by ``tests/models/test_gpu_path.py``, ``tests/models/test_train_device.py`` and
``tests/tasks/test_prefetch.py``. These tests need only torch, smp, rasterio and pydantic (no
``conftest.py`` fixture), so ``--noconftest`` runs them where Prefect is not installed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import accel
from models.accel import BF16, FP16, FP32
from models.checkpoint import InferenceTolerance
from models.detectors import DEFAULT_CHECKPOINT, auto_batch_size, load_detector, validation_patches
from tasks.core.errors import InputError

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def on_gpu():
    return load_detector(DEFAULT_CHECKPOINT, "cuda")


@pytest.fixture(scope="module")
def on_cpu():
    return load_detector(DEFAULT_CHECKPOINT, "cpu")


def _tolerance(det) -> InferenceTolerance:
    return det.card.inference_tolerance or InferenceTolerance()


def test_autocast_is_chosen_by_the_check_at_load_and_stays_near_the_cpu(on_gpu, on_cpu):
    assert on_gpu.device.type == "cuda" and on_gpu.prefetch_batches == 2
    check = on_gpu.precision_check
    assert check is not None and check["n_px"] > 0  # the reduced precision was checked at load
    candidates = accel.cuda_autocast_candidates(torch.cuda.is_bf16_supported())
    if check["ok"]:  # the first autocast dtype within the card's tolerance
        assert on_gpu.precision == check["precision"] and on_gpu.precision in candidates
    else:  # none was: float32, after trying every candidate
        assert on_gpu.precision == FP32 and check["precision"] == candidates[-1]
    x, ok = validation_patches(on_gpu.card, 8, seed=1)  # not the patches of the load-time check
    gpu_prob, cpu_prob = on_gpu.predict(x, ok), on_cpu.predict(x, ok)
    # the transformed batch was written into page-locked memory, copied to the GPU from there
    assert on_gpu._host.array.shape == x.shape and torch.from_numpy(on_gpu._host.array).is_pinned()
    assert not on_gpu._pinned  # no second staging copy
    assert gpu_prob.dtype == np.float32 and gpu_prob.shape == cpu_prob.shape
    assert float(np.abs(gpu_prob - cpu_prob).max()) <= _tolerance(on_gpu).max_abs_prob


def test_a_patch_gives_the_same_bits_on_every_run_and_anywhere_in_its_batch(on_gpu):
    """What resumed runs, shared border patches and Dask workers rely on, on the GPU too."""
    x, ok = validation_patches(on_gpu.card, 4, seed=2)
    batch, batch_ok = np.concatenate([x, x[::-1]]), np.concatenate([ok, ok[::-1]])
    first, again = on_gpu.predict(batch, batch_ok), on_gpu.predict(batch, batch_ok)
    np.testing.assert_array_equal(first, again)
    for i in range(4):
        np.testing.assert_array_equal(first[i], first[7 - i])


def test_batch_size_auto_probes_the_gpu_and_the_batch_runs(on_gpu):
    choice = auto_batch_size(on_gpu)
    size = int(choice.value)
    assert size & (size - 1) == 0 and 16 <= size <= 512 and choice.reason.startswith("CUDA")
    assert on_gpu.describe()["batch_size_choice"]["value"] == size
    x, ok = validation_patches(on_gpu.card, 4, seed=3)
    prob = on_gpu.predict(np.resize(x, (size, *x.shape[1:])), np.resize(ok, (size, *ok.shape[1:])))
    assert prob.shape == (size, on_gpu.patch_size, on_gpu.patch_size) and np.isfinite(prob).all()


def test_forced_precisions_run_and_float32_matches_the_cpu(on_cpu):
    x, ok = validation_patches(on_cpu.card, 4, seed=4)
    cpu_prob = on_cpu.predict(x, ok)
    for precision in (FP32, FP16, BF16):
        det = load_detector(DEFAULT_CHECKPOINT, "cuda", precision=precision)
        assert det.precision == precision and det.precision_reason == "asked for"
        prob = det.predict(x, ok)
        assert np.isfinite(prob).all()
        # float32 (cuDNN's TF32 convolutions, torch's default) within the card's tolerance; the
        # reduced ones the same network (their tolerance is the load-time check's business)
        limit = _tolerance(on_cpu).max_abs_prob if precision == FP32 else 0.1
        assert float(np.abs(prob - cpu_prob).max()) <= limit, precision


# ------------------------------------------------------------------------------------------------
# training on CUDA (landslide train --device cuda)

def _scenes(root):
    from tests.models.test_train_device import _scene

    return _scene(root / "train", 0), _scene(root / "val", 1)


TRAIN = dict(model="unet-mobilenet_v2", epochs=1, steps_per_epoch=3, batch_size=4, threads=1,
             bands=("B02", "B03", "B04"))


def test_training_on_cuda_uses_mixed_precision(tmp_path):
    from models.training.train import TrainConfig, train_scene_model

    card = train_scene_model(*_scenes(tmp_path), tmp_path, "gpu", TrainConfig(**TRAIN, device="cuda"),
                             progress=False)
    training = json.loads(card.read_text())["training"]
    bf16 = torch.cuda.is_bf16_supported()
    assert training["device_used"].startswith("cuda")
    assert training["precision"] == (BF16 if bf16 else FP16) and training["grad_scaler"] is (not bf16)
    assert np.isfinite(training["history"][0]["train_loss"])
    state = json.loads((tmp_path / "gpu.run" / "state.json").read_text())
    assert state["config"]["amp"] == training["precision"]
    det = load_detector(str(card), "cpu")  # a GPU-trained checkpoint serves on the CPU
    x, ok = validation_patches(det.card, 2)
    assert np.isfinite(det.predict(x, ok)).all()


def test_float16_training_steps_through_the_gradient_scaler(tmp_path, monkeypatch):
    from models.training.train import TrainConfig, _Compute, train_scene_model

    forced = _Compute(torch.device("cuda"), FP16, torch.amp.GradScaler("cuda"))
    monkeypatch.setattr(_Compute, "of", classmethod(lambda cls, device: forced))
    card = train_scene_model(*_scenes(tmp_path), tmp_path, "fp16", TrainConfig(**TRAIN, device="cuda"),
                             progress=False)
    training = json.loads(card.read_text())["training"]
    assert training["precision"] == FP16 and training["grad_scaler"] is True
    assert np.isfinite(training["history"][0]["train_loss"])
    assert forced.scaler.get_scale() > 0


# ------------------------------------------------------------------------------------------------
# ONNX: the CUDA execution provider when installed, else a clear refusal of --device cuda

def test_onnx_export_on_the_cuda_provider_or_a_clear_refusal(tmp_path, on_cpu):
    ort = pytest.importorskip("onnxruntime")
    from models.export import export_onnx, load_onnx_detector

    path = export_onnx(DEFAULT_CHECKPOINT, tmp_path / "default.onnx")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(InputError, match="onnxruntime-gpu"):
            load_onnx_detector(path, device="cuda")
        assert load_onnx_detector(path, device="auto").provider == "CPUExecutionProvider"
        return
    det = load_onnx_detector(path, device="cuda")
    assert det.provider == "CUDAExecutionProvider" and det.prefetch_batches == 2
    x, ok = validation_patches(on_cpu.card, 4)
    assert float(np.abs(det.predict(x, ok) - on_cpu.predict(x, ok)).max()) <= 1e-3
