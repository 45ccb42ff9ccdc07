"""GPU path benchmark (issue 19): the scan's patch loop on a CUDA GPU, measured in one run.

    python -m benchmarks.gpu                        # on a CUDA machine: Markdown report
    python -m benchmarks.gpu --json > gpu.json      # the same report as JSON
    python -m benchmarks.gpu --device cpu --patches 32 --tile-px 256   # a dry run on a CPU
    python -m benchmarks.gpu --save-scene scene.npz # align the sample once, here ...
    python -m benchmarks.gpu --scene scene.npz      # ... and measure on a machine without the raster
                                                    # stack or ../shared (torch, smp, rasterio, pydantic)

Reports, for the detector as the scan loads it on the device (precision, batch size, read-ahead):

1. **tolerance on real data**: the bundled Iburi sample (``--bbox``) aligned like a scan, blended
   by ``tasks.core.blend`` in float32 and in the detector's precision; the largest probability
   difference and the share of pixels whose class flips, against the card's tolerance;
2. **patches/s** of the scan's patch loop (``blend_patches``: read, pad, forward, stitch) on
   ``--patches`` patches of the sample repeated, with a read-ahead queue of 2 batches and without
   (alternated twice, the faster of each kept), and the **share of wall time spent in the
   forward call** (input copy, compute, output copy; the call waits for the GPU, so this is the
   GPU's busy share as seen from the host, launch overhead included);
3. **a full tile's wall time**: the same loop over a ``--tile-px`` square (default a Sentinel-2
   tile, 10980 px) of the repeated sample, in memory (no disk reads, no alignment, no
   vectorizing: the inference stage alone);
4. **the network alone**: one transformed batch forward repeatedly (copies included), the ceiling the
   loop could reach if reading, padding and stitching cost nothing;
5. on CUDA, **each precision against the CPU's float32** over the whole sample: float32 with and
   without cuDNN's TF32 convolutions, bfloat16 and float16 autocast.

Exits with a one-line ``error:`` and status 2 when ``--device cuda`` is asked for and no CUDA GPU
is present; ``--device cpu`` runs the same measurements on the CPU (``tests`` use it as a smoke
test with a few patches). No timing thresholds: numbers and ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from flows import options  # noqa: E402

SENTINEL2_TILE_PX = 10980  # a 109.8 km tile at 10 m
QUEUE_DEPTH = 2  # the read-ahead depth compared with none (models.accel.prefetch_depth on CUDA)
DEFAULT_BBOX = "141.95,42.72,141.975,42.74"  # 2 x 2.2 km of the bundled Iburi sample


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    options.add_checkpoint(p, help="detector (default: the shipped default checkpoint)")
    options.add_device(p, default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    options.add_batch_size(p, default="auto")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16", "float16"],
                   help="the forward's precision: auto (on a CPU: bfloat16 only if native, faster "
                        "and within the tolerance) or forced (default: the scan's choice)")
    p.add_argument("--patches", type=int, default=4096, help="patches for the patches/s loop (4096)")
    p.add_argument("--tile-px", type=int, default=SENTINEL2_TILE_PX,
                   help=f"side of the full-tile run in pixels ({SENTINEL2_TILE_PX}); 0 skips it")
    options.add_bbox(p, default=options.parse_bbox(DEFAULT_BBOX),
                     help=f"the bundled sample's area used as real input ({DEFAULT_BBOX})")
    options.add_overlap(p)
    p.add_argument("--channels-last", action="store_true",
                   help="weights and inputs in NHWC memory order (default: the scan's choice, NCHW on CUDA)")
    p.add_argument("--scene", type=Path,
                   help="the sample already aligned (an .npz of --save-scene) instead of aligning it here")
    p.add_argument("--save-scene", type=Path, metavar="NPZ",
                   help="align the sample over --bbox, write it as NPZ and exit (no detector run)")
    p.add_argument("--free-network", action="store_true",
                   help="replace the network by a 1x1 convolution that costs next to nothing: the "
                        "loop's patches/s is then what the host side (reading, stacking, input "
                        "transform, copies, stitching) can feed a device")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


class RepeatedScene:
    """A ``tasks.core.blend.PatchReader`` over an in-memory scene repeated (wrapped) to any size:
    real pixels for a large area without holding it in memory."""

    def __init__(self, image: np.ndarray, valid: np.ndarray):
        self.image, self.valid = image, valid
        self._bands: dict[tuple[int, ...], np.ndarray] = {}

    def read(self, windows, band_indexes, size):
        """Patches as ``tasks.core.tiling.read_patches`` gives them: a window inside the scene is
        sliced (a copy, like a file read), one that wraps is gathered."""
        from tasks.core.tiling import Patch, pad_to

        h0, w0 = self.valid.shape
        key = tuple(int(i) for i in band_indexes)
        bands = self._bands.get(key)
        if bands is None:  # the detector's channels, selected once
            bands = self._bands[key] = np.ascontiguousarray(self.image[list(key)], dtype=np.float32)
        patches = []
        for w in windows:
            r, c, h, wd = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
            if r % h0 + h <= h0 and c % w0 + wd <= w0:  # no wrap: slices
                rs, cs = slice(r % h0, r % h0 + h), slice(c % w0, c % w0 + wd)
                ok, data = self.valid[rs, cs], bands[:, rs, cs]
            else:
                rows, cols = np.arange(r, r + h) % h0, np.arange(c, c + wd) % w0
                ok, data = self.valid[np.ix_(rows, cols)], bands[:, rows][:, :, cols]
            if not ok.any():
                continue
            pad_ok = np.zeros((size, size), dtype=bool)
            pad_ok[:ok.shape[0], :ok.shape[1]] = ok
            patches.append(Patch(w, pad_to(np.array(data, dtype=np.float32), size), pad_ok))
        return patches


def sample_scene(bbox, work: Path, bands) -> tuple[np.ndarray, np.ndarray]:
    """The bundled Iburi sample aligned over ``bbox`` like a scan: (14, H, W) float32 physical
    units (NaN = nodata) and (H, W) valid."""
    import rasterio
    from shapely.geometry import box

    from tasks.core.grid import make_grid
    from tasks.raster.align import build_stack
    from tasks.sources.catalog import load_catalog
    from tasks.sources.local import resolve_local_inputs

    repo = Path(__file__).resolve().parents[1]
    catalog = load_catalog(repo / "data_catalog.yaml")
    spectral = tuple(b for b in bands if b.startswith("B"))
    inputs = resolve_local_inputs(catalog, "iburi-2018-local", spectral)
    stack = build_stack(inputs, make_grid(box(*bbox)), work, tuple(bands))
    with rasterio.open(stack.stack_path) as src, rasterio.open(stack.valid_path) as v:
        return src.read().astype(np.float32), v.read(1).astype(bool)


def save_scene(path: Path, bbox, bands) -> dict:
    """Align the sample over ``bbox`` for a detector reading ``bands`` and write it (compressed)
    for ``--scene``: the 14 contract channels and the valid mask of ``bands``."""
    from tasks.core.bands import BAND_NAMES

    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        image, valid = sample_scene(bbox, Path(tmp), bands)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, image=image, valid=valid, bands=np.asarray(bands), bbox=np.asarray(bbox))
    return {"scene": str(path), "channels": list(BAND_NAMES), "bands": list(bands), "bbox": list(bbox),
            "area_px": list(valid.shape)}


def load_scene(path: Path, bands) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A scene of :func:`save_scene`: (image (14, H, W), valid, bbox). Its valid mask is that of the
    bands it was aligned for, so they must be the detector's."""
    with np.load(path) as z:
        saved = [str(b) for b in z["bands"]]
        if saved != list(bands):
            raise ValueError(f"{path}: aligned for the bands {','.join(saved)}, the detector reads "
                             f"{','.join(bands)} (write one for it with --save-scene --detector ...)")
        return z["image"].astype(np.float32, copy=False), z["valid"].astype(bool), tuple(z["bbox"].tolist())


