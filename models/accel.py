"""Speed choices of the inference and training paths as pure functions of facts about the machine.

Each function takes what it decides on as arguments (the device type, the CPU's flags, a timing,
a ``fits(batch)`` probe) and returns the choice with the reason the manifest records, so every
rule is unit-tested on a CPU; :mod:`models.detectors` and :mod:`models.training.train` gather the
facts (torch, ``/proc/cpuinfo``, a CUDA memory probe) and wire the choices in. No torch here.

The rules (issue 19 items 4 and 5):

- CUDA: autocast to bfloat16 where the GPU supports it, else float16; checked against float32 on
  validation patches with the card's tolerance (:func:`precision_within_tolerance`), float32 when
  the check fails.
- CPU (``precision="auto"``, an opt-in; the scan's CPU default is float32, see
  ``models.detectors.default_cpu_precision``): float32 unless the CPU has native bfloat16
  instructions (``avx512_bf16`` or ``amx_bf16``) *and* a timing at load finds bfloat16 faster
  *and* the tolerance holds. bf16 autocast measured 60x slower than float32 on a CPU without
  them, 1.8x faster on one with them: never assumed.
- Batch size: on CUDA the largest power of two whose forward pass fits in memory (capped); on CPU
  the scan's default (its outputs and speed were measured with it).
- CPU allocator: glibc's malloc keeps freed activations for the next forward pass
  (:func:`keep_freed_memory`, the one function here that acts on the process: through ctypes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

FP32, BF16, FP16 = "float32", "bfloat16", "float16"

# /proc/cpuinfo flags of native bfloat16 arithmetic (AVX-512 BF16 dot products, AMX tiles)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# a reduced-precision option must beat float32 by this factor in the load-time timing (noise margin)
MIN_SPEEDUP = 1.1

# CUDA batch sizes tried by --batch-size auto (powers of two); the cap bounds the pinned host
# buffers and the latency of one batch
AUTO_BATCH_MIN = 16
AUTO_BATCH_MAX = 512
# a batch is kept only if this many times it fits (activation memory of the blend's other work)
AUTO_BATCH_HEADROOM = 2

# default tolerance of a reduced-precision forward against float32 when a card names none
DEFAULT_MAX_ABS_PROB = 0.02  # largest per-pixel probability difference
DEFAULT_MAX_FLIP_FRACTION = 0.001  # share of valid pixels whose class at the threshold flips


@dataclass(frozen=True)
class Choice:
    """A decision and why it was taken (the manifest records both)."""

    value: object
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# CPU capability


def read_cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (the first ``flags`` line of ``/proc/cpuinfo``); empty where the
    file does not exist (macOS, Windows) or has no such line (ARM lists ``Features``)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_capable(flags: Iterable[str]) -> bool:
    """Whether the CPU computes in bfloat16 natively (``avx512_bf16`` or ``amx_bf16``)."""
    flags = set(flags)
    return any(f in flags for f in CPU_BF16_FLAGS)


def choose_cpu_precision(capable: bool, fp32_s: float | None = None, bf16_s: float | None = None,
                         within_tolerance: bool | None = None) -> Choice:
    """float32 or bfloat16 for CPU inference.

    Args:
        capable: :func:`cpu_bf16_capable` of this CPU.
        fp32_s, bf16_s: seconds of the same forward pass in each precision (the timing at load);
            None when not timed (not capable).
        within_tolerance: whether the bfloat16 probabilities are within the card's tolerance.
    """
    if not capable:
        return Choice(FP32, f"no native bfloat16 on this CPU (none of {', '.join(CPU_BF16_FLAGS)})")
    if fp32_s is None or bf16_s is None:
        return Choice(FP32, "bfloat16-capable CPU, not timed")
    timing = f"forward {fp32_s * 1000:.1f} ms float32, {bf16_s * 1000:.1f} ms bfloat16"
    if bf16_s * MIN_SPEEDUP > fp32_s:
        return Choice(FP32, f"bfloat16 not faster at load ({timing})")
    if not within_tolerance:
        return Choice(FP32, f"bfloat16 faster ({timing}) but outside the card's tolerance")
    return Choice(BF16, f"bfloat16-capable CPU, faster at load ({timing}), within the card's tolerance")


# ---------------------------------------------------------------------------------------------
# CUDA


def choose_cuda_precision(bf16_supported: bool, requested: str = "auto") -> Choice:
    """The autocast dtype on a CUDA GPU: ``requested`` (float32/bfloat16/float16) or, for
    ``auto``, the first of :func:`cuda_autocast_candidates`: bfloat16 where supported (Ampere and
    later: no overflow, float32's range) else float16."""
    if requested not in ("auto", FP32, BF16, FP16):
        raise ValueError(f"precision {requested!r}: choose auto, {FP32}, {BF16} or {FP16}")
    if requested != "auto":
        if requested == BF16 and not bf16_supported:
            return Choice(FP16, "bfloat16 was asked for but this GPU does not support it")
        return Choice(requested, "asked for")
    first = cuda_autocast_candidates(bf16_supported)[0]  # one place says the order
    return Choice(first, "CUDA autocast; the GPU supports bfloat16" if first == BF16
                  else "CUDA autocast; no bfloat16 on this GPU")


def cuda_autocast_candidates(bf16_supported: bool) -> tuple[str, ...]:
    """The autocast dtypes ``precision="auto"`` tries on a CUDA GPU, in order, each kept only
    within the card's tolerance: bfloat16 (float32's range, no overflow) where supported, then
    float16 (3 more mantissa bits: closer to float32 where values stay in its range)."""
    return (BF16, FP16) if bf16_supported else (FP16,)


def autocast_dtype(device_type: str, bf16_supported: bool = False, cpu_precision: str = FP32) -> str:
    """The dtype a forward pass runs in on ``device_type``: CUDA autocast (bfloat16 or float16),
    the CPU's chosen precision (:func:`choose_cpu_precision`), float32 on anything else."""
    if device_type == "cuda":
        return str(choose_cuda_precision(bf16_supported).value)
    if device_type == "cpu":
        return cpu_precision
    return FP32


def training_precision(device_type: str, bf16_supported: bool) -> tuple[str, bool]:
    """(autocast dtype, whether a gradient scaler is needed) for training on ``device_type``: AMP
    on CUDA only (bfloat16 without a scaler where supported, else float16 with one); float32 on
    the CPU, whose training stays as it was bit for bit."""
    if device_type != "cuda":
        return FP32, False
    dtype = str(choose_cuda_precision(bf16_supported).value)
    return dtype, dtype == FP16


# ---------------------------------------------------------------------------------------------
# batch size


def largest_fitting_batch(fits: Callable[[int], bool], start: int = AUTO_BATCH_MIN,
                          limit: int = AUTO_BATCH_MAX) -> int | None:
    """The largest power of two in [``start``, ``limit``] for which ``fits(batch)`` holds, trying
    them upwards and stopping at the first that does not fit; None when not even ``start`` fits."""
    best = None
    batch = start
    while batch <= limit:
        if not fits(batch):
            break
        best = batch
        batch *= 2
    return best


def choose_batch_size(device_type: str, fits: Callable[[int], bool] | None, default: int,
                      limit: int = AUTO_BATCH_MAX) -> Choice:
    """``--batch-size auto``: on CUDA the largest power of two from ``default`` up to ``limit`` whose
    forward pass fits ``AUTO_BATCH_HEADROOM`` times over (``fits`` probes one batch); ``default``
    on the CPU, where the outputs and the speed were measured with it, and when nothing larger
    fits."""
    if device_type != "cuda" or fits is None:
        return Choice(default, f"{device_type}: the default batch size")
    best = largest_fitting_batch(lambda b: fits(b * AUTO_BATCH_HEADROOM), start=default,
                                 limit=limit)
    if best is None:
        return Choice(default, f"CUDA: {AUTO_BATCH_HEADROOM} x {default} patches did not fit; "
                               "the default batch size")
    return Choice(best, f"CUDA: the largest power of two <= {limit} of which "
                        f"{AUTO_BATCH_HEADROOM} batches fit in GPU memory")


def prefetch_depth(device_type: str) -> int:
    """Batches read ahead by a background thread while the device computes: 2 on CUDA; 0 on the
    CPU, where reading and the forward pass share the cores (a reader thread measured no gain on
    a 2-core machine)."""
    return 2 if device_type == "cuda" else 0


# ---------------------------------------------------------------------------------------------
# the C allocator on the CPU path

# glibc's malloc: blocks up to this size come from the heap instead of a fresh mmap (32 MiB, the
# largest it accepts on 64-bit); a batch of 16 patches' activations are all smaller
MALLOC_MMAP_THRESHOLD_BYTES = 32 << 20
# and freed memory at the heap's top is given back to the kernel only beyond this (256 MiB)
MALLOC_TRIM_THRESHOLD_BYTES = 256 << 20
# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(libc=None) -> Choice:
    """Have glibc's malloc keep the network's freed activations for the next forward pass.

    By default glibc maps each large block fresh and gives freed memory at the heap's top back to
    the kernel, so every CPU forward pass page-faulted its activations in again: about 2,000
    faults per batch of 16 patches of the U-Net (2.2 million in one 1,000 km2 scan), with the
    pass 20-25 % slower for it and its speed swinging with what else the process had allocated
    (benchmarks/README.md). With both thresholds fixed the faults drop to ~0 and the process keeps
    up to :data:`MALLOC_TRIM_THRESHOLD_BYTES` of freed memory resident. Setting one alone makes it
    worse: a fixed trim threshold also fixes the mmap threshold at its 128 KiB default.

    ``libc``: the C library (default: this process's, through ctypes). Process-wide and
    idempotent; a no-op where the C library is not glibc (macOS, musl). Returns whether it took
    effect and why (the detector's ``describe()`` records it).
    """
    if libc is None:
        import ctypes

        try:
            libc = ctypes.CDLL(None)
        except OSError:
            return Choice(False, "C library not found")
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return Choice(False, "not glibc: malloc left as it is")
    ok = (libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES) == 1)
    if not ok:
        return Choice(False, "glibc refused the malloc thresholds")
    return Choice(True, f"glibc malloc: mmap threshold {MALLOC_MMAP_THRESHOLD_BYTES >> 20} MiB, trim "
                        f"threshold {MALLOC_TRIM_THRESHOLD_BYTES >> 20} MiB (freed activations reused)")


