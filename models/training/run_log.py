"""Per-epoch metrics: a CSV and JSON log, loss/metric curves as PNG, and TensorBoard events.

TensorBoard (the ``tensorboard`` package through ``torch.utils.tensorboard``) writes local event
files and needs no server or network: ``tensorboard --logdir <run_dir>/tensorboard``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tasks.core.files import atomic_write


class RunLog:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: logs and curves are still written
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def write(self, history: list[dict]) -> None:
        """Rewrite metrics.csv / metrics.json / curves.png from the whole history; log the last row."""
        if not history:
            return
        keys = list(dict.fromkeys(k for row in history for k in row))
        with atomic_write(self.run_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)
        (self.run_dir / "metrics.json").write_text(json.dumps(history, indent=1))
        self._plot(history)
        if self._tb is not None:
            row = history[-1]
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key.replace("val_", "val/").replace("train_", "train/"),
                                        value, row["epoch"])
            self._tb.flush()

    def _plot(self, history: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in history]
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o")
        ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
        for key in ("val_f1", "val_iou", "val_precision", "val_recall", "val_auc"):
            if key in history[0]:
                ax_val.plot(epochs, [r[key] for r in history], marker=".", label=key[4:])
        ax_val.set(xlabel="epoch", ylabel="validation", title="validation metrics", ylim=(0, 1))
        ax_val.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(self.run_dir / "curves.png", dpi=80)
        plt.close(fig)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