def run_loop(detector, reader, height: int, width: int, overlap: int, batch_size: int) -> dict:
    """The scan's patch loop over a ``height`` x ``width`` area in one block: wall, forward and
    patch counts."""
    from rasterio.windows import Window

    from tasks.core.blend import blend_patches
    from tasks.core.tiling import iter_windows

    windows = list(iter_windows(height, width, detector.patch_size, overlap))
    forward_before = detector.forward_s
    t0 = time.perf_counter()
    prob, _, predicted, n_forward = blend_patches(reader, detector, Window(0, 0, width, height),
                                                  windows, overlap, batch_size)
    wall_s = time.perf_counter() - t0
    forward_s = detector.forward_s - forward_before
    return {"area_px": [height, width], "patches": len(predicted), "forward_passes": n_forward,
            "wall_s": wall_s, "forward_s": forward_s, "forward_share": forward_s / wall_s,
            "patches_per_s": len(predicted) / wall_s, "prob": prob}


def precision_table(spec: str, device: str, reader, h: int, w: int, overlap: int, batch: int,
                    threshold: float, tol) -> list[dict]:
    """Each precision on ``device`` against the CPU's float32 over the whole sample (the real
    reference: TF32 is a GPU's float32 shortcut): float32 with cuDNN's TF32 convolutions (torch's
    default), float32 without, bfloat16 and float16 autocast."""
    import torch

    from models.accel import precision_within_tolerance
    from models.detectors import load_detector

    ref = run_loop(load_detector(spec, "cpu", precision="float32"), reader, h, w, overlap, batch)["prob"]
    rows = []
    tf32_default = torch.backends.cudnn.allow_tf32
    try:
        for precision, tf32 in (("float32", True), ("float32", False), ("bfloat16", None), ("float16", None)):
            torch.backends.cudnn.allow_tf32 = tf32_default if tf32 is None else tf32
            det = load_detector(spec, device, precision=precision)
            run_loop(det, reader, h, w, overlap, batch)  # warm-up (cuDNN picks its kernels)
            got = run_loop(det, reader, h, w, overlap, batch)
            ok = np.isfinite(ref) & np.isfinite(got["prob"])
            check = precision_within_tolerance(ref[None], got["prob"][None], ok[None], threshold, precision,
                                               tol.max_abs_prob, tol.max_flip_fraction).as_dict()
            rows.append({**check, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
                         "patches_per_s": got["patches_per_s"], "forward_s": got["forward_s"]})
    finally:
        torch.backends.cudnn.allow_tf32 = tf32_default
    return rows


