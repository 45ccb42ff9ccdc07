"""Training as a Prefect flow (wiring only): build the dataset if asked, train, report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger, task

from models.data.datasets import load_provenance
from models.training.suite import run_name, summarize_suite, write_suite_report
from models.training.train import TrainConfig, split_key, train_scene_model

train_task = task(train_scene_model, name="train")


@flow(name="landslide-train", log_prints=True)
def train_flow(train_dir: str, val_dir: str, out_dir: str, name: str, config: dict | None = None,
               progress: bool = True, report_dirs: dict[str, str] | None = None,
               run_dir: str | None = None, resume: bool = True, layout: str = "scene",
               train_list: str | None = None, val_list: str | None = None) -> str:
    """Train a model on a scene-layout dataset and write ``<out_dir>/<name>.{safetensors,json}``."""
    logger = get_run_logger()
    card_path = train_task(train_dir, val_dir, out_dir, name, TrainConfig(**(config or {})), progress,
                           report_dirs, run_dir, resume, layout, train_list, val_list)
    logger.info("checkpoint card: %s", card_path)
    return str(card_path)


@flow(name="landslide-train-suite", log_prints=True)
def train_suite_flow(data_dir: str, out_dir: str, prefix: str, models: list[str], seeds: list[int],
                     config: dict | None = None, report_dir: str | None = None,
                     title: str = "Architecture comparison", notes: str = "",
                     progress: bool = True, timing: bool = True, report_only: bool = False) -> dict:
    """Train every (model, seed) of a suite not trained yet, one Prefect task each, then tabulate.

    ``data_dir`` is a scene-layout dataset with train/ and val/ (val_reference/ is scored too when
    present); checkpoints go to ``out_dir`` as ``<prefix>-<model>-s<seed>``.
    """

    logger = get_run_logger()
    data = Path(data_dir)
    reports = ({"val_reference_predictions": str(data / "val_reference")}
               if (data / "val_reference" / "labels.tif").exists() else None)
    base = TrainConfig(**(config or {}))
    if not report_only:
        for model in models:
            for seed in seeds:
                name = run_name(prefix, model, seed)
                if (Path(out_dir) / f"{name}.json").exists():
                    logger.info("%s: already trained, skipped", name)
                    continue
                cfg = replace(base, model=model, seed=seed)
                train_task.with_options(name=f"train-{model}-s{seed}")(
                    str(data / "train"), str(data / "val"), out_dir, name, cfg, progress, reports)
    splits = {split_key("val", load_provenance(data / "train")): data / "val"}
    if reports:
        splits["val_reference_predictions"] = data / "val_reference"
    rows = task(summarize_suite, name="summarize-suite")(out_dir, prefix, splits, timing)
    paths = task(write_suite_report, name="write-suite-report")(
        rows, list(splits), report_dir or out_dir, title, notes)
    logger.info("suite report: %s", paths["md"])
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}}
