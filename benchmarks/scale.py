"""Scale benchmark: cost growth with area, peak memory, Dask speedup, a naive baseline, GFLOP/s.

    python -m benchmarks.scale                       # 100 km2, 1,000 km2 and one full S2 tile
    python -m benchmarks.scale --sizes-km2 4 16      # quick check
    python -m benchmarks.scale --json

The test scene is built from the real Sentinel-2 L1C subset of tile 18SVG (../shared/data,
1933 x 1947 px at 10 m): each of the 12 L4S bands is mirrored (reflected tiling, native 10/20/60 m
kept) out to the requested size, up to a full tile (10980 x 10980 px, 12,056 km2). It is real
texture repeated, not a new acquisition. The detector is a U-Net MobileNetV2 on the 12 spectral
bands with random weights (same architecture and cost as the shipped model's encoder, but the scene
has no DEM): this measures the pipeline, not a detector.

Every size runs in a fresh process (`--one`), so its peak RSS is its own: the kernel's high-water
mark of that process's memory (VmHWM), not ru_maxrss, which Linux carries over from the parent
through fork and exec (a child of a 1 GB parent reports at least 1 GB). Ratios, not
absolute times, are the result: the same run measures the model alone, matmul GFLOP/s on the same
cores, and the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tasks.core import defaults

T18SVG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s2_l1c_t18svg_20160112" / "jp2"
FULL_TILE_PX = 10980


def mirrored_band(src_path: Path, dst_path: Path, size_10m: int, res_m: int) -> None:
    """Write ``src`` reflected out to ``size_10m * 10 / res_m`` pixels, block by block."""
    import rasterio
    from rasterio.windows import Window

    n = int(np.ceil(size_10m * 10 / res_m))
    with rasterio.open(src_path) as src:
        data = src.read(1)
        profile = dict(driver="GTiff", width=n, height=n, count=1, dtype="uint16", crs=src.crs,
                       transform=rasterio.Affine(res_m, 0, src.transform.c, 0, -res_m, src.transform.f),
                       nodata=0, tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    h, w = data.shape

    def reflect(idx, length):  # 0..L-1, L-1..0, 0..: seamless mirrored tiling
        period = 2 * length
        m = idx % period
        return np.where(m < length, m, period - 1 - m)

    with rasterio.open(dst_path, "w", **profile) as dst:
        step = 2048
        for r in range(0, n, step):
            rows = reflect(np.arange(r, min(r + step, n)), h)
            for c in range(0, n, step):
                cols = reflect(np.arange(c, min(c + step, n)), w)
                dst.write(data[np.ix_(rows, cols)], 1, window=Window(c, r, len(cols), len(rows)))


def build_scene(folder: Path, size_px: int) -> Path:
    """Mirrored scene of ``size_px`` (10 m) with a catalog; returns the catalog path."""
    import yaml

    from tasks.core.bands import SPECTRAL_BAND_NAMES, get_band

    folder.mkdir(parents=True, exist_ok=True)
    bands = {}
    for band in SPECTRAL_BAND_NAMES:
        out = folder / f"{band}.tif"
        if not out.exists():
            mirrored_band(T18SVG / f"s2_{band}.jp2", out, size_px, int(get_band(band).native_res_m))
        bands[band] = str(out)
    catalog = {"version": 1, "sources": {"mirror": {"kind": "local", "scenes": [
        {"scene_id": f"T18SVG-mirrored-{size_px}", "acquired": "2016-01-12T15:58:00Z",
         "bands": bands, "nodata": 0}]}}, "regions": {}}
    path = folder / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


MARKED_FRACTION = 0.05  # share of the scene the benchmark's random network marks as landslide


def random_checkpoint(folder: Path, encoder: str = "mobilenet_v2") -> Path:
    """A random-weight 12-band U-Net with ``encoder`` (the pipeline's cost, not a detector).

    Its last layer's bias is set so that it marks about :data:`MARKED_FRACTION` of a real
    T18SVG window as landslide: scattered objects, as a detector finds. Unbiased, the random
    network marked 95 % of the scene as a few huge polygons with thousands of holes, and the
    polygon stage measured GEOS simplifying those (more than 10 minutes for a full tile), not a
    scan's work (benchmarks/README.md)."""
    import torch

    import models  # noqa: F401
    from models.checkpoint import InputTransform, ModelCard, resolve_checkpoint, save_checkpoint
    from models.registry import build_model
    from tasks.core.bands import SPECTRAL_BAND_NAMES

    name = "bench-random-12band-5pct" + ("" if encoder == "mobilenet_v2" else f"-{encoder}")
    card_path = folder / f"{name}.json"
    if card_path.exists():
        return card_path
    torch.manual_seed(0)
    model = build_model("Unet", encoder, in_channels=12)
    transform = InputTransform.from_stats([1500.0] * 12, [800.0] * 12)
    with torch.inference_mode():
        x = torch.from_numpy(transform.apply(_t18svg_window(512))).reshape(12, 4, 128, 4, 128)
        logits = model.eval()(x.permute(1, 3, 0, 2, 4).reshape(16, 12, 128, 128))
        model.segmentation_head[0].bias -= torch.quantile(logits.flatten()[::7], 1 - MARKED_FRACTION)
    card = ModelCard(name=name, version="0", arch="Unet", encoder=encoder,
                     bands=list(SPECTRAL_BAND_NAMES),
                     input_transform=transform,
                     threshold=0.5, trained_on={"dataset": "none: random weights (benchmark)",
                                                "split": "none", "file_list_sha256": "0" * 64},
                     training={"epochs": 0, "loss": "none", "seed": 0},
                     description="random weights, benchmark only; not a detector")
    save_checkpoint(model, card, folder)
    return resolve_checkpoint(card_path)


def install_free_network(spec: str) -> None:
    """Make this process's cached detector of ``spec`` a free network
    (:func:`benchmarks.scan.free_network_model`), so the forward costs next to nothing and a scan
    measures everything around the network (benchmark only; the card, bands, input transform and
    batching are the real ones). Nothing is detected, so clean and vectorize measure their
    per-pixel work, not polygon building, which depends on the detections (the random-weight
    U-Net's rows measure that, with about 2.4 % of the scene marked)."""
    from benchmarks.scan import free_network_model
    from models.detectors import cached_detector

    for device in ("auto", "cpu"):
        det = cached_detector(spec, device)
        det.model = free_network_model(len(det.bands), det.channels_last).to(det.device)


def _t18svg_window(size_10m: int) -> np.ndarray:
    """(12, size, size) float32: the top-left corner of the real T18SVG scene on a 10 m grid
    (20 m and 60 m bands repeated), in the contract's band order."""
    import rasterio
    from rasterio.windows import Window

    from tasks.core.bands import SPECTRAL_BAND_NAMES, get_band

    bands = []
    for band in SPECTRAL_BAND_NAMES:
        factor = int(get_band(band).native_res_m) // 10
        n = -(-size_10m // factor)
        with rasterio.open(T18SVG / f"s2_{band}.jp2") as src:
            data = src.read(1, window=Window(0, 0, n, n)).astype(np.float32)
        bands.append(np.repeat(np.repeat(data, factor, 0), factor, 1)[:size_10m, :size_10m])
    return np.stack(bands)


def one_size(size_px: int, workdir: Path, naive: bool, dask_workers: int, block_px: int,
             encoder: str = "mobilenet_v2", free_network: bool = False) -> dict:
    """Scan a mirrored scene of ``size_px``; report times and peak RSS.

    ``dask_workers`` 0: everything in this process (torch on all cores). N > 0: the blocks run on a
    LocalCluster of N single-thread worker processes started here before the clock starts (its
    start-up is reported apart as ``cluster_start_s``); peak RSS is then this process's only.
    ``free_network``: the detector's network is a 1x1 convolution in this process and in every
    worker (:func:`install_free_network`).
    """
    import contextlib

    import rasterio

    from tasks.run.plan import ScanRequest

    catalog = build_scene(workdir / f"scene_{size_px}", size_px)
    ckpt = random_checkpoint(workdir, encoder)
    with rasterio.open(workdir / f"scene_{size_px}" / "B02.tif") as src:
        from rasterio.warp import transform_bounds

        b = src.bounds
        lonlat = transform_bounds(src.crs, "EPSG:4326", b.left + 5, b.top - size_px * 10 + 5,
                                  b.left + size_px * 10 - 5, b.top - 5)
    mode = "naive" if naive else (f"dask{dask_workers}" if dask_workers else "process")
    out = workdir / f"run_{size_px}_{mode}{'_free' if free_network else ''}"
    with contextlib.ExitStack() as stack_ctx:
        address, cluster_start_s = None, None
        if dask_workers:
            from tasks.predict.cluster import local_cluster

            t = time.perf_counter()
            cluster = stack_ctx.enter_context(local_cluster(dask_workers))
            address, cluster_start_s = cluster.scheduler_address, time.perf_counter() - t
            if free_network:
                from distributed import Client

                with Client(address) as client:
                    client.run(install_free_network, str(ckpt))
        if free_network:
            install_free_network(str(ckpt))
        request = ScanRequest(out=str(out), source="mirror", bbox=tuple(lonlat), catalog=str(catalog),
                              detector=str(ckpt), overwrite=True, progress=False, dask_address=address,
                              block_px=block_px)
        result = _timed_scan(request, naive)
        if not naive and not dask_workers and not free_network:
            rate, cpu_per_patch = pure_forward_rate(str(ckpt), min(result["patches"], 400))
            result.update(pure_forward_patches_per_s=rate, pure_forward_cpu_s_per_patch=cpu_per_patch)
    grid = result.pop("grid")
    area_km2 = grid["width"] * grid["height"] * grid["res_m"] ** 2 / 1e6
    return {"size_px": size_px, "area_km2": area_km2, "naive": naive, "dask_workers": dask_workers,
            "encoder": encoder, "free_network": free_network,
            "mode": mode, "cluster_start_s": cluster_start_s, "block_px": block_px, **result,
            "s_per_km2": result["total_s"] / area_km2}


def pure_forward_rate(spec: str, n_patches: int, batch_size: int = 16) -> tuple[float, float]:
    """Patches/s and CPU seconds per patch (all threads) of the scan's detector alone, right after
    the scan in the same process, on ``n_patches`` rounded up to full batches (the scan pads its
    batches), with ``benchmarks.scan.forward_fn``: the part ``Detector.predict`` times. The
    end-to-end ratio divides by this, not by the forward time measured inside the scan: that one
    runs slower per patch (3-19 % in four runs at 1,000 km2: the scan's other work evicts the
    network's weights and activations from the caches, and any thread working beside it takes
    cores from torch's) and would hide that cost as "forward"."""
    from benchmarks.scan import forward_fn
    from models.detectors import cached_detector

    det = cached_detector(spec, "cpu")
    forward = forward_fn(det, len(det.bands), det.patch_size)
    n_batches = max(1, -(-n_patches // batch_size))
    forward(batch_size)  # inputs allocated and the batch shape warmed up outside the timing
    cpu, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(n_batches):
        forward(batch_size)
    seconds = time.perf_counter() - t
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = cpu_after.ru_utime - cpu.ru_utime + cpu_after.ru_stime - cpu.ru_stime
    return n_batches * batch_size / seconds, cpu_s / (n_batches * batch_size)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _timed_scan(request, naive: bool) -> dict:
    """The scan's stages as plain functions, each timed, with each stage's own peak RSS
    (``stage_peak_rss_mb``, where the kernel lets the high-water mark be reset between stages);
    ``naive`` replaces the block inference."""
    from tasks.run import steps
    from tasks.run.plan import plan_scan

    times: dict = {}
    stage_peaks: dict[str, float] = {}
    stage_cpu: dict[str, float] = {}  # CPU seconds of all this process's threads (user + system)
    resettable = _reset_peak_rss()

    def cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def timed(name: str, fn):
        t, c = time.perf_counter(), cpu_s()
        out = fn()
        times[f"{name}_s"] = time.perf_counter() - t
        stage_cpu[name] = cpu_s() - c
        stage_peaks[name] = peak_rss_mb()
        _reset_peak_rss()
        return out

    t0 = time.perf_counter()
    plan = timed("plan", lambda: plan_scan(request))
    work = str(plan.paths.work)
    stack = timed("align", lambda: steps.step_stack(work))
    if naive:
        infer = timed("inference", lambda: naive_inference(stack, plan))
    else:
        infer = timed("inference", lambda: steps.step_infer(work, stack))
    times["model_forward_s"] = infer["model_forward_s"]
    times["patches"] = infer["n_patches"]
    # in one process each patch is predicted once and short batches are padded; on Dask a patch
    # straddling a block border is predicted once per block it touches
    times["forward_passes"] = infer["forward_passes"]
    cleaned = timed("clean", lambda: steps.step_clean(work, infer))

    def outputs() -> dict:  # as in the flow: the COGs in a thread while the polygons are built
        from concurrent.futures import ThreadPoolExecutor

        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as side:
            cogs = side.submit(lambda: (steps.step_rasters(work, infer, cleaned),
                                        time.perf_counter() - t))
            vec = steps.step_vectorize(work, infer, cleaned)
            times["vectorize_s"] = time.perf_counter() - t
            times["rasters_s"] = cogs.result()[1]
        return vec

    vec = timed("outputs", outputs)  # outputs_s: vectorize and rasters side by side
    times["polygons"] = vec["n_polygons"]
    times["total_s"] = time.perf_counter() - t0
    return {**times, "stage_cpu_s": stage_cpu, "stage_peak_rss_mb": stage_peaks if resettable else None,
            "peak_rss_mb": max(stage_peaks.values()) if resettable else peak_rss_mb(), "grid": plan.grid}


def naive_inference(stack: dict, plan) -> dict:
    """The baseline: the whole stack in memory and one full-scene accumulator (no blocks), writing
    the same ``prob.tif`` and ``uncertainty_raw.tif`` as the block-wise step, so that cleaning,
    polygons and COGs then run the same code on both paths."""
    import rasterio

    from models.detectors import cached_detector
    from tasks.core.blend import predict_array
    from tasks.core.files import compressed_like, work_raster_profile
    from tasks.core.stitch import binary_entropy

    t = time.perf_counter()
    with rasterio.open(stack["stack_path"]) as src:
        image = src.read().astype(np.float32, copy=False)
        profile = compressed_like(work_raster_profile(src.profile, dtype="float32", count=1,
                                                      nodata=np.nan, predictor=3, interleave="band"), src)
    with rasterio.open(stack["valid_path"]) as src:
        valid = src.read(1).astype(bool)
    det = cached_detector(plan.request.detector, plan.request.device)
    forward_before = det.forward_s
    prob = predict_array(image, valid, det)
    del image
    paths = plan.paths
    for path, values in ((paths.prob, prob), (paths.uncertainty_raw, binary_entropy(prob))):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(values, 1)
    return {"prob_path": str(paths.prob), "uncertainty_path": str(paths.uncertainty_raw),
            "model_forward_s": det.forward_s - forward_before, "n_patches": None,
            "forward_passes": None, "detector": det.describe(), "seconds": time.perf_counter() - t}


def model_and_matmul(threads: int | None) -> dict:
    """Torch matmul GFLOP/s on these cores, the model's FLOPs per patch, and its forward timed back to
    back (``back_to_back_*``; the report's headline comes from ``model_variants``' round-robin)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import models  # noqa: F401
    from models.accel import keep_freed_memory
    from models.registry import build_model

    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()  # as a detector loaded on the CPU has it (this process loads none)
    model = build_model("Unet", "mobilenet_v2", in_channels=12).eval()
    x = torch.randn(16, 12, 128, 128)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(x[:1])
        flops_per_patch = counter.get_total_flops()
        a = torch.randn(2048, 2048)

        def median_s(fn, reps: int = 7) -> float:
            fn()
            fn()  # warm-up: oneDNN primitives, page faults
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return float(np.median(times))

        # back to back, as a scan runs batches (a matmul between two forwards would evict the
        # model's weights from the caches)
        fwd_s = median_s(lambda: model(x))
        mm_s = median_s(lambda: a @ a)
    patches_s = 16 / fwd_s
    model_gflops = flops_per_patch * patches_s / 1e9
    matmul_gflops = 2 * 2048**3 / mm_s / 1e9
    return {"torch_threads": torch.get_num_threads(), "gflop_per_patch": flops_per_patch / 1e9,
            "back_to_back_patches_per_s": patches_s, "back_to_back_gflops": model_gflops,
            "matmul_gflops": matmul_gflops, "back_to_back_vs_matmul": model_gflops / matmul_gflops}


SCAN_VARIANT = "float32 channels-last, batch 16"  # the scan's configuration on CPU


def model_variants(threads: int | None, rounds: int = 5) -> list[dict]:
    """Forward GFLOP/s of the same model under the CPU options the field tries: batch size,
    channels-last memory format, bfloat16 autocast, torch.compile (inductor). Timed round-robin
    (one batch of each variant per round, median over rounds) so machine noise hits all alike.
    GFLOP/s counts the float32 FLOPs of a patch for every variant (the work done, not the
    arithmetic performed). int8 and ONNX Runtime need calibration data and an accuracy check:
    ``benchmarks/cpu_inference.py`` measures those on a real checkpoint with their F1 change."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import models  # noqa: F401
    from models.registry import build_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("Unet", "mobilenet_v2", in_channels=12).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 12, 128, 128))
    flops_per_patch = counter.get_total_flops()
    channels_last = build_model("Unet", "mobilenet_v2", in_channels=12).eval()
    channels_last.load_state_dict(model.state_dict())
    channels_last = channels_last.to(memory_format=torch.channels_last)

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    variants: list[tuple[str, int, object, torch.Tensor]] = []
    for batch in (4, 16, 64):
        variants.append((f"float32, batch {batch}", batch, model, torch.randn(batch, 12, 128, 128)))
    x16 = torch.randn(16, 12, 128, 128)
    variants.append(("float32 channels-last, batch 16", 16, channels_last,
                     x16.contiguous(memory_format=torch.channels_last)))
    variants.append(("bfloat16 autocast, batch 16", 16, bf16, x16))
    failed: list[dict] = []
    try:
        compiled = torch.compile(model)
        with torch.inference_mode():
            t = time.perf_counter()
            compiled(x16)
            compile_s = time.perf_counter() - t
        variants.append((f"torch.compile (inductor; compiled in {compile_s:.0f} s), batch 16", 16, compiled, x16))
    except Exception as exc:  # no C compiler, unsupported platform: say so in the report
        failed.append({"variant": "torch.compile (inductor), batch 16", "error": f"{type(exc).__name__}: {exc}"[:200]})
    times: list[list[float]] = [[] for _ in variants]
    with torch.inference_mode():
        for _, _, fn, x in variants:
            fn(x)  # warm-up
        for _ in range(rounds):
            for k, (_, _, fn, x) in enumerate(variants):
                t = time.perf_counter()
                fn(x)
                times[k].append(time.perf_counter() - t)
    rows = []
    for (name, batch, _, _), ts in zip(variants, times):
        patches_s = batch / float(np.median(ts))
        rows.append({"variant": name, "patches_per_s": patches_s,
                     "gflops": flops_per_patch * patches_s / 1e9})
    base = next(r for r in rows if r["variant"] == "float32, batch 16")
    for r in rows:
        r["speedup"] = r["patches_per_s"] / base["patches_per_s"]
    return rows + failed


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-km2", type=float, nargs="+", default=[100, 1000, -1],
                   help="scene areas in km2 (-1 = one full Sentinel-2 tile)")
    p.add_argument("--workdir", default=None, help="scenes and runs (default: a temp dir)")
    p.add_argument("--block-px", type=int, default=defaults.BLOCK_PX)
    p.add_argument("--encoder", default="mobilenet_v2",
                   help="encoder of the random-weight 12-band U-Net the scans run (default mobilenet_v2, "
                        "the shipped model's; resnet34 is the source paper's best); the model-alone "
                        "part always measures mobilenet_v2")
    p.add_argument("--workers-at-km2", type=float, default=None,
                   help="area at which 1 vs 2 Dask workers and the naive path are compared "
                        "(default: the second size)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--model-only", action="store_true",
                   help="only the model-alone part: forward GFLOP/s per CPU option vs matmul")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dask-workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--free-network", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-free-network", action="store_true",
                   help="leave out the free-network runs (the pipeline's ceiling without a network)")
    p.add_argument("--pairs", type=int, default=2,
                   help="extra block-wise / naive pairs at the comparison size, in alternating order "
                        "(default 2); the ratio of the fastest of each comes from these and the first two")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="landslide-scale-"))
    if args.one:
        print(json.dumps(one_size(args.one, workdir, args.naive, args.dask_workers, args.block_px,
                                  args.encoder, args.free_network)))
        return 0
    sizes = [FULL_TILE_PX if a < 0 else int(round(np.sqrt(a * 1e6) / 10)) for a in args.sizes_km2]
    common = ["--workdir", str(workdir), "--block-px", str(args.block_px), "--encoder", args.encoder]
    report = {"machine": {"cpus": os.cpu_count()}, "model": model_and_matmul(None), "runs": []}
    m = report["model"]
    m["variants"] = model_variants(None)
    for row in m["variants"]:
        if "gflops" in row:
            row["vs_matmul"] = row["gflops"] / m["matmul_gflops"]
    # the headline is the scan's configuration on CPU (float32 channels-last, batch 16: what
    # models.detectors.load_detector sets up) from the round-robin timing, so it shares the machine's
    # load with the options it is compared to; on a shared host every timing swings (NCHW batch 16:
    # 48-69 % of matmul over seven fresh processes, benchmarks/README.md)
    scan_cfg = next(r for r in m["variants"] if r["variant"] == SCAN_VARIANT)
    m.update(model_patches_per_s=scan_cfg["patches_per_s"], model_gflops=scan_cfg["gflops"],
             model_vs_matmul=scan_cfg["vs_matmul"])
    if args.model_only:
        _print_variants(report, args.json)
        return 0
    for size in sizes:
        report["runs"].append(_child(["--one", str(size), *common]))
    cmp_size = (int(round(np.sqrt(args.workers_at_km2 * 1e6) / 10)) if args.workers_at_km2
                else sizes[min(1, len(sizes) - 1)])
    base = next(r for r in report["runs"] if r["size_px"] == cmp_size)
    one = _child(["--one", str(cmp_size), "--dask-workers", "1", *common])
    two = _child(["--one", str(cmp_size), "--dask-workers", "2", *common])
    naive = _child(["--one", str(cmp_size), "--naive", *common])
    report["runs"] += [one, two, naive]
    # Block-wise against naive, again, in alternating order: on a shared machine the network's own
    # speed swings between runs by more than the two paths differ (16.2 against 11.3 s on the same
    # forward passes in one run), so the fastest of each is compared, as timeit does
    pairs = []
    for k in range(args.pairs):
        order = ("naive", "blockwise") if k % 2 == 0 else ("blockwise", "naive")
        pair = {"first": order[0]}
        for path in order:
            run = _child(["--one", str(cmp_size), *(["--naive"] if path == "naive" else []), *common])
            pair[path] = {key: run[key] for key in ("total_s", "inference_s", "model_forward_s",
                                                    "peak_rss_mb", "stage_peak_rss_mb")}
        pairs.append(pair)
    report["block_vs_naive_pairs"] = pairs
    free = []
    if not args.skip_free_network:
        # the same scene with a network that costs nothing: what the pipeline around the network can
        # feed per second (a GPU's ceiling), in one process and on 2 and N single-thread Dask workers
        n_cpus = len(os.sched_getaffinity(0))
        free.append(_child(["--one", str(cmp_size), "--free-network", *common]))
        for n in sorted({2, n_cpus}):
            free.append(_child(["--one", str(cmp_size), "--free-network", "--dask-workers", str(n),
                                *common]))
        report["free_network_runs"] = free
    # the model alone on the scene's patches, timed in the same process right after the scan:
    # padding, duplicate passes and whatever slows the forward inside the scan count as overhead
    forward_s = base["patches"] / base["pure_forward_patches_per_s"]
    in_scan_forward_s = base["model_forward_s"] * base["patches"] / base["forward_passes"]
    report["ratios"] = {
        "overhead_total_over_forward": base["total_s"] / forward_s,
        "end_to_end_vs_model_throughput": forward_s / base["total_s"],
        "overhead_total_over_forward_inside_scan": base["total_s"] / in_scan_forward_s,
        # the scan's CPU seconds spread perfectly over the cores: the lowest total / forward any
        # overlap of its stages could reach on this machine without doing less work
        "cpu_bound_total_over_forward": (sum(base["stage_cpu_s"].values()) / len(os.sched_getaffinity(0))
                                         / forward_s),
        "speedup_2_over_1_dask_workers": one["total_s"] / two["total_s"],
        "inference_speedup_2_over_1_dask_workers": one["inference_s"] / two["inference_s"],
        "speedup_2_dask_workers_over_1_process": base["total_s"] / two["total_s"],
        "naive_rss_over_blockwise_rss": naive["peak_rss_mb"] / base["peak_rss_mb"],
        "blockwise_wall_over_naive_wall": base["total_s"] / naive["total_s"],
        # the fastest block-wise run over the fastest naive one, of the first two and the pairs
        "blockwise_wall_over_naive_wall_fastest": (
            min([base["total_s"]] + [p["blockwise"]["total_s"] for p in pairs])
            / min([naive["total_s"]] + [p["naive"]["total_s"] for p in pairs])),
        # CPU seconds per 1,000 km2 outside the network, by stage: the inference stage less the
        # network alone's CPU time on the same forward passes
        "non_network_cpu_s_per_1000_km2": non_network_cpu(base),
        "model_gflops_vs_matmul": m["model_vs_matmul"],
        "s_per_km2_by_size": {f"{r['area_km2']:.0f}": r["s_per_km2"]
                              for r in report["runs"] if r["mode"] == "process"},
        "peak_rss_mb_by_size": {f"{r['area_km2']:.0f}": r["peak_rss_mb"]
                                for r in report["runs"] if r["mode"] == "process"},
    }
    if free:
        report["ratios"]["free_network_non_network_cpu_s_per_1000_km2"] = non_network_cpu(free[0])
        report["ratios"]["non_network_cpu_s_per_1000_km2_with_detections"] = with_detections(
            non_network_cpu(free[0]), non_network_cpu(base))
        report["ratios"]["free_network_km2_per_s"] = {
            ("1 process" if r["mode"] == "process" else f"{r['dask_workers']} Dask workers x 1 thread"):
                r["area_km2"] / r["total_s"] for r in free}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"model alone: {m['model_patches_per_s']:.1f} patches/s, {m['model_gflops']:.1f} GFLOP/s "
              f"({m['gflop_per_patch']:.2f} GFLOP/patch) vs matmul {m['matmul_gflops']:.1f} GFLOP/s "
              f"= {100 * m['model_vs_matmul']:.0f}% ({m['torch_threads']} threads)\n")
        _print_variants(report, False)
        print("| area km2 | mode | total s | s/km2 | align s | inference s | forward s | peak RSS MB |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in report["runs"] + free:
            mode = {"naive": "naive (whole scene)", "process": "1 process"}.get(
                r["mode"], f"{r['dask_workers']} Dask worker(s) x 1 thread")
            mode += ", free network" if r.get("free_network") else ""
            print(f"| {r['area_km2']:.0f} | {mode} | {r['total_s']:.1f} | {r['s_per_km2']:.3f} | "
                  f"{r['align_s']:.1f} | {r['inference_s']:.1f} | {r['model_forward_s']:.1f} | "
                  f"{r['peak_rss_mb']:.0f} |")
        print()
        for pair in pairs:
            print(f"- block-wise / naive pair, {pair['first']} first: {pair['blockwise']['total_s']:.1f} s / "
                  f"{pair['naive']['total_s']:.1f} s (network inside {pair['blockwise']['model_forward_s']:.1f}"
                  f" / {pair['naive']['model_forward_s']:.1f} s)")
        for k, v in report["ratios"].items():
            print(f"- {k}: {v if isinstance(v, dict) else round(v, 3)}")
    return 0


def non_network_cpu(run: dict) -> dict:
    """CPU seconds per 1,000 km2 of each stage outside the network, and their total. A real
    network's CPU time (``pure_forward_cpu_s_per_patch`` x forward passes) is taken off the
    inference stage; a free network's costs next to nothing and counts as overhead."""
    per = 1000.0 / run["area_km2"]
    stages = dict(run["stage_cpu_s"])
    if run.get("pure_forward_cpu_s_per_patch"):
        stages["inference"] -= run["pure_forward_cpu_s_per_patch"] * run["forward_passes"]
    out = {stage: cpu * per for stage, cpu in stages.items()}
    out["total"] = sum(out.values())
    return out


def with_detections(free_network: dict, detecting: dict) -> dict:
    """Non-network CPU seconds per 1,000 km2 with the work that depends on what is detected: plan,
    align and inference from the free-network run (its network costs nothing, and the rest of the
    inference stage does not depend on the network's weights), clean and outputs from the random
    U-Net's run of the same scene. The free network detects nothing, so its own clean and outputs
    leave out building, measuring and writing the polygons (2,763 at 1,023 km2)."""
    out = {stage: free_network[stage] for stage in ("plan", "align", "inference")}
    out.update({stage: detecting[stage] for stage in ("clean", "outputs")})
    out["total"] = sum(out.values())
    return out


def _print_variants(report: dict, as_json: bool) -> None:
    m = report["model"]
    if as_json:
        print(json.dumps(m, indent=2))
        return
    print(f"CPU options for the model alone (matmul {m['matmul_gflops']:.1f} GFLOP/s, "
          f"{m['torch_threads']} threads; timed round-robin):\n")
    print("| variant | patches/s | GFLOP/s | vs matmul | speedup |")
    print("|---|---:|---:|---:|---:|")
    for r in m["variants"]:
        if "error" in r:
            print(f"| {r['variant']} | failed: {r['error']} | | | |")
        else:
            print(f"| {r['variant']} | {r['patches_per_s']:.1f} | {r['gflops']:.1f} | "
                  f"{100 * r['vs_matmul']:.0f}% | {r['speedup']:.2f}x |")
    print()


if __name__ == "__main__":
    sys.exit(main())
