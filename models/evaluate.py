"""Score detectors on labelled scene-layout datasets.

:func:`evaluate_checkpoint` scores one detector (``landslide evaluate``, the suite's index-rule row),
:func:`score_ensemble` adds an ensemble's figures to its card, and :func:`compare_detectors` /
:func:`write_report` make the comparison table of ``landslide compare``. Every prediction goes
through the scan's patch loop (``tasks.core.blend.predict_array``).

Comparison rows: precision, recall, F1, IoU, Dice, AUC over the labelled pixels (ignore = 255), at the
card's threshold or at a threshold calibrated on a separate validation dataset; milliseconds per
128 x 128 patch of the network alone (median of repeated batches, same process, same threads) and
the parameter count. The index rule is the "traditional method" row (no parameters).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np

from models.data.datasets import SceneData, load_scene_dataset
from models.detectors import load_detector
from models.ensemble import read_ensemble, save_ensemble
from models.index_rule import redness_index, threshold_at_fraction
from models.metrics import IGNORE, best_f1_threshold, confusion, evaluate_probabilities, scores_from_confusion
from models.registry import count_parameters
from tasks.core.bands import BAND_NAMES, band_index
from tasks.core.blend import Detector, predict_array
from tasks.core.errors import InputError
from tasks.core.files import atomic_write

COLUMNS = ("detector", "threshold", "precision", "recall", "f1", "iou", "dice", "auc",
           "ms_per_patch", "parameters", "labels")


def predict_dataset(detector: Detector, data: SceneData) -> np.ndarray:
    """The blended probability over a dataset's scene, valid where every band the detector
    consumes has data."""
    idx = [band_index(b) for b in detector.bands]
    valid = np.isfinite(data.image[idx]).all(axis=0)
    return predict_array(data.image, valid, detector)


def evaluate_checkpoint(data_dir: str, checkpoint: str | None, threshold: float | None = None,
                        device: str = "auto", compare_redness: bool = False) -> dict:
    """Metrics of a detector on a labelled scene-layout dataset (``landslide evaluate``)."""
    data = load_scene_dataset(data_dir, require_labels=True)
    detector = load_detector(checkpoint, device)
    data.require_bands(detector.bands, f"detector {detector.ref}")
    idx = [band_index(b) for b in detector.bands]
    missing = [b for b, i in zip(detector.bands, idx) if not np.isfinite(data.image[i]).any()]
    if missing:
        raise InputError(f"{data_dir}/image.tif has no data in band(s) {', '.join(missing)} that "
                         f"{detector.ref} needs")
    prob = predict_dataset(detector, data)
    thr = detector.threshold if threshold is None else threshold
    m = evaluate_probabilities(prob, data.labels, thr)
    result = {"checkpoint": detector.ref, "data_dir": str(data_dir),
              "labels": data.provenance.get("labels", "unknown (no dataset.json)"),
              **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}}
    if compare_redness:
        result["redness_at_same_fraction"] = redness_at_same_fraction(data, prob, thr)
    return result


def redness_at_same_fraction(data: SceneData, prob: np.ndarray, threshold: float) -> dict:
    """Redness (R-B)/(R+B) thresholded to mark as many labelled pixels as the detector does."""
    red = data.image[BAND_NAMES.index("B04")]
    blue = data.image[BAND_NAMES.index("B02")]
    index = redness_index(red, blue)
    scored = (data.labels != IGNORE) & np.isfinite(prob) & np.isfinite(index)
    fraction = float(np.mean(prob[scored] >= threshold))
    thr = threshold_at_fraction(index, scored, fraction)
    pred = np.where(scored, index >= thr, False)
    c = confusion(np.where(scored, pred, np.nan), data.labels)
    return {"fraction_marked": fraction, "index_threshold": float(thr),
            **scores_from_confusion(c)}


def score_ensemble(card_path: str | Path, score_dirs: dict[str, str | Path]) -> Path:
    """Score an ensemble card on each labelled folder and store the figures as ``metrics[KEY]``.

    On any failure the card is removed: no card without the figures it was asked to carry.
    """
    card_path = Path(card_path)
    try:
        metrics = {}
        for key, folder in score_dirs.items():
            m = evaluate_checkpoint(str(folder), str(card_path), device="cpu")
            metrics[key] = {k: round(float(m[k]), 4) for k in
                            ("precision", "recall", "f1", "iou", "dice", "auc")
                            if m.get(k) is not None}
    except BaseException:
        card_path.unlink(missing_ok=True)
        raise
    card = read_ensemble(card_path)
    return save_ensemble(card.model_copy(update={"metrics": metrics}), card_path.parent)


def ms_per_patch(detector: Detector, repeats: int = 3, batch: int = 16) -> float:
    """Milliseconds per patch of the detector alone (median of ``repeats`` batches, after a
    warm-up batch)."""
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
            threshold, _ = best_f1_threshold(predict_dataset(det, calib), calib.labels)
        m = evaluate_probabilities(predict_dataset(det, data), data.labels, threshold)
        params = _parameters(det)
        rows.append({"detector": det.ref, "threshold": threshold,
                     **{k: m[k] for k in ("precision", "recall", "f1", "iou", "dice", "auc")},
                     "ms_per_patch": ms_per_patch(det), "parameters": params,
                     "labels": data.provenance.get("labels", "unknown")})
    return rows


def write_report(rows: list[dict], out_dir: str | Path, title: str) -> dict[str, Path]:
    """compare.md, compare.csv, compare.png in ``out_dir`` (written, then renamed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "compare.csv", "md": out / "compare.md", "png": out / "compare.png"}
    with atomic_write(paths["csv"]) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

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
