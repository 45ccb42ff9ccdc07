"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

``<run_dir>/state.safetensors`` holds the model, the best model so far, the optimizer's tensors and
torch's RNG state; ``<run_dir>/state.json`` holds the epoch, the scheduler, the optimizer's param
groups, numpy's RNG state, the metrics history and the configuration the run was started with.
Both are written under temporary names and renamed, the JSON last, so an interrupted save leaves
the previous epoch's state usable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tasks.core.errors import InputError
from tasks.core.files import atomic_write, atomic_write_text

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


@dataclass
class TrainingState:
    epoch: int  # last finished epoch (0 = none)
    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    numpy_rng: dict[str, Any]
    torch_rng: torch.Tensor
    best_f1: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in opt_state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"opt/{pid}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(run_dir: str | Path, state: TrainingState) -> None:
    """Write the state of the last finished epoch (atomic per file, JSON last)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in state.model.items()}
    if state.best_model is not None:
        tensors.update({f"best/{k}": v.detach().cpu().contiguous() for k, v in state.best_model.items()})
    opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
    tensors.update(opt_tensors)
    tensors["rng/torch"] = state.torch_rng.contiguous()
    with atomic_write(run_dir / STATE_TENSORS) as tmp_t:
        save_file(tensors, str(tmp_t))
    meta = {"epoch": state.epoch, "optimizer": opt_meta, "scheduler": state.scheduler,
            "numpy_rng": state.numpy_rng, "best_f1": state.best_f1, "best_epoch": state.best_epoch,
            "history": state.history, "config": state.config, "extra": state.extra,
            "has_best": state.best_model is not None}
    atomic_write_text(run_dir / STATE_JSON, json.dumps(meta, indent=1))


def load_state(run_dir: str | Path) -> TrainingState | None:
    """The saved state, or None when the folder holds none."""
    run_dir = Path(run_dir)
    if not (run_dir / STATE_JSON).exists() or not (run_dir / STATE_TENSORS).exists():
        return None
    meta = json.loads((run_dir / STATE_JSON).read_text())
    tensors = load_file(str(run_dir / STATE_TENSORS))
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    best = ({k[len("best/"):]: v for k, v in tensors.items() if k.startswith("best/")}
            if meta.get("has_best") else None)
    return TrainingState(
        epoch=int(meta["epoch"]), model=model, best_model=best,
        optimizer=_unflatten_optimizer(tensors, meta["optimizer"]), scheduler=meta["scheduler"],
        numpy_rng=meta["numpy_rng"], torch_rng=tensors["rng/torch"], best_f1=float(meta["best_f1"]),
        best_epoch=int(meta["best_epoch"]), history=meta["history"], config=meta["config"],
        extra=meta.get("extra", {}))


def check_same_config(saved: dict, current: dict, run_dir: Path) -> None:
    """A run resumes only with the configuration it was started with.

    Raises:
        InputError: naming the first differing settings and the fix.
    """
    keys = sorted(set(saved) | set(current))
    diff = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]
    if diff:
        raise InputError(f"{run_dir} holds an interrupted run with other settings ({'; '.join(diff[:3])}); "
                         "rerun with the original settings to resume, or delete that folder to start over")


def numpy_rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def restore_numpy_rng(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
