"""`landslide train --device` (issue 19): float32 on the CPU as before; mixed precision (autocast,
gradient scaler for float16) on CUDA, exercised here on the CPU by forcing the AMP branch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import models.training.train as train_mod
from models.accel import BF16, FP32
from models.training.train import TrainConfig, _Compute, train_scene_model
from tasks.core.errors import InputError
from tests.data.crops import write_labelled_scene


def _scene(d, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(1000, 300, size=(14, 128, 128)).astype(np.float32)
    labels = np.zeros((128, 128), np.uint8)
    labels[30:70, 40:90] = 1
    image[:, labels == 1] += 500  # something to learn
    return write_labelled_scene(d, image, labels)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return _scene(root / "train", 0), _scene(root / "val", 1)


CFG = dict(model="unet-mobilenet_v2", epochs=1, steps_per_epoch=2, batch_size=2, threads=1,
           bands=("B02", "B03", "B04"))


def test_cpu_training_records_float32(scenes, tmp_path):
    card = train_scene_model(*scenes, tmp_path, "cpu", TrainConfig(**CFG, device="cpu"), progress=False)
    training = json.loads(card.read_text())["training"]
    assert training["device_used"] == "cpu" and training["precision"] == FP32
    assert training["grad_scaler"] is False
    assert training["malloc"]["value"] is True  # glibc keeps freed activations (models.accel)
    state = json.loads((tmp_path / "cpu.run" / "state.json").read_text())
    assert "device" not in state["config"] and "amp" not in state["config"]  # old runs resume


def test_cuda_without_a_gpu_is_a_clear_error(scenes, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="no CUDA GPU"):
        train_scene_model(*scenes, tmp_path, "x", TrainConfig(**CFG, device="cuda"), progress=False)


def test_amp_branch_with_a_scaler(scenes, tmp_path, monkeypatch):
    """The CUDA path's steps (autocast, scaled loss, scaler.step/update) forced on the CPU."""
    forced = _Compute(torch.device("cpu"), BF16, torch.amp.GradScaler("cpu"))
    monkeypatch.setattr(_Compute, "of", classmethod(lambda cls, device: forced))
    steps = []
    real_step = forced.scaler.step
    monkeypatch.setattr(forced.scaler, "step", lambda opt: steps.append(1) or real_step(opt))
    card = train_scene_model(*scenes, tmp_path, "amp", TrainConfig(**CFG), progress=False)
    training = json.loads(card.read_text())["training"]
    assert training["precision"] == BF16 and training["grad_scaler"] is True
    assert len(steps) == CFG["steps_per_epoch"]
    assert np.isfinite(training["history"][0]["train_loss"])
    state = json.loads((tmp_path / "amp.run" / "state.json").read_text())
    assert state["config"]["amp"] == BF16  # an AMP run resumes only in its precision


def test_train_cli_takes_device():
    import argparse

    from flows.train_cli import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["train", "--data-dir", "d", "--name", "n", "--device", "cuda:1"])
    assert args.device == "cuda:1"
    from flows.train_cli import _config_from_args

    assert _config_from_args(args)["device"] == "cuda:1"
    assert train_mod.TrainConfig().device == "auto"