# ---------------------------------------------------------------------------------------------
# tolerance of a reduced-precision forward pass


@dataclass(frozen=True)
class PrecisionCheck:
    """A reduced-precision forward against float32 on the same validation patches."""

    precision: str
    max_abs_prob: float  # largest per-pixel probability difference
    flip_fraction: float  # share of valid pixels whose class at the threshold differs
    n_px: int  # valid pixels compared
    tolerance_max_abs_prob: float
    tolerance_flip_fraction: float

    @property
    def ok(self) -> bool:
        return (self.max_abs_prob <= self.tolerance_max_abs_prob
                and self.flip_fraction <= self.tolerance_flip_fraction)

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def precision_within_tolerance(reference, reduced, valid, threshold: float, precision: str,
                               max_abs_prob: float = DEFAULT_MAX_ABS_PROB,
                               max_flip_fraction: float = DEFAULT_MAX_FLIP_FRACTION) -> PrecisionCheck:
    """Compare probabilities of a reduced-precision forward with float32's over the valid pixels.

    Args:
        reference, reduced: (B, H, W) probabilities (numpy arrays), float32 and reduced precision.
        valid: (B, H, W) bool, the pixels that count.
        threshold: the card's threshold (a pixel "flips" when its class differs).
    """
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)[valid]
    red = np.asarray(reduced, dtype=np.float64)[valid]
    if ref.size == 0:
        raise ValueError("no valid pixel to compare the precisions on")
    diff = float(np.max(np.abs(ref - red)))
    flips = float(np.mean((ref >= threshold) != (red >= threshold)))
    return PrecisionCheck(precision, diff, flips, int(ref.size), max_abs_prob, max_flip_fraction)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime


def onnx_providers(available: Iterable[str], device_type: str) -> list[str]:
    """ONNX Runtime execution providers for ``device_type`` (``cuda``, ``cpu``; ``auto`` counts as
    CUDA when present): the CUDA provider first when asked for and installed, the CPU provider
    always last (the fallback for operators CUDA lacks)."""
    available = list(available)
    if device_type in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
