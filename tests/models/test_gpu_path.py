"""Issue 19 items 4-5 wired into the detectors, checked on a CPU: the CPU path stays float32 and
unprefetched, the precision choice follows capability + timing + tolerance, --batch-size auto,
the read-ahead loop gives the same bits, and the ONNX provider choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import accel, detectors
from models.checkpoint import InferenceTolerance
from models.detectors import (
    DEFAULT_CHECKPOINT,
    IndexDetector,
    ModelDetector,
    auto_batch_size,
    check_precision,
    choose_precision,
    default_cpu_precision,
    load_detector,
    validation_patches,
)
from tasks.core.blend import predict_array

SMALL = "iburi2018-weak-unet-mobilenet_v2"


@pytest.fixture(scope="module")
def small():
    return load_detector(SMALL, "cpu")


def _tiny_patches(det, n=1, px=32):
    """Validation patches cropped to ``px``: a bfloat16 forward stays cheap on a CPU without
    native bfloat16 (emulated: tens of times slower)."""
    x, ok = validation_patches(det.card, n)
    return x[..., :px, :px], ok[:, :px, :px]


def test_cpu_detector_is_float32_unprefetched_and_says_why(small):
    assert small.precision == accel.FP32 and small.prefetch_batches == 0
    d = small.describe()
    assert d["precision"] == accel.FP32 and d["prefetch_batches"] == 0
    assert "CPU default" in d["precision_reason"]
    assert "batch_size_choice" not in d  # only with --batch-size auto
    assert d["malloc"] == accel.keep_freed_memory().as_dict()  # the CPU path's allocator, recorded
    assert "native bfloat16 present" in default_cpu_precision(frozenset({"amx_bf16"})).reason
    assert "no native bfloat16" in default_cpu_precision(frozenset({"avx2"})).reason
    assert default_cpu_precision(frozenset({"amx_bf16"})).value == accel.FP32


def test_validation_patches_are_deterministic_and_in_range(small):
    a, ok = validation_patches(small.card, 2)
    b, _ = validation_patches(small.card, 2)
    assert a.shape == (2, len(small.bands), 128, 128) and ok.all()
    np.testing.assert_array_equal(a, b)
    means = a.mean(axis=(0, 2, 3))
    stats = small.card.training_statistics
    expect = np.asarray(stats.mean) if stats is not None else means
    np.testing.assert_allclose(means, expect, rtol=0.5)  # around the training means, not 0 or 1e4


def test_cpu_without_native_bf16_is_never_timed(small, monkeypatch):
    def no_timing(*a, **k):
        raise AssertionError("timed on a CPU without native bfloat16")

    monkeypatch.setattr(detectors, "_time_forward", no_timing)
    det = ModelDetector(model=small.model, card=small.card, card_path=small.card_path,
                        device=small.device, channels_last=small.channels_last)
    choice = choose_precision(det, "auto", cpu_flags=frozenset({"avx512f", "avx2"}))
    assert choice.value == accel.FP32 and det.precision == accel.FP32
    assert "no native bfloat16" in det.precision_reason


@pytest.mark.parametrize("bf16_s, tolerance, expect", [
    (0.5, InferenceTolerance(max_abs_prob=1.0, max_flip_fraction=1.0), accel.BF16),
    (0.5, InferenceTolerance(max_abs_prob=1e-9, max_flip_fraction=0.0), accel.FP32),
    (60.0, InferenceTolerance(max_abs_prob=1.0, max_flip_fraction=1.0), accel.FP32),
])
def test_cpu_bf16_needs_a_faster_timing_and_the_tolerance(small, monkeypatch, bf16_s, tolerance, expect):
    monkeypatch.setattr(detectors, "_time_forward",
                        lambda det, x, precision: 1.0 if precision == accel.FP32 else bf16_s)
    monkeypatch.setattr(detectors, "validation_patches", lambda card, n=4: _tiny_patches(small))
    card = small.card.model_copy(update={"inference_tolerance": tolerance})
    det = ModelDetector(model=small.model, card=card, card_path=small.card_path, device=small.device)
    choose_precision(det, "auto", cpu_flags=frozenset({"avx512_bf16"}))
    assert det.precision == expect
    if bf16_s < 1.0:  # timed faster: the tolerance was checked, and recorded
        assert det.precision_check["precision"] == accel.BF16
        assert det.precision_check["ok"] == (expect == accel.BF16)
    else:
        assert det.precision_check is None and "not faster" in det.precision_reason


@pytest.mark.parametrize("bf16, within, expect, reason", [
    (True, {accel.BF16, accel.FP16}, accel.BF16, "to bfloat16 within"),
    (True, {accel.FP16}, accel.FP16, "bfloat16 was outside it"),
    (True, set(), accel.FP32, "bfloat16 and float16 autocast outside"),
    (False, {accel.BF16, accel.FP16}, accel.FP16, "to float16 within"),
])
def test_cuda_auto_takes_the_first_autocast_within_the_tolerance(small, monkeypatch, bf16, within, expect,
                                                                  reason):
    """On a GPU (faked: the checks are stubbed, no forward runs): bfloat16, then float16, then float32."""
    checked = []

    def check(det, precision, patches=None):
        checked.append(precision)
        ok = precision in within
        return accel.PrecisionCheck(precision, 0.001 if ok else 0.05, 0.0, 10, 0.02, 0.001)

    monkeypatch.setattr(detectors, "check_precision", check)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    gpu = ModelDetector(model=small.model, card=small.card, card_path=small.card_path,
                        device=torch.device("cuda"))
    choose_precision(gpu, "auto")
    assert gpu.precision == expect and reason in gpu.precision_reason
    assert checked == list(accel.cuda_autocast_candidates(bf16))[:len(checked)]
    assert gpu.precision_check["precision"] == checked[-1]


def test_precision_check_measures_a_real_bf16_forward(small):
    check = check_precision(small, accel.BF16, _tiny_patches(small))
    assert check.n_px == 32 * 32
    assert 0.0 < check.max_abs_prob < 0.5  # bfloat16 rounds: different, but close
    same = check_precision(small, accel.FP32, _tiny_patches(small))
    assert same.max_abs_prob == 0.0 and same.ok


def test_forced_precision_is_used_and_checked_values_rejected(small):
    det = ModelDetector(model=small.model, card=small.card, card_path=small.card_path, device=small.device)
    choose_precision(det, accel.BF16)
    assert det.precision == accel.BF16 and det.precision_reason == "asked for"
    x, ok = _tiny_patches(small)
    assert det.predict(x, ok).dtype == np.float32
    from tasks.core.errors import InputError

    with pytest.raises(InputError, match="precision"):
        choose_precision(det, "int8")


def test_batch_size_auto(small, monkeypatch):
    assert auto_batch_size(small).value == 16  # CPU: the default, outputs as before
    assert small.describe()["batch_size_choice"]["value"] == 16
    # a CUDA detector (faked: no GPU here) whose forward fits up to 300 patches
    gpu = ModelDetector(model=small.model, card=small.card, card_path=small.card_path,
                        device=torch.device("cuda"))
    monkeypatch.setattr(ModelDetector, "fits", lambda self, b: b <= 300)
    choice = auto_batch_size(gpu)
    assert choice.value == 128  # 2 x 128 fits, 2 x 256 does not
    assert gpu.batch_size_choice["value"] == 128 and "CUDA" in gpu.batch_size_choice["reason"]
    assert auto_batch_size(IndexDetector()).value == 16


def _random_stack(seed: int, height: int, width: int) -> np.ndarray:
    """(14, H, W) float32 reflectance-like values with a slope band (index rule input)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(1000, 300, size=(14, height, width)).astype(np.float32)
    image[12] = rng.uniform(0, 40, size=(height, width))  # slope
    return image


