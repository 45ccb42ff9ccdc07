"""Training as a Prefect flow (wiring only): build the dataset if asked, train, report."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from models.train import TrainConfig, train_scene_model

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
