"""Out-of-domain warning (issue 21): the scene's band statistics against the card's training ones.

The shipped real-label card was trained on the Iburi sample. On the real T18SVG scene (January,
Virginia coast) it warns, on its spectral bands; on the bundled Iburi sample it stays silent
(tests/flows/test_scan_flow.py, the default-model run). T18SVG has no DEM and the card needs one, so
the scan gets a stand-in for that flat coastal plain (``coastal_plain_dem_like``); its terrain stays
inside the training domain (flat ground exists in Iburi's valleys) and is not what warns. Each band's
mean alone is within 0.8 training std of Iburi's there: the joint statistics (the covariance in the
card) are what tell the scenes apart.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flows.cli import main
from models.cards import DEFAULT_CHECKPOINT, domain_check, domain_warning
from tests.data.crops import coastal_plain_dem_like, local_source, lonlat_bounds, t18svg_crops, write_catalog

CARD = json.loads((Path(__file__).resolve().parents[2] / "models" / "checkpoints"
                   / f"{DEFAULT_CHECKPOINT}.json").read_text())


def test_t18svg_with_the_iburi_card_warns_once_and_records_it(prefect_harness, tmp_path, caplog):
    crops = t18svg_crops(tmp_path / "bands", bands=("B02", "B03", "B04"))
    dem = coastal_plain_dem_like(tmp_path / "bands" / "dem.tif", crops["B02"])
    catalog = write_catalog(tmp_path / "cat.yaml", {"s": local_source(crops, dem=dem)},
                            {"r": {"source": "s", "bbox": list(lonlat_bounds(crops["B02"]))}})
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code = main(["scan", "--catalog", str(catalog), "--region", "r", "--checkpoint", DEFAULT_CHECKPOINT,
                     "--out", str(out), "--no-progress", "--device", "cpu"])
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if "outside the training domain" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert DEFAULT_CHECKPOINT in warnings[0] and "spectral bands" in warnings[0]
    assert "terrain" not in warnings[0] and "B02 mean" in warnings[0]
    (check,) = json.loads((out / "manifest.json").read_text())["domain_check"]
    assert check["card"] == DEFAULT_CHECKPOINT and check["not_checked"] == [] and check["outside"]
    assert check["basis"].startswith("training_statistics")
    spectral, terrain = check["groups"]["spectral"], check["groups"]["terrain"]
    assert spectral["outside"] and spectral["d2_ratio"] > 4  # measured 5.0; the sample: 0.9-1.2
    assert not terrain["outside"]
    # no single band is far off on its own: the per-band means would not have caught this scene
    assert all(abs(check["bands"][b]["z"]) < 1 for b in ("B02", "B03", "B04"))


def _moments_from_card(card: dict, shift: dict[str, float] | None = None, spread: float = 1.0) -> dict:
    """Scene moments equal to the card's training statistics, optionally shifted or scaled."""
    stats = card["training_statistics"]
    mean = [m + (shift or {}).get(b, 0.0) for b, m in zip(stats["bands"], stats["mean"])]
    cov = [[v * spread ** 2 for v in row] for row in stats["covariance"]]
    return {"bands": stats["bands"], "n_px": stats["n_px"], "mean": mean, "covariance": cov}


def test_the_rule_on_the_training_statistics_a_level_2a_offset_and_missing_bands():
    same = domain_check(CARD, {"": _moments_from_card(CARD)})
    assert not same["outside"] and domain_warning(same) is None
    assert all(abs(g["d2_ratio"] - 1) < 1e-6 for g in same["groups"].values())  # E[d2] = k exactly
    # Sentinel-2 L2A (processing baseline 04.00+) adds 1000 DN to every reflectance band
    l2a = domain_check(CARD, {"": _moments_from_card(CARD, {"B02": 1000, "B03": 1000, "B04": 1000})})
    assert l2a["groups"]["spectral"]["outside"] and not l2a["groups"]["terrain"]["outside"]
    assert l2a["bands"]["B02"]["z"] > 7 and "spectral bands" in domain_warning(l2a)
    mountains = domain_check(CARD, {"": _moments_from_card(CARD, {"DEM": 1500.0})})
    assert mountains["groups"]["terrain"]["outside"] and not mountains["groups"]["spectral"]["outside"]
    # a card without covariance falls back to its per-band means and standard deviations
    diagonal = {k: v for k, v in CARD.items() if k != "training_statistics"}
    assert domain_check(diagonal, {"": _moments_from_card(CARD)})["basis"].startswith("input_transform")
    partial = _moments_from_card(CARD)
    keep = [0, 1, 2]  # the scene has no terrain bands
    partial = {"bands": [partial["bands"][i] for i in keep], "n_px": 10,
               "mean": [partial["mean"][i] for i in keep],
               "covariance": [[partial["covariance"][i][j] for j in keep] for i in keep]}
    check = domain_check(CARD, {"": partial})
    assert check["not_checked"] == ["SLOPE", "DEM"] and list(check["groups"]) == ["spectral"]