def _plain_and_read_ahead(detector_class, image, valid, batch_size: int):
    """Two detectors of ``detector_class`` (each with ``seen``, a list its predict may fill), one
    predicting without read-ahead and one with 2 batches ahead; both probabilities must be the
    same bits. Returns the two detectors."""
    plain, ahead = detector_class(), detector_class()
    plain.seen, ahead.seen = [], []
    ahead.prefetch_batches = 2
    p0 = predict_array(image, valid, plain, batch_size=batch_size)
    p1 = predict_array(image, valid, ahead, batch_size=batch_size)
    np.testing.assert_array_equal(p0, p1)
    return plain, ahead


def test_read_ahead_gives_the_same_bits_and_full_batches():
    image = _random_stack(3, 300, 280)
    valid = np.ones((300, 280), bool)
    valid[:100, :90] = False  # empty patches are skipped in both loops

    class Counting(IndexDetector):
        def predict(self, batch, ok):
            self.seen.append(len(batch))
            return super().predict(batch, ok)

    plain, ahead = _plain_and_read_ahead(Counting, image, valid, 4)
    assert plain.seen == ahead.seen and set(ahead.seen) == {4}


def test_read_ahead_never_overwrites_a_batch_in_use():
    # the stacked batches' arrays are reused round-robin (tasks.core.blend): with a slow device the
    # reader fills the queue, and no batch may change while the detector still works on it
    import time

    image = _random_stack(5, 520, 520)
    valid = np.ones((520, 520), bool)

    class Slow(IndexDetector):  # seen: whether each batch stayed unchanged while in use
        def predict(self, batch, ok):
            before = batch.copy()
            time.sleep(0.01)  # the reader runs ahead meanwhile
            out = super().predict(batch, ok)
            time.sleep(0.01)
            self.seen.append(np.array_equal(batch, before, equal_nan=True))
            return out

    plain, ahead = _plain_and_read_ahead(Slow, image, valid, 2)
    assert len(ahead.seen) > 8 and all(ahead.seen) and all(plain.seen)


