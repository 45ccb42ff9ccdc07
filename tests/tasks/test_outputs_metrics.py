"""COG encoding, output folder safety, and the evaluation metrics."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from models.metrics import best_f1_threshold, confusion, evaluate_probabilities, roc_auc
from tasks.core.errors import InputError
from tasks.run.outputs import (
    STAGING,
    check_output_dir,
    decode_unit_interval,
    encode_unit_interval,
    publish,
    write_cog,
)


def test_encoding_round_trip():
    p = np.array([0.0, 0.5, 1.0, np.nan, 0.123], np.float32)
    enc = encode_unit_interval(p)
    assert enc.tolist()[:4] == [0, 127, 254, 255]
    np.testing.assert_allclose(decode_unit_interval(enc)[[0, 1, 2, 4]], p[[0, 1, 2, 4]], atol=0.5 / 254)


def test_write_cog_is_a_cog(tmp_path):
    arr = (np.arange(600 * 700) % 255).astype(np.uint8).reshape(600, 700)
    path = write_cog(arr, tmp_path / "p.tif", crs="EPSG:32654",
                     transform=rasterio.transform.from_origin(500000, 4700000, 10, 10),
                     description="test", scale=1 / 254)
    with rasterio.open(path) as src:
        assert src.driver == "GTiff" and src.nodata == 255 and src.dtypes[0] == "uint8"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.overviews(1) and src.scales[0] == pytest.approx(1 / 254)
        np.testing.assert_array_equal(src.read(1), arr)
    assert not list(tmp_path.glob("*.tmp"))


def test_output_dir_refuses_finished_run(tmp_path):
    out = check_output_dir(tmp_path / "run", overwrite=False)
    (out / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="already holds a run"):
        check_output_dir(out, overwrite=False)
    check_output_dir(out, overwrite=True)


def test_publish_refuses_incomplete_runs(tmp_path):
    (tmp_path / STAGING).mkdir()
    (tmp_path / STAGING / "landslides.gpkg").write_text("x")
    with pytest.raises(RuntimeError, match="incomplete"):
        publish(tmp_path)
    assert not (tmp_path / "landslides.gpkg").exists()


def test_metrics_ignore_value_and_auc():
    labels = np.array([1, 1, 0, 0, 255, 255], np.uint8)
    prob = np.array([0.9, 0.4, 0.6, 0.1, 0.99, 0.0], np.float32)
    c = confusion(prob >= 0.5, labels)
    assert c == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    m = evaluate_probabilities(prob, labels, 0.5)
    assert m["precision"] == m["recall"] == m["f1"] == 0.5 and m["iou"] == pytest.approx(1 / 3)
    assert m["labelled_px"] == 4
    assert roc_auc(prob, labels) == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5  # ties count half
    thr, f1 = best_f1_threshold(prob, labels)
    assert f1 >= 0.5 and 0 < thr < 1


def test_full_disk_is_refused_before_work(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from tasks.run.outputs import bytes_needed, check_free_space

    need = bytes_needed(1139, 981)
    assert 60e6 < need < 200e6  # the Iburi sample grid: ~75 MB upper bound
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(InputError, match="MB are free"):
        check_free_space(tmp_path, need)
