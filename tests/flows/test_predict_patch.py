"""``landslide predict-patch``: the default detector on a real Landslide4Sense test patch."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.data.crops import SHARED
from tests.flows.test_cli import assert_refused, run_cli

PATCH = SHARED / "l4s_test_patches" / "img" / "image_31.h5"


def test_predict_a_real_l4s_patch(tmp_path, capsys):
    code, out, err = run_cli(["predict-patch", PATCH, "--out", tmp_path, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "max probability" in out
    prob = np.load(tmp_path / "image_31_probability.npy")
    assert prob.shape == (128, 128) and prob.dtype == np.float32
    assert np.isfinite(prob).all() and 0.0 <= prob.min() and prob.max() <= 1.0
    grey = np.asarray(Image.open(tmp_path / "image_31_probability.png"))
    assert grey.shape == (128, 128) and grey.dtype == np.uint8
    assert np.array_equal(grey, np.round(prob * 255).astype(np.uint8))
    mask = np.asarray(Image.open(tmp_path / "image_31_mask.png"))
    assert set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, prob >= 0.5)  # the shipped card's threshold


@pytest.mark.parametrize("make, needle", [
    (lambda p: (h5py.File(p, "w").close(), p)[1], "no dataset 'img'"),
    (lambda p: (p.write_bytes(b"not hdf5"), p)[1], "not an HDF5 file"),
])
def test_not_an_l4s_patch(tmp_path, capsys, make, needle):
    bad = make(tmp_path / "bad.h5")
    code, _, err = run_cli(["predict-patch", bad, "--out", tmp_path / "out"], capsys)
    assert_refused(code, err, None, str(bad), needle)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_wrong_shape(tmp_path, capsys):
    bad = tmp_path / "image_1.h5"
    with h5py.File(bad, "w") as f:
        f["img"] = np.ones((128, 128, 3))
    code, _, err = run_cli(["predict-patch", bad, "--out", tmp_path / "out"], capsys)
    assert_refused(code, err, None, "(128, 128, 3)", "expected (H, W, 14)")
