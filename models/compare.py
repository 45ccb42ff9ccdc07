"""Compare detectors on one labelled dataset: a table (Markdown + CSV), a bar chart, timings.

Each row: precision, recall, F1, IoU, Dice, AUC over the labelled pixels (ignore = 255), at the
card's threshold or at a threshold calibrated on a separate validation dataset; milliseconds per
128 x 128 patch of the network alone (median of repeated batches, same process, same threads) and
the parameter count. The index rule is the "traditional method" row (no parameters).
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import numpy as np

from models.datasets import load_scene_dataset
from models.metrics import best_f1_threshold, evaluate_probabilities
from models.registry import count_parameters
from tasks.bands import BAND_NAMES
from tasks.inference import load_detector, predict_array

COLUMNS = ("detector", "threshold", "precision", "recall", "f1", "iou", "dice", "auc",
           "ms_per_patch", "parameters", "labels")


def _predict(detector, data) -> np.ndarray:
    idx = [BAND_NAMES.index(b) for b in detector.bands]
    valid = np.isfinite(data.image[idx]).all(axis=0)
    return predict_array(data.image, valid, detector)


def _ms_per_patch(detector, repeats: int = 3, batch: int = 16) -> float:
    rng = np.random.default_rng(0)
    x = rng.normal(1000, 300, size=(batch, len(detector.bands), detector.patch_size,
                                    detector.patch_size)).astype(np.float32)
    ok = np.ones((batch, detector.patch_size, detector.patch_size), bool)
    detector.predict(x, ok)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        detector.predict(x, ok)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)) / batch


def _parameters(detector) -> int:
    """Parameters of a network, the sum over an ensemble's members, 0 for the rule."""
    if hasattr(detector, "members"):
        return sum(_parameters(m) for m in detector.members)
    model = getattr(detector, "model", None)
    return count_parameters(model) if model is not None else 0


def compare_detectors(specs: list[str], data_dir: str | Path, calibrate_dir: str | Path | None = None,
                      device: str = "cpu") -> list[dict]:
    """One row per detector spec (checkpoint name/path or ``index``)."""
    data = load_scene_dataset(data_dir)
    calib = load_scene_dataset(calibrate_dir) if calibrate_dir else None
    rows = []
    for spec in specs:
        det = load_detector(spec, device)
        threshold = det.threshold
        if calib is not None:
            threshold, _ = best_f1_threshold(_predict(det, calib), calib.labels)
        m = evaluate_probabilities(_predict(det, data), data.labels, threshold)
        params = _parameters(det)
        rows.append({"detector": det.ref, "threshold": threshold,
                     **{k: m[k] for k in ("precision", "recall", "f1", "iou", "dice", "auc")},
                     "ms_per_patch": _ms_per_patch(det), "parameters": params,
                     "labels": data.provenance.get("labels", "unknown")})
    return rows


def write_report(rows: list[dict], out_dir: str | Path, title: str) -> dict[str, Path]:
    """compare.md, compare.csv, compare.png in ``out_dir`` (written, then renamed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "compare.csv", "md": out / "compare.md", "png": out / "compare.png"}
    tmp = paths["csv"].with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, paths["csv"])

    def fmt(v):
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.4f}"
        return str(v)

    # The labels are the dataset's, the same for every row: said once, above the table.
    columns = [c for c in COLUMNS if c != "labels"]
    labels = sorted({str(r["labels"]) for r in rows})
    lines = [f"# {title}", "", f"Labels: {'; '.join(labels)}", "",
             "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    paths["md"].write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["detector"].split("@")[0] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    for k, (key, width) in enumerate((("f1", -0.2), ("iou", 0.2))):
        ax.bar(x + width, [r[key] for r in rows], width=0.4, label=key.upper())
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=80)
    plt.close(fig)
    return paths
