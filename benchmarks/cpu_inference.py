"""CPU-speed options for one checkpoint, measured in one run: speed and F1 change side by side.

    python -m benchmarks.cpu_inference --checkpoint iburi2018-weak-unet-mobilenet_v2 \\
        --data-dir build/iburi_weak/val --reference-dir build/iburi_weak/val_reference \\
        --calibration-dir build/iburi_weak/train --out reports/cpu_inference

Variants: the PyTorch network as loaded (float32, the baseline), channels-last memory format,
bfloat16 autocast, ONNX Runtime float32, ONNX Runtime static int8 (calibrated on
``--calibration-dir``, never on the scored data), and L1 channel pruning (30 %, weights zeroed).
Each is scored by the scan's own tiling and blending on ``--data-dir`` (and ``--reference-dir``),
so the F1 change is what a scan would see; ms per patch is the median over repeated batches of 16
random patches, timed round-robin (one batch of each variant per round) with the same thread count
in the same process: the ratios are what count on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def _ms_per_patch(detectors: list, repeats: int, batch: int = 16) -> list[float]:
    """Median ms per patch of each detector, timed round-robin (one batch each per round) so a
    load change on the machine hits every variant alike."""
    det0 = detectors[0]
    rng = np.random.default_rng(0)
    x = rng.normal(1000, 300, size=(batch, len(det0.bands), det0.patch_size, det0.patch_size))
    x = x.astype(np.float32)
    ok = np.ones((batch, det0.patch_size, det0.patch_size), bool)
    for det in detectors:
        det.predict(x, ok)  # warm-up
    times: list[list[float]] = [[] for _ in detectors]
    for _ in range(repeats):
        for k, det in enumerate(detectors):
            t = time.perf_counter()
            det.predict(x, ok)
            times[k].append(time.perf_counter() - t)
    return [1000 * float(np.median(t)) / batch for t in times]


class _ChannelsLast:
    def __init__(self, model):
        import torch

        self.model = model.to(memory_format=torch.channels_last)

    def __call__(self, x):
        import torch

        return self.model(x.contiguous(memory_format=torch.channels_last))

    def parameters(self):
        return self.model.parameters()


class _BF16:
    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()

    def parameters(self):
        return self.model.parameters()


def measure(checkpoint: str, data_dir: str, reference_dir: str | None, calibration_dir: str,
            work_dir: str | Path, threads: int, repeats: int, prune_amount: float = 0.3) -> list[dict]:
    import copy

    import torch

    from models.data.datasets import load_scene_dataset
    from models.detectors import load_detector
    from models.evaluate import predict_dataset
    from models.export import export_onnx, load_onnx_detector, prune_channels, quantize_int8
    from models.metrics import evaluate_probabilities

    torch.set_num_threads(threads)
    base = load_detector(checkpoint, "cpu", channels_last=False)  # NCHW: the variants' baseline
    base.model = base.model.float().eval()
    datasets = {"val": load_scene_dataset(data_dir)}
    if reference_dir:
        datasets["reference"] = load_scene_dataset(reference_dir)
    work = Path(work_dir)
    fp32_path = export_onnx(checkpoint, work / "model.onnx")
    int8_path = quantize_int8(fp32_path, work / "model.int8.onnx", calibration_dir)

    def variant(model):
        det = copy.copy(base)
        det.model = model
        det.forward_s = 0.0
        return det

    variants = [
        ("pytorch float32 (baseline)", base, ""),
        ("pytorch channels-last (the scan's default on CPU)",
         variant(_ChannelsLast(copy.deepcopy(base.model))), ""),
        ("pytorch bfloat16 autocast", variant(_BF16(base.model)), ""),
        ("onnxruntime float32", load_onnx_detector(fp32_path, threads), fp32_path.name),
        ("onnxruntime int8 (static, QDQ)", load_onnx_detector(int8_path, threads), int8_path.name),
        (f"pytorch, {int(100 * prune_amount)}% conv channels pruned (zeroed)",
         variant(prune_channels(copy.deepcopy(base.model), prune_amount)), ""),
    ]
    rows = []
    timings = _ms_per_patch([det for _, det, _ in variants], repeats)
    for (name, det, file), ms in zip(variants, timings):
        row = {"variant": name, "ms_per_patch": ms,
               "file_mb": (work / file).stat().st_size / 2**20 if file else float("nan")}
        for key, data in datasets.items():
            m = evaluate_probabilities(predict_dataset(det, data), data.labels, det.threshold)
            row[f"{key}_f1"], row[f"{key}_iou"] = m["f1"], m["iou"]
        rows.append(row)
    for row in rows:
        row["speedup"] = rows[0]["ms_per_patch"] / row["ms_per_patch"]
        for key in datasets:
            row[f"{key}_f1_change"] = row[f"{key}_f1"] - rows[0][f"{key}_f1"]
    return rows


def to_markdown(rows: list[dict], keys: list[str], header: str) -> str:
    cols = ["variant", "ms / patch", "speedup"] + [f"F1 {k}" for k in keys] + \
           [f"ΔF1 {k}" for k in keys] + ["file MB"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = [r["variant"], f"{r['ms_per_patch']:.1f}", f"{r['speedup']:.2f}x"]
        cells += [f"{r[f'{k}_f1']:.4f}" for k in keys]
        cells += [f"{r[f'{k}_f1_change']:+.4f}" for k in keys]
        cells += ["-" if r["file_mb"] != r["file_mb"] else f"{r['file_mb']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_inference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="card name/path (default: the shipped model)")
    p.add_argument("--data-dir", required=True, help="labelled scene-layout folder to score")
    p.add_argument("--reference-dir", help="a second labelled folder (e.g. val_reference)")
    p.add_argument("--calibration-dir", required=True, help="int8 calibration data (training split)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="folder for cpu_inference.md/.json and the ONNX files")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from models.detectors import DEFAULT_CHECKPOINT

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = measure(checkpoint, args.data_dir, args.reference_dir, args.calibration_dir, work,
                       args.threads, args.repeats)
        keys = ["val"] + (["reference"] if args.reference_dir else [])
        md = to_markdown(rows, keys, f"CPU inference options for {checkpoint} ({args.threads} "
                                     f"threads; F1 on {', '.join(keys)})")
        if args.out:
            (work / "cpu_inference.md").write_text(md)
            (work / "cpu_inference.json").write_text(json.dumps(rows, indent=1) + "\n")
        print(json.dumps(rows, indent=1) if args.json else md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