def forward_only(detector, batch_size: int, repeats: int = 10) -> dict | None:
    """The network alone: ``repeats`` forward passes of one batch as ``ModelDetector.predict``
    times them (``benchmarks.scan.forward_fn``: host-to-device copy, compute in the detector's
    precision, probabilities back): the patches/s the patch loop could reach if reading, padding
    and stitching cost nothing."""
    from benchmarks.scan import forward_fn

    members = getattr(detector, "members", None) or [detector]
    if not hasattr(members[0], "forward_probs"):
        return None
    forwards = [forward_fn(m, m.card.in_channels, m.patch_size) for m in members]
    for forward in forwards:  # warm-up, inputs prepared
        forward(batch_size)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for forward in forwards:
            forward(batch_size)
    wall_s = time.perf_counter() - t0
    return {"batches": repeats, "batch_size": batch_size, "wall_s": wall_s,
            "patches_per_s": repeats * batch_size / wall_s}


def side_for(patches: int, patch_px: int, overlap: int) -> int:
    """The side (px) of a square area with at least ``patches`` patch windows."""
    per_side = max(1, math.ceil(math.sqrt(patches)))
    return (per_side - 1) * (patch_px - overlap) + patch_px


def run_benchmark(args: argparse.Namespace) -> dict:
    import torch

    from models.accel import precision_within_tolerance
    from models.checkpoint import InferenceTolerance
    from models.detectors import DEFAULT_CHECKPOINT, auto_batch_size, load_detector

    spec = args.detector or DEFAULT_CHECKPOINT
    channels_last = True if args.channels_last else None
    t0 = time.perf_counter()
    detector = load_detector(spec, args.device, channels_last=channels_last, precision=args.precision)
    load_s = time.perf_counter() - t0
    reference = load_detector(spec, args.device, channels_last=channels_last, precision="float32")
    if args.free_network:  # after the load-time precision check, which ran the real network
        from benchmarks.scan import free_network_model

        for det in (detector, reference):
            det.model = free_network_model(len(det.bands), det.channels_last).to(det.device)
    batch = (int(auto_batch_size(detector).value) if args.batch_size == "auto" else int(args.batch_size))
    bbox = args.bbox
    if args.scene is not None:
        image, valid, bbox = load_scene(args.scene, detector.bands)
    else:
        with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
            image, valid = sample_scene(args.bbox, Path(tmp), detector.bands)
    reader = RepeatedScene(image, valid)
    h, w = valid.shape

    # 1. tolerance on real data (warms both detectors up, every batch shape included)
    ref = run_loop(reference, reader, h, w, args.overlap_px, batch)
    got = run_loop(detector, reader, h, w, args.overlap_px, batch)
    ok = np.isfinite(ref["prob"]) & np.isfinite(got["prob"])
    members = getattr(detector, "members", None) or [detector]
    card = getattr(members[0], "card", None)
    tol = (getattr(card, "inference_tolerance", None) or InferenceTolerance())
    check = precision_within_tolerance(ref["prob"][None], got["prob"][None], ok[None],
                                       detector.threshold, getattr(detector, "precision", "n/a"),
                                       tol.max_abs_prob, tol.max_flip_fraction).as_dict()

    # 2. patches/s without and with the read-ahead queue (the GPU path's depth, on any device),
    # alternated twice and the faster of each kept, so warm-up and load drift hit both alike
    side = side_for(args.patches, detector.patch_size, args.overlap_px)
    loaded_depth = getattr(detector, "prefetch_batches", 0)
    runs: dict[int, list[dict]] = {0: [], QUEUE_DEPTH: []}
    for depth in (0, QUEUE_DEPTH, 0, QUEUE_DEPTH):
        detector.prefetch_batches = depth
        runs[depth].append(run_loop(detector, reader, side, side, args.overlap_px, batch))
    detector.prefetch_batches = loaded_depth
    without_queue = min(runs[0], key=lambda r: r["wall_s"])
    with_queue = min(runs[QUEUE_DEPTH], key=lambda r: r["wall_s"])

    # 3. a full tile, as the scan would run it on this device
    tile = (run_loop(detector, reader, args.tile_px, args.tile_px, args.overlap_px, batch)
            if args.tile_px else None)

    network = forward_only(detector, batch)
    # the precisions of the real network (precision_table loads its own detectors): not part of a
    # free-network report
    precisions = (precision_table(spec, args.device, reader, h, w, args.overlap_px, batch, detector.threshold,
                                  tol) if str(args.device).startswith("cuda") and not args.free_network
                  else None)
    describe = detector.describe()
    gpu = None
    if detector_device(detector).startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(detector_device(detector)))
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    strip = lambda r: {k: v for k, v in r.items() if k != "prob"}  # noqa: E731
    return {
        "detector": describe.get("ref", spec), "free_network": bool(args.free_network),
        "device": detector_device(detector), "gpu": gpu,
        "precision": describe.get("precision"), "precision_reason": describe.get("precision_reason"),
        "precision_check_at_load": describe.get("precision_check"),
        "batch_size": batch, "batch_size_choice": describe.get("batch_size_choice"),
        "prefetch_batches": loaded_depth, "detector_load_s": load_s,
        "memory_format": describe.get("memory_format"),
        "tolerance_on_sample": {**check, "bbox": list(bbox), "area_px": [h, w]},
        "loop": strip(with_queue), "loop_without_queue": strip(without_queue),
        "queue_speedup": without_queue["wall_s"] / with_queue["wall_s"],
        "read_ahead_same_bits": bool(np.array_equal(with_queue["prob"], without_queue["prob"],
                                                    equal_nan=True)),
        "tile": strip(tile) if tile else None, "network_alone": network,
        "precisions_against_cpu_float32": precisions,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }


