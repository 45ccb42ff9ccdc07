"""Issue 19 items 4-5: the device speed choices as pure functions, checked on a CPU."""

from __future__ import annotations

import numpy as np
import pytest

from models import accel


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nflags : other\n")
    assert accel.read_cpu_flags(info) == {"fpu", "sse", "avx2", "avx512f", "avx512_bf16"}
    assert accel.read_cpu_flags(tmp_path / "missing") == frozenset()
    assert accel.cpu_bf16_capable({"avx512f", "amx_bf16"})
    assert accel.cpu_bf16_capable({"avx512_bf16"})
    assert not accel.cpu_bf16_capable({"avx512f", "avx2"})  # AVX-512 alone: bf16 emulated, slow


def test_cpu_bf16_needs_capability_timing_and_tolerance():
    assert accel.choose_cpu_precision(False, 1.0, 0.1, True).value == accel.FP32
    assert accel.choose_cpu_precision(True).value == accel.FP32  # not timed
    slower = accel.choose_cpu_precision(True, fp32_s=1.0, bf16_s=60.0, within_tolerance=True)
    assert slower.value == accel.FP32 and "not faster" in slower.reason
    barely = accel.choose_cpu_precision(True, fp32_s=1.0, bf16_s=0.95, within_tolerance=True)
    assert barely.value == accel.FP32  # within the noise margin
    off = accel.choose_cpu_precision(True, fp32_s=1.0, bf16_s=0.5, within_tolerance=False)
    assert off.value == accel.FP32 and "tolerance" in off.reason
    fast = accel.choose_cpu_precision(True, fp32_s=1.0, bf16_s=0.5, within_tolerance=True)
    assert fast.value == accel.BF16 and "faster" in fast.reason


def test_autocast_dtype_by_device():
    assert accel.autocast_dtype("cuda", bf16_supported=True) == accel.BF16
    assert accel.autocast_dtype("cuda", bf16_supported=False) == accel.FP16
    assert accel.autocast_dtype("cpu") == accel.FP32
    assert accel.autocast_dtype("cpu", cpu_precision=accel.BF16) == accel.BF16
    assert accel.autocast_dtype("mps", True) == accel.FP32
    assert accel.choose_cuda_precision(False, accel.BF16).value == accel.FP16
    assert accel.choose_cuda_precision(True, accel.FP32).value == accel.FP32
    with pytest.raises(ValueError, match="precision"):
        accel.choose_cuda_precision(True, "int4")


def test_training_amp_only_on_cuda():
    assert accel.training_precision("cpu", True) == (accel.FP32, False)
    assert accel.training_precision("cuda", True) == (accel.BF16, False)  # no scaler for bf16
    assert accel.training_precision("cuda", False) == (accel.FP16, True)


def test_largest_fitting_power_of_two():
    calls = []

    def fits(b):
        calls.append(b)
        return b <= 200

    assert accel.largest_fitting_batch(fits, 16, 1024) == 128
    assert calls == [16, 32, 64, 128, 256]  # stops at the first that does not fit
    assert accel.largest_fitting_batch(lambda b: True, 16, 64) == 64  # the cap
    assert accel.largest_fitting_batch(lambda b: False, 16, 64) is None


def test_batch_size_choice():
    cpu = accel.choose_batch_size("cpu", lambda b: True, default=16)
    assert cpu.value == 16  # the CPU keeps the default, whatever fits
    gpu = accel.choose_batch_size("cuda", lambda b: b <= 600, default=16, limit=1024)
    assert gpu.value == 256  # 2 x 256 = 512 fits, 2 x 512 does not
    small = accel.choose_batch_size("cuda", lambda b: False, default=16)
    assert small.value == 16 and "did not fit" in small.reason


def test_prefetch_only_on_cuda():
    assert accel.prefetch_depth("cuda") > 0
    assert accel.prefetch_depth("cpu") == 0


def test_precision_check_against_tolerance():
    ref = np.array([[[0.1, 0.49], [0.9, 0.3]]], np.float32)
    valid = np.ones_like(ref, bool)
    same = accel.precision_within_tolerance(ref, ref + 0.001, valid, 0.5, accel.BF16)
    assert same.ok and same.max_abs_prob == pytest.approx(0.001, abs=1e-6) and same.n_px == 4
    flip = accel.precision_within_tolerance(ref, ref + np.float32(0.015), valid, 0.5, accel.BF16)
    assert flip.flip_fraction == 0.25 and not flip.ok  # 0.49 -> 0.505 crosses the threshold
    far = accel.precision_within_tolerance(ref, ref + 0.05, valid, 0.9, accel.FP16,
                                           max_flip_fraction=1.0)
    assert not far.ok and far.as_dict()["ok"] is False
    masked = valid.copy()
    masked[0, 0, 1] = False  # the flipping pixel is nodata: it does not count
    assert accel.precision_within_tolerance(ref, ref + np.float32(0.015), masked, 0.5, "x").ok
    with pytest.raises(ValueError, match="no valid pixel"):
        accel.precision_within_tolerance(ref, ref, ~valid, 0.5, "x")


def test_onnx_provider_choice():
    both = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert accel.onnx_providers(both, "cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert accel.onnx_providers(both, "auto")[0] == "CUDAExecutionProvider"
    assert accel.onnx_providers(both, "cpu") == ["CPUExecutionProvider"]
    assert accel.onnx_providers(["CPUExecutionProvider"], "auto") == ["CPUExecutionProvider"]


class _FakeLibc:
    """A C library that records mallopt calls and answers ``answer``."""

    def __init__(self, glibc: bool = True, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer
        if glibc:
            self.gnu_get_libc_version = lambda: b"2.36"

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_keep_freed_memory_sets_both_glibc_thresholds():
    libc = _FakeLibc()
    choice = accel.keep_freed_memory(libc)
    assert choice.value is True and "32 MiB" in choice.reason and "256 MiB" in choice.reason
    # both, the mmap threshold first: a fixed trim threshold alone also pins the mmap threshold
    # at its 128 KiB default, which measured 2x slower forward passes
    assert libc.calls == [(-3, 32 << 20), (-1, 256 << 20)]


def test_keep_freed_memory_leaves_other_c_libraries_alone():
    libc = _FakeLibc(glibc=False)
    assert accel.keep_freed_memory(libc).value is False and libc.calls == []
    refused = accel.keep_freed_memory(_FakeLibc(answer=0))
    assert refused.value is False and "refused" in refused.reason


def test_keep_freed_memory_takes_effect_in_this_process():
    # this project's machines run glibc (Debian); the real call must succeed there
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system")
    assert accel.keep_freed_memory().value is True