def test_onnx_providers_for_the_device():
    from models.export import session_providers
    from tasks.core.errors import InputError

    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_providers(gpu, "auto") == gpu
    assert session_providers(gpu, "cpu") == ["CPUExecutionProvider"]
    assert session_providers(gpu, "cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert session_providers(["CPUExecutionProvider"], "auto") == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="CUDAExecutionProvider"):
        session_providers(["CPUExecutionProvider"], "cuda")


def test_default_checkpoint_loads_float32_on_cpu():
    det = load_detector(DEFAULT_CHECKPOINT, "cpu")
    assert det.precision == accel.FP32 and det.describe()["precision_check"] is None


def test_predict_reuses_its_input_buffer_per_thread_and_gives_the_same_bits(small):
    """predict writes the transformed batch into one buffer per thread and shape (no page faults
    for a fresh batch buffer each time): later batches, other shapes and other threads give the
    bits a fresh detector gives."""
    import threading

    x, ok = _tiny_patches(small, 3, px=64)
    fresh = load_detector(SMALL, "cpu")
    want = fresh.predict(x, ok)
    first = small.predict(x, ok)
    buffer = small._host.array
    assert buffer.shape == x.shape and (buffer.strides[1] == 4) == small.channels_last
    other = small.predict(x[::-1].copy(), ok[::-1].copy())  # the same buffer, new contents
    assert small._host.array is buffer
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(other, want[::-1])
    # another shape (a network's output depends on the batch size, so the fresh one's at that size)
    np.testing.assert_array_equal(small.predict(x[:1], ok[:1]), fresh.predict(x[:1], ok[:1]))
    assert small._host.array is not buffer and small._host.array.shape[0] == 1
    seen = {}

    def in_thread():
        seen["prob"] = small.predict(x, ok)
        seen["buffer"] = small._host.array

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    np.testing.assert_array_equal(seen["prob"], want)
    assert seen["buffer"] is not small._host.array  # its own buffer