def detector_device(detector) -> str:
    members = getattr(detector, "members", None) or [detector]
    dev = getattr(members[0], "device", None)
    if dev is not None:
        return str(dev)
    provider = getattr(members[0], "provider", "")
    return "cuda" if provider == "CUDAExecutionProvider" else "cpu"


def markdown(r: dict) -> str:
    loop, tile, tol = r["loop"], r["tile"], r["tolerance_on_sample"]
    lines = [
        f"# GPU path: {r['detector']} on {r['device']}" + (f" ({r['gpu']['name']})" if r["gpu"] else "")
        + (", free network (the host side's ceiling)" if r.get("free_network") else ""),
        "",
        f"- precision: {r['precision']} ({r['precision_reason']}); memory format {r['memory_format']}",
        f"- batch size: {r['batch_size']}" + (f" ({r['batch_size_choice']['reason']})"
                                             if r["batch_size_choice"] else ""),
        f"- read-ahead as loaded: {r['prefetch_batches']} batches",
        f"- tolerance on the sample ({tol['area_px'][0]} x {tol['area_px'][1]} px): max |dp| "
        f"{tol['max_abs_prob']:.4f} (<= {tol['tolerance_max_abs_prob']}), class flips "
        f"{100 * tol['flip_fraction']:.4f} % (<= {100 * tol['tolerance_flip_fraction']:.4f} %): "
        f"{'ok' if tol['ok'] else 'OUTSIDE'}",
        "",
        "| run | patches | wall s | patches/s | forward share of wall |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [(f"patch loop, read-ahead {QUEUE_DEPTH} batches", loop),
            ("patch loop, no read-ahead", r["loop_without_queue"])]
    if tile:
        rows.append((f"full tile {tile['area_px'][0]} px", tile))
    for name, x in rows:
        lines.append(f"| {name} | {x['patches']} | {x['wall_s']:.2f} | {x['patches_per_s']:.1f} | "
                     f"{100 * x['forward_share']:.0f} % |")
    lines += ["", f"read-ahead speed-up: {r['queue_speedup']:.2f}x "
                  f"({'same' if r['read_ahead_same_bits'] else 'DIFFERENT'} bits with and without)"]
    if r.get("network_alone"):
        n = r["network_alone"]
        lines.append(f"network alone (batch {n['batch_size']}, copies included): "
                     f"{n['patches_per_s']:.1f} patches/s")
    if r.get("precisions_against_cpu_float32"):
        lines += ["", "| on the device, against the CPU's float32 (whole sample) | max abs(dp) | class flips "
                      "| within the card's tolerance | patches/s |", "|---|---:|---:|---|---:|"]
        for x in r["precisions_against_cpu_float32"]:
            name = x["precision"] + (f" (cuDNN TF32 {'on' if x['cudnn_tf32'] else 'off'})"
                                     if x["precision"] == "float32" else "")
            lines.append(f"| {name} | {x['max_abs_prob']:.5f} | {100 * x['flip_fraction']:.4f} % | "
                         f"{'yes' if x['ok'] else 'no'} | {x['patches_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(options.join_negative_values(argv))
    if args.save_scene is not None:
        from models.detectors import DEFAULT_CHECKPOINT, load_detector

        try:
            bands = load_detector(args.detector or DEFAULT_CHECKPOINT, "cpu").bands
            print(json.dumps(save_scene(args.save_scene, args.bbox, tuple(bands))))
        except Exception as exc:  # the boundary: one line, no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if str(args.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("error: benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False "
                  "here); use --device cpu --patches 32 --tile-px 256 for a dry run", file=sys.stderr)
            return 2
    try:
        report = run_benchmark(args)
    except Exception as exc:  # the boundary: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
