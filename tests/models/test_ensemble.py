"""Ensemble cards: rules, member-disagreement uncertainty, and a scan that writes it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from flows.cli import main
from models.checkpoint import InputTransform, ModelCard, save_checkpoint
from models.detectors import EnsembleDetector, load_detector
from models.ensemble import EnsembleCard, save_ensemble
from models.registry import build_model
from tasks.core.errors import CheckpointError
from tests.data.crops import write_labelled_scene

BANDS = ["B02", "B03", "B04", "SLOPE"]


def _member(folder, name, seed, bands=BANDS):
    torch.manual_seed(seed)
    model = build_model("Unet", "mobilenet_v2", in_channels=len(bands))
    card = ModelCard(name=name, version="0", arch="Unet", encoder="mobilenet_v2", bands=bands,
                     input_transform=InputTransform.from_stats([1000.0] * (len(bands) - 1) + [15.0],
                                                               [500.0] * (len(bands) - 1) + [10.0]),
                     threshold=0.5, trained_on={"dataset": "none: random weights (mechanics test)",
                                                "split": "none", "file_list_sha256": "0" * 64},
                     training={"epochs": 0, "loss": "none", "seed": seed})
    return save_checkpoint(model, card, folder)[1]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    folder = tmp_path_factory.mktemp("members")
    return folder, [_member(folder, f"m{i}", i) for i in range(3)]


@pytest.mark.parametrize("rule", ["mean", "weighted", "majority"])
def test_rules_combine_member_probabilities(members, rule):
    folder, cards = members
    weights = [0.2, 0.3, 0.5] if rule == "weighted" else None
    path = save_ensemble(EnsembleCard(name=f"ens-{rule}", members=[c.name for c in cards],
                                      rule=rule, weights=weights), folder)
    det = load_detector(str(path), "cpu")
    assert isinstance(det, EnsembleDetector) and det.bands == tuple(BANDS)
    rng = np.random.default_rng(0)
    x = rng.normal(1000, 300, (2, 4, 128, 128)).astype(np.float32)
    ok = np.ones((2, 128, 128), bool)
    prob, unc = det.predict_with_uncertainty(x, ok)
    member_p = np.stack([m.predict(x, ok) for m in det.members])
    expected = {"mean": member_p.mean(0),
                "weighted": np.tensordot([0.2, 0.3, 0.5], member_p, axes=1),
                "majority": (member_p >= 0.5).mean(0)}[rule]
    np.testing.assert_allclose(prob, expected, atol=1e-6)
    np.testing.assert_allclose(unc, member_p.std(0), atol=1e-6)
    assert unc.max() > 0  # members with different weights disagree somewhere


def test_bad_ensemble_cards(members, tmp_path):
    folder, cards = members
    with pytest.raises(Exception, match="one weight per member"):
        EnsembleCard(name="x", members=["a", "b"], rule="weighted", weights=[1.0])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "ensemble", "name": "bad", "members": ["a", "b"],
                               "rulez": "mean"}))
    with pytest.raises(CheckpointError, match="rulez"):
        load_detector(str(bad), "cpu")


def test_scan_with_an_ensemble_writes_member_disagreement(members, tmp_path, prefect_harness):
    folder, cards = members
    path = save_ensemble(EnsembleCard(name="ens", members=[c.name for c in cards]), folder)
    out = tmp_path / "run"
    assert main(["scan", "--region", "iburi-2018", "--bbox", "141.95,42.72,141.97,42.735",
                 "--checkpoint", str(path), "--out", str(out), "--no-progress",
                 "--min-area-m2", "0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["detector"]["kind"] == "ensemble" and len(manifest["detector"]["members"]) == 3
    assert "standard deviation" in manifest["parameters"]["uncertainty"]
    with rasterio.open(out / "uncertainty.tif") as src:
        unc = src.read(1)
        assert "standard deviation" in src.tags()["uncertainty"]
    assert (unc[unc != 255] > 0).any()
    import geopandas as gpd

    gdf = gpd.read_file(out / "landslides.gpkg", layer="landslides")
    if len(gdf):
        assert gdf["uncertainty"].notna().all() and (gdf["uncertainty"] <= 0.5).all()


def _labelled_scene(folder):
    rng = np.random.default_rng(5)
    image = np.full((14, 140, 150), np.nan, np.float32)
    image[1:4] = rng.normal(1000, 300, size=(3, 140, 150))
    image[12] = rng.uniform(0, 40, size=(140, 150))
    labels = (rng.random((140, 150)) < 0.2).astype(np.uint8)
    labels[:10] = 255
    return write_labelled_scene(folder, image, labels)


def test_landslide_ensemble_writes_a_scored_card(members, tmp_path, capsys):
    folder, cards = members
    scene = _labelled_scene(tmp_path / "val")
    code = main(["ensemble", "--members", *map(str, cards), "--name", "ens", "--out", str(folder),
                 "--rule", "mean", "--score-dir", f"val_random={scene}"])
    assert code == 0
    card = json.loads((folder / "ens.json").read_text())
    assert card["members"] == ["m0", "m1", "m2"]  # members beside the card are listed by name
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(folder / "ens.json"), "--data-dir", str(scene),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert card["metrics"]["val_random"]["f1"] == pytest.approx(result["f1"], abs=1e-4)


def test_landslide_ensemble_weighted_needs_member_metrics(members, tmp_path, capsys):
    folder, cards = members
    code = main(["ensemble", "--members", *map(str, cards), "--name", "w", "--out", str(tmp_path),
                 "--rule", "weighted", "--weights-from", "val_weak_labels"])
    assert code != 0
    assert "metrics['val_weak_labels']" in capsys.readouterr().err
    assert not (tmp_path / "w.json").exists()
