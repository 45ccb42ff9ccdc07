"""The paper's architecture comparison as a reusable suite: train every (model, seed), then tabulate.

A suite is a folder of checkpoints named ``<prefix>-<model>-s<seed>`` (card + weights + run folder),
all trained with one :class:`models.training.train.TrainConfig` apart from model and seed
(:func:`flows.train.train_suite_flow`). Training skips a (model, seed) whose card already exists and
resumes one whose run folder holds finished epochs, so an interrupted suite continues where it
stopped and a second call with more seeds only adds those.

The report aggregates over seeds: mean and standard deviation of every split's metrics as stored in
the cards (measured with the weights as saved), the selected epochs, the training time, the
parameter count and the network's milliseconds per 128 x 128 patch (measured here, same process),
and the index rule on the same splits as the traditional-method row.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from models.checkpoint import read_card
from models.detectors import INDEX_DETECTOR, load_detector
from models.evaluate import evaluate_checkpoint, ms_per_patch
from models.registry import count_parameters, list_models, parse_model_name
from tasks.core.errors import InputError
from tasks.core.files import atomic_write, atomic_write_text


def run_name(prefix: str, model: str, seed: int) -> str:
    return f"{prefix}-{model}-s{seed}"


def parse_models(text: str) -> list[str]:
    """``all`` or a comma-separated list of registry names (unknown names are refused)."""
    if text.strip() == "all":
        return list_models()
    models = [m.strip() for m in text.split(",") if m.strip()]
    for m in models:
        parse_model_name(m)
    if not models:
        raise InputError("name at least one model (or 'all')")
    return models


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds wants comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds wants distinct integers, got {text!r}")
    return seeds


def collect_suite(out_dir: str | Path, prefix: str) -> dict[str, list[Path]]:
    """Cards of a suite folder grouped by model (registry order), seeds ascending."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(?P<model>.+)-s(?P<seed>\d+)\.json$")
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in Path(out_dir).glob(f"{prefix}-*.json"):
        m = pattern.match(path.name)
        if m and m["model"] in list_models():
            found.setdefault(m["model"], []).append((int(m["seed"]), path))
    if not found:
        raise InputError(f"{out_dir} holds no suite card named {prefix}-<model>-s<seed>.json")
    return {model: [p for _, p in sorted(found[model])] for model in list_models() if model in found}


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else math.nan)


def summarize_suite(out_dir: str | Path, prefix: str, splits: dict[str, str | Path],
                    timing: bool = True) -> list[dict]:
    """One row per model (over its seeds) plus the index rule scored on ``splits``.

    ``splits`` maps a card metrics key (e.g. ``val_weak_labels``) to the scene-layout folder
    those metrics came from; the index rule is scored on the same folders.
    """
    rows = []
    for model, cards in collect_suite(out_dir, prefix).items():
        parsed = [read_card(c) for c in cards]
        row: dict = {"model": model, "seeds": len(parsed),
                     "seed_list": " ".join(re.search(r"-s(\d+)\.json$", c.name)[1] for c in cards)}
        for key in splits:
            for metric in ("f1", "iou", "auc"):
                mean, std = _mean_std([card.metrics.get(key, {}).get(metric) for card in parsed])
                row[f"{key}_{metric}"], row[f"{key}_{metric}_std"] = mean, std
        extras = [card.training.model_dump() for card in parsed]
        row["selected_epochs"] = " ".join(str(e.get("selected_epoch", "?")) for e in extras)
        row["train_min"] = float(np.mean([e.get("wall_s", math.nan) for e in extras])) / 60
        det = load_detector(str(cards[0]), "cpu")
        row["parameters_m"] = count_parameters(det.model) / 1e6
        row["ms_per_patch"] = ms_per_patch(det) if timing else math.nan
        rows.append(row)
    rows.sort(key=lambda r: -np.nan_to_num(r[f"{next(iter(splits))}_f1"], nan=-1))
    rows.append(_index_row(splits))
    return rows


def _index_row(splits: dict[str, str | Path]) -> dict:
    row: dict = {"model": "index rule (traditional)", "seeds": 0, "seed_list": "",
                 "selected_epochs": "", "train_min": 0.0, "parameters_m": 0.0,
                 "ms_per_patch": math.nan}
    for key, folder in splits.items():
        m = evaluate_checkpoint(str(folder), INDEX_DETECTOR, device="cpu")
        for metric in ("f1", "iou", "auc"):
            v = m.get(metric)
            row[f"{key}_{metric}"] = math.nan if v is None else float(v)
            row[f"{key}_{metric}_std"] = math.nan
    return row


def write_suite_report(rows: list[dict], splits: list[str], out_dir: str | Path, title: str,
                       notes: str = "") -> dict[str, Path]:
    """suite.md (mean +- std over seeds), suite.csv (every number) and suite.png (F1 bars)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "suite.csv", "md": out / "suite.md", "png": out / "suite.png"}
    fields = list(rows[0].keys())
    with atomic_write(paths["csv"]) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()}
                         for r in rows)

    def pm(r: dict, key: str) -> str:
        mean, std = r[key], r[f"{key}_std"]
        if math.isnan(mean):
            return "n/a"
        return f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")

    short = {"val_weak_labels": "weak val", "val": "val", "val_reference_predictions": "ref val",
             "east_rule": "east rule"}
    head = ["model", "seeds"] + [f"{m.upper()} {short.get(s, s)}" for s in splits for m in ("f1", "iou")]
    head += [f"AUC {short.get(splits[-1], splits[-1])}", "selected epoch", "train min",
             "params (M)", "ms / patch"]
    lines = [f"# {title}", "", notes.strip(), "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["model"], str(r["seeds"])]
        cells += [pm(r, f"{s}_{m}") for s in splits for m in ("f1", "iou")]
        cells += [pm(r, f"{splits[-1]}_auc"), r["selected_epochs"] or "-",
                  f"{r['train_min']:.1f}" if r["seeds"] else "-",
                  f"{r['parameters_m']:.1f}" if r["seeds"] else "0",
                  "n/a" if math.isnan(r["ms_per_patch"]) else f"{r['ms_per_patch']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    width = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows)), 4.5))
    for k, split in enumerate(splits):
        means = [r[f"{split}_f1"] for r in rows]
        stds = [0 if math.isnan(r[f"{split}_f1_std"]) else r[f"{split}_f1_std"] for r in rows]
        ax.bar(x + (k - (len(splits) - 1) / 2) * width, means, width=width, yerr=stds, capsize=2,
               label=f"F1, {split}")
    ax.set_xticks(x, [r["model"].replace("unet-", "U-Net ").replace(" (traditional)", "")
                      for r in rows], rotation=35, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=80)
    plt.close(fig)
    return paths
