"""Benchmark of one scan on the bundled sample: seconds per stage, model throughput, overhead ratio.

    python -m benchmarks.scan                       # Markdown table, 3 repeats, median
    python -m benchmarks.scan --json --repeat 5     # the full report as JSON
    python -m benchmarks.scan --bbox 141.95,42.72,141.965,42.735 --repeat 1

Everything is measured in one process, so the ratios (total / model forward, inference stage /
model forward) stay meaningful on a noisy machine even when the absolute seconds do not
(ratios in one run, never timing thresholds). The stages are the plain
functions of ``tasks.run.steps`` called directly (the same functions the Prefect flow wraps), so
their timings carry no orchestration cost; ``--prefect`` also times the Prefect flow end to end and
reports its overhead separately.

Per repeat, the pipeline runs once and then a *pure forward* loop runs the detector alone on as many
random patches as the pipeline predicted (same batch size, same channel count, after a warm-up), so
"model alone" and "model inside the pipeline" are measured back to back under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

# Offline machines: no hub downloads, no telemetry (../shared/TOOLCHAIN.md). Before torch/prefect.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402

from flows import options  # noqa: E402
from models.detectors import DEFAULT_CHECKPOINT, INDEX_DETECTOR, load_detector  # noqa: E402
from tasks.run import steps  # noqa: E402

STAGES = ("plan", "align", "inference", "clean", "vectorize", "rasters", "finish")
STAGE_HELP = {
    "plan": "validate the request, resolve inputs, load the detector card + weights, write plan.json",
    "align": "warp bands + DEM + slope onto the 10 m UTM grid; write stack.tif and valid.tif",
    "inference": "load the detector, tile, predict in batches, stitch; write prob + uncertainty",
    "clean": "threshold, morphology, minimum area; write mask_raw.tif",
    "vectorize": "mask -> polygons with attributes + footprint -> landslides.gpkg",
    "rasters": "probability / uncertainty / mask COGs",
    "finish": "manifest.json and the atomic publish of the run folder",
    "total": "wall clock of all stages in sequence",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scan",
        description="Time one scan stage by stage, the detector alone, and their ratio, in one "
                    "process. Reports medians over --repeat runs.")
    options.add_region(parser, default="iburi-2018", help="region of data_catalog.yaml (iburi-2018)")
    options.add_bbox(parser, help="restrict the region to this EPSG:4326 box")
    options.add_catalog(parser)
    options.add_checkpoint(parser, help=f"checkpoint card name/path or 'index' (default: "
                                        f"{DEFAULT_CHECKPOINT} when its card is in models/checkpoints, "
                                        "else 'index')")
    options.add_device(parser)
    options.add_batch_size(parser)
    options.add_overlap(parser)
    parser.add_argument("--repeat", type=int, default=3, help="pipeline runs; medians are reported (3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: all cores available to the process)")
    parser.add_argument("--prefect", action="store_true",
                        help="also run the Prefect flow twice (cold: starts the ephemeral server; "
                             "warm) and report its overhead over the plain stages")
    parser.add_argument("--out", metavar="DIR",
                        help="work folder for the runs (default: a temporary folder, removed after)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def default_detector() -> tuple[str, str]:
    """The detector spec to benchmark when none is given, and why it was chosen."""
    from models.checkpoint import CHECKPOINT_DIR

    if (CHECKPOINT_DIR / f"{DEFAULT_CHECKPOINT}.json").is_file():
        return DEFAULT_CHECKPOINT, "the default: the shipped checkpoint"
    return INDEX_DETECTOR, (f"the default: the weights-free index rule, because "
                            f"{DEFAULT_CHECKPOINT}.json is not in {CHECKPOINT_DIR}; the 'model' "
                            "numbers below are for the rule")


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


def run_pipeline(request: dict) -> dict:
    """Run every scan stage once, in order (rasters beside vectorize, as the flow does), timing each
    around its call.

    Returns:
        ``{"stages_s": {stage: s, ..., "total": s}, "manifest": ..., "stack": ..., "infer": ...,
        "cleaned": ..., "vectors": ..., "finish": ...}`` (the steps' own return values).
    """
    stages: dict[str, float] = {}
    wall_started = time.time()  # step_finish records the manifest's total from this
    t_start = time.perf_counter()
    work, stages["plan"] = _timed(steps.step_plan, request)
    stack, stages["align"] = _timed(steps.step_stack, work)
    infer, stages["inference"] = _timed(steps.step_infer, work, stack)
    cleaned, stages["clean"] = _timed(steps.step_clean, work, infer)
    # as in the flow, the COGs are written in a thread while the polygons are built: each stage's
    # time is its own wall clock, the two overlap
    with ThreadPoolExecutor(max_workers=1) as side:
        rasters_job = side.submit(_timed, steps.step_rasters, work, infer, cleaned)
        vectors, stages["vectorize"] = _timed(steps.step_vectorize, work, infer, cleaned)
        rasters, stages["rasters"] = rasters_job.result()
    finish, stages["finish"] = _timed(steps.step_finish, work, stack, infer, cleaned, vectors,
                                      rasters, wall_started)
    stages["total"] = time.perf_counter() - t_start
    manifest = json.loads((Path(finish["out"]) / "manifest.json").read_text())
    return {"stages_s": stages, "manifest": manifest, "stack": stack, "infer": infer, "cleaned": cleaned,
            "vectors": vectors, "finish": finish}


def free_network_model(n_bands: int, channels_last: bool) -> "torch.nn.Module":  # noqa: F821
    """A network that costs next to nothing (benchmark only): a 1x1 convolution from the bands to
    one logit with zero weights and bias -4 (p = 0.018 everywhere, so nothing is detected), in the
    memory order the detector feeds it. Put in place of a detector's network, a run measures
    everything around the network."""
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(n_bands, 1, kernel_size=1).eval()
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-4.0)
    return conv.to(memory_format=torch.channels_last) if channels_last else conv


def forward_fn(detector: Any, n_channels: int, size: int) -> Callable[[int], None]:
    """A function running the detector's timed core on ``b`` random patches, inputs prepared ahead.

    For a network this is exactly what ``ModelDetector.predict`` times: ``forward_probs`` (the copy
    to the device, the forward in the detector's precision, sigmoid, the copy back) on an input
    already in the model's memory order; the input transform and nodata fill are not part of it
    either way.
    """
    if hasattr(detector, "forward_probs"):
        gen = np.random.default_rng(0)
        inputs: dict[int, np.ndarray] = {}

        def forward(b: int) -> None:
            if b not in inputs:  # normalized network input, in the buffer layout predict uses
                shape = (b, n_channels, size, size)
                x = detector._input_buffer(shape)
                x[...] = gen.standard_normal(shape, dtype=np.float32)
                inputs[b] = x
            detector.forward_probs(inputs[b])

        return forward

    rng = np.random.default_rng(0)
    arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def predict(b: int) -> None:
        if b not in arrays:
            # physical-unit-like values: reflectance x 10000 and slope in degrees
            data = rng.uniform(0, 3000, (b, n_channels, size, size)).astype(np.float32)
            data[:, -1] = rng.uniform(0, 60, (b, size, size))
            arrays[b] = (data, np.ones((b, size, size), dtype=bool))
        detector.predict(*arrays[b])

    return predict


def time_pure_forward(forward: Callable[[int], None], n_patches: int, batch_size: int) -> float:
    """Seconds for the detector alone on ``n_patches`` patches in batches of ``batch_size``."""
    sizes = [batch_size] * (n_patches // batch_size)
    if n_patches % batch_size:
        sizes.append(n_patches % batch_size)
    for b in sorted(set(sizes)):  # allocate inputs and warm up every batch shape outside the timing
        forward(b)
    t0 = time.perf_counter()
    for b in sizes:
        forward(b)
    _sync()
    return time.perf_counter() - t0


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _machine(threads: int, device: str) -> dict:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_threads_requested": threads,
        "torch_version": torch.__version__,
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m_before": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def run_benchmark(args: argparse.Namespace) -> dict:
    """Run the benchmark described by parsed ``args``; return the report (a JSON-able dict)."""
    import torch

    from tasks.core.errors import InputError

    if args.repeat < 1:
        raise InputError(f"--repeat must be >= 1, got {args.repeat}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores or 1
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)

    if args.detector:
        spec, choice = args.detector, "given with --detector"
    else:
        spec, choice = default_detector()

    # Load once outside the timings: the warm-up, and the model's load time on its own.
    detector, load_s = _timed(load_detector, spec, args.device)
    device = str(getattr(detector, "device", "cpu"))
    n_channels, size = len(detector.bands), detector.patch_size
    forward = forward_fn(detector, n_channels, size)
    forward(args.batch_size)
    _sync()
    machine = _machine(threads, device)

    temp_out = args.out is None
    out_root = Path(tempfile.mkdtemp(prefix="landslide-bench-") if temp_out else args.out)
    runs: list[dict] = []
    try:
        for i in range(args.repeat):
            request = {"out": str(out_root / f"run{i + 1}"), "region": args.region,
                       "bbox": args.bbox, "catalog": args.catalog, "detector": spec,
                       "device": args.device, "batch_size": args.batch_size,
                       "overlap_px": args.overlap_px, "overwrite": True, "progress": False,
                       "run_id": f"bench-run{i + 1}"}
            run = run_pipeline(request)
            run["pure_forward_s"] = time_pure_forward(forward, run["infer"]["n_patches"],
                                                      args.batch_size)
            runs.append(run)
        prefect = _run_prefect(args, spec, out_root, runs) if args.prefect else None
    finally:
        if temp_out:
            shutil.rmtree(out_root, ignore_errors=True)
    machine["load_avg_1m_after"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return _report(args, spec, choice, detector, load_s, machine, runs, prefect,
                   None if temp_out else str(out_root))


def _run_prefect(args: argparse.Namespace, spec: str, out_root: Path, runs: list[dict]) -> dict:
    """Time the Prefect flow end to end, cold (ephemeral server start) then warm."""
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from flows.scan import scan_flow

    options = {"catalog": args.catalog, "device": args.device, "batch_size": args.batch_size,
               "overlap_px": args.overlap_px, "overwrite": True, "progress": False}
    steps_total = statistics.median(r["stages_s"]["total"] for r in runs)
    result: dict[str, Any] = {"steps_total_median_s": steps_total}
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        flow_result = scan_flow(out=str(out_root / f"prefect-{label}"), region=args.region,
                                bbox=args.bbox, detector=spec,
                                options={**options, "run_id": f"bench-prefect-{label}"})
        wall = time.perf_counter() - t0
        inside = flow_result["timings"]["total_s"]
        result[label] = {"wall_s": wall, "inside_flow_s": inside,
                         "outside_flow_s": wall - inside,
                         "overhead_s": wall - steps_total,
                         "overhead_ratio": _ratio(wall, steps_total)}
    return result


def _report(args: argparse.Namespace, spec: str, choice: str, detector: Any, load_s: float,
            machine: dict, runs: list[dict], prefect: dict | None, out: str | None) -> dict:
    last = runs[-1]
    grid = last["manifest"]["grid"]
    width, height, res_m = int(grid["width"]), int(grid["height"]), float(grid["res_m"])
    stages_all = {s: [r["stages_s"][s] for r in runs] for s in (*STAGES, "total")}
    stages = {s: _median(v) for s, v in stages_all.items()}
    n_patches = int(last["infer"]["n_patches"])
    per_run = []
    n_passes = int(last["infer"]["forward_passes"])
    for r in runs:
        # the ratios divide by the model alone on the scene's patches (the pure loop after the
        # run), so padded batches and whatever slows the network inside the scan count as
        # overhead; the forward measured inside the scan is its patches' share of the passes
        # (every pass is padded to batch_size patches)
        fwd = r["infer"]["model_forward_s"] * r["infer"]["n_patches"] / r["infer"]["forward_passes"]
        pure = r["pure_forward_s"]
        per_run.append({
            "total_s": r["stages_s"]["total"], "inference_s": r["stages_s"]["inference"],
            "model_forward_s": fwd, "pure_forward_s": pure,
            "overhead_ratio": _ratio(r["stages_s"]["total"], pure),
            "inference_overhead_ratio": _ratio(r["stages_s"]["inference"], pure),
            "forward_vs_pure_ratio": _ratio(fwd, pure),
        })
    model_forward_s = _median([p["model_forward_s"] for p in per_run])
    pure_forward_s = _median([p["pure_forward_s"] for p in per_run])
    counts = last["finish"]["counts"]
    return {
        "benchmark": "scan",
        "region": args.region,
        "bbox": args.bbox,
        "detector": {"spec": spec, "choice": choice, "ref": detector.ref,
                     "kind": "model" if hasattr(detector, "model") else "index",
                     "bands": list(detector.bands), "load_s": load_s},
        "params": {"batch_size": args.batch_size, "overlap_px": args.overlap_px,
                   "repeat": args.repeat, "prefect": bool(args.prefect)},
        "machine": machine,
        "grid": {"width_px": width, "height_px": height, "pixels": width * height, "res_m": res_m,
                 "km2": width * height * res_m * res_m / 1e6, "crs": grid["crs"],
                 "valid_fraction": last["stack"]["valid_fraction"]},
        "stages_s": stages,
        "stages_s_all": stages_all,
        "inference": {
            "patches": n_patches,
            "patches_skipped_nodata": int(last["infer"]["n_skipped"]),
            "forward_passes": n_passes,
            "model_forward_s": model_forward_s,
            "pure_forward_s": pure_forward_s,
            "patches_per_s_model_alone": _ratio(n_patches, pure_forward_s or 0.0),
            "patches_per_s_model_in_pipeline": _ratio(n_patches, model_forward_s or 0.0),
            "patches_per_s_end_to_end": _ratio(n_patches, stages["total"]),
        },
        "ratios": {
            "overhead_ratio": _median([p["overhead_ratio"] for p in per_run]),
            "inference_overhead_ratio": _median([p["inference_overhead_ratio"] for p in per_run]),
            "forward_vs_pure_ratio": _median([p["forward_vs_pure_ratio"] for p in per_run]),
        },
        "per_run": per_run,
        "counts": counts,
        "prefect": prefect,
        "out": out,
    }


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def format_markdown(report: dict) -> str:
    """The report as Markdown: stage table, then throughput and ratios."""
    m, g, inf, r, st = (report["machine"], report["grid"], report["inference"], report["ratios"],
                        report["stages_s"])
    det = report["detector"]
    lines = [
        f"## Scan benchmark: {report['region']}" + (f" bbox {report['bbox']}" if report["bbox"] else ""),
        "",
        f"- detector: `{det['ref']}`, bands {', '.join(det['bands'])}: {det['choice']}",
        f"- grid: {g['width_px']} x {g['height_px']} px at {g['res_m']:g} m = {g['km2']:.1f} km2 "
        f"({g['crs']}), {100 * g['valid_fraction']:.1f} % valid",
        f"- machine: {m['cpus_available']} of {m['cpu_count']} CPUs, torch {m['torch_version']} "
        f"with {m['torch_threads']} threads, device {m['device']}"
        + (f" ({m['cuda']})" if m["cuda"] else "")
        + f"; load average {m['load_avg_1m_before']} before, {m['load_avg_1m_after']} after",
        f"- batch size {report['params']['batch_size']}, overlap {report['params']['overlap_px']} px, "
        f"median of {report['params']['repeat']} run(s)",
        "",
        "| stage | median s | share of total | runs (s) |",
        "|---|---:|---:|---|",
    ]
    total = st["total"]
    for stage in (*STAGES, "total"):
        share = f"{100 * st[stage] / total:.1f} %" if total else "n/a"
        runs = ", ".join(f"{v:.2f}" for v in report["stages_s_all"][stage])
        lines.append(f"| {stage} | {st[stage]:.2f} | {share} | {runs} |")
    lines += [
        "",
        "| inference | value |",
        "|---|---:|",
        f"| patches predicted (empty skipped) | {inf['patches']} ({inf['patches_skipped_nodata']}) |",
        f"| forward passes (short batches padded to the batch size) | {inf['forward_passes']} |",
        f"| model forward inside inference, its patches' share, s | {_fmt(inf['model_forward_s'], 3)} |",
        f"| pure forward loop, same patches, s | {_fmt(inf['pure_forward_s'], 3)} |",
        f"| patches/s, model alone | {_fmt(inf['patches_per_s_model_alone'], 1)} |",
        f"| patches/s, model inside the pipeline | {_fmt(inf['patches_per_s_model_in_pipeline'], 1)} |",
        f"| patches/s, end to end | {_fmt(inf['patches_per_s_end_to_end'], 1)} |",
        f"| detector load (once, untimed warm-up), s | {_fmt(det['load_s'], 3)} |",
        "",
        "| ratio (median of per-run ratios) | value |",
        "|---|---:|",
        f"| overhead: total / pure forward | {_fmt(r['overhead_ratio'])} |",
        f"| inference stage / pure forward | {_fmt(r['inference_overhead_ratio'])} |",
        f"| model forward in pipeline / pure forward | {_fmt(r['forward_vs_pure_ratio'])} |",
    ]
    if report["prefect"]:
        p = report["prefect"]
        lines += ["", "| Prefect flow | wall s | inside the flow function s | outside it s | "
                      "wall - plain stages (median total) s |", "|---|---:|---:|---:|---:|"]
        for label in ("cold", "warm"):
            q = p[label]
            lines.append(f"| {label} | {q['wall_s']:.2f} | {q['inside_flow_s']:.2f} | "
                         f"{q['outside_flow_s']:.2f} | {q['overhead_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the benchmark, print the report (Markdown, or JSON with ``--json``)."""
    args = build_parser().parse_args(argv)
    from tasks.core.errors import LandslideError

    try:
        report = run_benchmark(args)
    except LandslideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json else format_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
