"""The same training command on the 14-channel Landslide4Sense layout.

Images: the 14 genuine L4S test patches. Masks: SYNTHETIC (generated here from a bright-red-on-a-
slope threshold so both classes exist); they exercise the mechanics only and say nothing about
landslide accuracy.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from flows.cli import main
from models.checkpoint import read_card
from tasks.core.bands import BAND_NAMES, L4S_SCALE


@pytest.fixture()
def l4s_root(tmp_path, shared_data):
    src = shared_data / "l4s_test_patches" / "img"
    root = tmp_path / "l4s"
    (root / "TrainData" / "img").mkdir(parents=True)
    (root / "TrainData" / "mask").mkdir(parents=True)
    names = sorted(p.name for p in src.glob("image_*.h5"))
    for name in names:
        shutil.copy(src / name, root / "TrainData" / "img" / name)
        with h5py.File(src / name) as f:
            img = f["img"][()] * np.asarray(L4S_SCALE)  # physical units
        red, slope = img[..., BAND_NAMES.index("B04")], img[..., BAND_NAMES.index("SLOPE")]
        mask = ((red >= np.percentile(red, 85)) & (slope >= 10)).astype(np.uint8)  # synthetic
        with h5py.File(root / "TrainData" / "mask" / name.replace("image", "mask"), "w") as f:
            f["mask"] = mask
    lines = [f"TrainData/img/{n}" for n in names]
    (root / "train.txt").write_text("\n".join(lines[:10]))
    (root / "valid.txt").write_text("\n".join(lines[10:]))
    return root


def test_train_a_few_steps_on_l4s_layout(prefect_harness, l4s_root, tmp_path):
    out = tmp_path / "ckpt"
    code = main(["train", "--layout", "l4s", "--data-dir", str(l4s_root), "--train-list",
                 str(l4s_root / "train.txt"), "--val-list", str(l4s_root / "valid.txt"),
                 "--bands", ",".join(BAND_NAMES), "--model", "unet-mobilenet_v2", "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--name", "l4s-tiny", "--out",
                 str(out), "--loss", "focal+dice", "--no-progress"])
    assert code == 0
    card = read_card(out / "l4s-tiny.json")
    assert card.bands == list(BAND_NAMES) and card.input_transform.n_bands == 14
    assert "focal" in card.training.loss
    assert set(card.metrics) == {"train", "val"}  # not weak labels: plain split names
    assert card.metrics["val"]["labelled_px"] == 4 * 128 * 128  # the 4 validation patches
    # the transform starts from physical units: the DEM mean is metres, not L4S-scaled values
    dem_mean = card.input_transform.mean[BAND_NAMES.index("DEM")]
    assert 200 < dem_mean < 5000


def test_validation_list_must_differ_from_training_list(l4s_root, tmp_path, capsys):
    code = main(["train", "--layout", "l4s", "--data-dir", str(l4s_root), "--train-list",
                 str(l4s_root / "train.txt"), "--val-list", str(l4s_root / "train.txt"),
                 "--name", "x", "--out", str(tmp_path)])
    assert code == 2 and "never on the training list" in capsys.readouterr().err
