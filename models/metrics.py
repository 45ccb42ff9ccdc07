"""Pixel-level metrics for the landslide class, ignore-value aware.

All functions take probabilities or binary predictions and labels with 1 = landslide, 0 = background
and ``ignore`` (default 255) = not labelled; ignored pixels and non-finite predictions never count.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255


def _select(pred: np.ndarray, labels: np.ndarray, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred).ravel()
    labels = np.asarray(labels).ravel()
    if pred.shape != labels.shape:
        raise ValueError(f"prediction has {pred.size} pixels, labels {labels.size}")
    keep = (labels != ignore) & np.isfinite(pred.astype(np.float64))
    return pred[keep], labels[keep].astype(bool)


def confusion(pred_binary: np.ndarray, labels: np.ndarray, ignore: int = IGNORE) -> dict[str, int]:
    """tp, fp, fn, tn over labelled pixels."""
    p, t = _select(pred_binary, labels, ignore)
    p = p.astype(bool)
    return {"tp": int(np.sum(p & t)), "fp": int(np.sum(p & ~t)), "fn": int(np.sum(~p & t)),
            "tn": int(np.sum(~p & ~t))}


def scores_from_confusion(c: dict[str, int]) -> dict[str, float]:
    """precision, recall, f1, iou, dice (dice == f1 for binary masks); 0 where undefined."""
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou, "dice": f1}


def roc_auc(prob: np.ndarray, labels: np.ndarray, ignore: int = IGNORE) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class only."""
    p, t = _select(prob, labels, ignore)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    ranks = np.empty(len(p), dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def evaluate_probabilities(prob: np.ndarray, labels: np.ndarray, threshold: float = 0.5,
                           ignore: int = IGNORE) -> dict[str, float]:
    """precision, recall, f1, iou, dice at ``threshold``, auc, and pixel counts."""
    prob = np.asarray(prob, dtype=np.float32)
    binary = np.where(np.isfinite(prob), prob >= threshold, np.nan)
    c = confusion(binary, labels, ignore)
    out: dict[str, float] = {**scores_from_confusion(c), "auc": roc_auc(prob, labels, ignore)}
    out.update({k: float(v) for k, v in c.items()})
    out["labelled_px"] = float(sum(c.values()))
    out["threshold"] = float(threshold)
    return out


def best_f1_threshold(prob: np.ndarray, labels: np.ndarray, ignore: int = IGNORE,
                      candidates: np.ndarray | None = None) -> tuple[float, float]:
    """Threshold maximizing F1 on (validation) pixels; returns (threshold, f1)."""
    candidates = np.linspace(0.05, 0.95, 19) if candidates is None else candidates
    best = (0.5, -1.0)
    for thr in candidates:
        f1 = evaluate_probabilities(prob, labels, float(thr), ignore)["f1"]
        if f1 > best[1]:
            best = (float(thr), f1)
    return best
