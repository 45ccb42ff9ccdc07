"""Inventory-level evaluation (tasks.inventory.accuracy, `landslide evaluate --reference --run`):
object matching on hand-checked squares, pixel metrics on a toy raster, a real scan of the bundled
sample scored against the real western Iburi inventory, and bad input through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box

from flows.cli import main
from tasks.inventory.accuracy import (
    DEFAULT_MIN_OVERLAP,
    IGNORE,
    match_objects,
    pixel_labels,
    pixel_metrics,
    reference_objects,
    size_class_labels,
)

CRS = "EPSG:32654"
AREA = box(0, 0, 1000, 1000)  # the scored area: exactly 1 km2


def _series(*geoms) -> gpd.GeoSeries:
    return gpd.GeoSeries(list(geoms), crs=CRS)


# ---------------------------------------------------------------------------------------------
# objects


def test_object_metrics_on_hand_checked_squares():
    a = box(100, 100, 200, 200)  # 10,000 m2, fully detected
    b = box(400, 100, 500, 200)  # 10,000 m2, 5 % covered: a miss at the 10 % rule
    c = box(100, 400, 130, 430)  # 900 m2, no detection at all
    d_a = box(100, 100, 200, 200)
    d_b = box(400, 100, 405, 200)  # 500 m2 on b
    d_false = box(600, 600, 650, 650)  # 2,500 m2 on nothing
    m = match_objects(_series(a, b, c), _series(d_a, d_b, d_false), AREA)
    s = m.summary

    assert list(m.reference["covered_fraction"]) == pytest.approx([1.0, 0.05, 0.0])
    assert list(m.reference["detected"]) == [True, False, False]
    assert s["min_overlap_fraction"] == DEFAULT_MIN_OVERLAP == 0.1
    assert "at least 10%" in s["overlap_rule"]
    assert (s["reference_landslides"], s["detected"], s["missed"]) == (3, 1, 2)
    assert s["reference_area_m2"] == pytest.approx(20_900)
    assert s["detected_share_by_count"] == pytest.approx(1 / 3)
    assert s["detected_share_by_area"] == pytest.approx(10_000 / 20_900)
    assert s["covered_share_of_reference_area"] == pytest.approx(10_500 / 20_900)
    # detections: the one on b is not a hit for b, but it is not false either (it touches b)
    assert (s["detections"], s["detections_touching_reference"], s["false_detections"]) == (3, 2, 1)
    assert list(m.detections["false_detection"]) == [False, False, True]
    assert s["false_detection_share"] == pytest.approx(1 / 3)
    assert s["scored_area_km2"] == pytest.approx(1.0)
    assert s["false_detections_per_km2"] == pytest.approx(1.0)
    assert s["false_detection_area_m2"] == pytest.approx(2_500)
    assert s["median_area_m2"] == pytest.approx({"missed": (900 + 10_000) / 2, "detected": 10_000,
                                                 "all": 10_000})
    by_size = {row["size_class_m2"]: (row["reference"], row["detected"], row["missed"])
               for row in s["by_size"]}
    assert list(by_size) == size_class_labels() == ["< 1,000", "1,000-5,000", "5,000-20,000",
                                                     ">= 20,000"]
    assert by_size == {"< 1,000": (1, 0, 1), "1,000-5,000": (0, 0, 0), "5,000-20,000": (2, 1, 1),
                       ">= 20,000": (0, 0, 0)}
    assert s["by_size"][0]["missed_area_m2"] == pytest.approx(900)
    sens = {row["min_overlap_fraction"]: row["detected"] for row in s["sensitivity"]}
    assert sens == {0.0: 2, 0.1: 1, 0.25: 1, 0.5: 1}  # "any overlap" also counts b
    assert {row["min_overlap_fraction"]: row["detected_share_by_area"]
            for row in s["sensitivity"]}[0.0] == pytest.approx(20_000 / 20_900)

    # a looser rule counts b; the figures follow
    loose = match_objects(_series(a, b, c), _series(d_a, d_b, d_false), AREA,
                          min_overlap_fraction=0.04).summary
    assert (loose["detected"], loose["false_detections"]) == (2, 1)
    assert loose["detected_share_by_area"] == pytest.approx(20_000 / 20_900)
    assert loose["median_area_m2"]["missed"] == pytest.approx(900)


def test_partly_inside_rule_and_false_detections_see_every_reference_polygon():
    e = box(960, 500, 1060, 600)  # 40 % inside: left out
    f = box(940, 700, 1040, 800)  # 60 % inside: kept, measured on its 6,000 m2 inside
    g = box(990, 700, 1100, 800)  # covers 1,000 m2 of f's inside part; 9 % of g is inside: not scored
    j = box(900, 500, 970, 600)  # inside, overlaps only e (left out): still not a false detection
    m = match_objects(_series(e, f), _series(g, j), AREA)
    s = m.summary
    assert (s["reference_landslides"], s["reference_left_out_mostly_outside"]) == (1, 1)
    assert m.reference["area_m2"].tolist() == pytest.approx([6_000])
    assert m.reference["full_area_m2"].tolist() == pytest.approx([10_000])
    assert m.reference["covered_fraction"].tolist() == pytest.approx([1_000 / 6_000])
    assert s["detected"] == 1
    assert m.detections["detection_index"].tolist() == [1]  # g is mostly outside
    assert (s["detections"], s["false_detections"]) == (1, 0)
    assert s["false_detections_per_km2"] == 0
    # no reference landslide and no detection: shares are undefined, not 0
    empty = match_objects(_series(), _series(), AREA).summary
    assert empty["detected_share_by_count"] is None and empty["false_detections_per_km2"] == 0
    with pytest.raises(ValueError, match="min-overlap-fraction"):
        match_objects(_series(f), _series(g), AREA, min_overlap_fraction=1.5)


def test_deposits_join_the_scar_they_overlap_most():
    s1, s2 = box(0, 0, 100, 100), box(200, 0, 300, 100)
    d_touch = box(100, 0, 150, 100)  # shares only s1's edge: joins s1 (0.5 m tolerance)
    d_over = box(250, 50, 400, 150)  # overlaps s2
    d_both = box(70, 0, 210, 50)  # 1,500 m2 on s1, 500 m2 on s2: joins s1
    d_alone = box(500, 500, 600, 600)
    polys = gpd.GeoDataFrame({"layer": ["scar", "scar", "deposit", "deposit", "deposit", "deposit"]},
                             geometry=[s1, s2, d_touch, d_over, d_both, d_alone], crs=CRS)
    obj = reference_objects(polys)
    assert obj["layers"].tolist() == ["scar+deposit", "scar+deposit", "deposit"]
    assert obj["members"].tolist() == [3, 2, 1]
    assert obj.geometry.area.tolist() == pytest.approx([
        10_000 + 5_000 + 60 * 50,  # s1 + d_touch + d_both beyond x = 150 (objects may overlap)
        10_000 + 150 * 100 - 50 * 50,
        10_000])
    # one layer: every polygon is a landslide
    assert len(reference_objects(polys[polys["layer"] == "deposit"])) == 4


# ---------------------------------------------------------------------------------------------
# pixels


def test_pixel_metrics_on_a_toy_raster():
    ref = np.array([[1, 1, 0, 0],
                    [1, 1, 0, 0],
                    [0, 0, 0, 0],
                    [1, 0, 0, 0]], dtype=np.uint8)
    scored = np.ones((4, 4), bool)
    scored[3] = False  # outside the mapped area
    mask = np.array([[1, 0, 1, 0],
                     [1, 1, 0, 0],
                     [0, 0, 0, 0],
                     [1, 1, 1, 1]], dtype=np.uint8)
    # positives (0,0) (0,1) (1,0) (1,1); negatives the other 8 scored pixels
    prob = np.array([[254, 127, 100, 0],
                     [200, 50, 0, 0],
                     [0, 0, 0, 254],
                     [254, 254, 254, 254]], dtype=np.uint8)
    labels = pixel_labels(ref, scored)
    assert labels[3].tolist() == [IGNORE] * 4 and labels[0].tolist() == [1, 1, 0, 0]
    m = pixel_metrics(mask, prob, labels, res_m=10.0)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 7)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)
    assert m["f1"] == m["dice"] == pytest.approx(0.75)
    assert m["iou"] == pytest.approx(0.6)
    # Mann-Whitney: 254 beats 7 negatives and ties 1, 200 and 127 beat 7, 50 beats the 6 zeros
    assert m["auc"] == pytest.approx((7.5 + 7 + 7 + 6) / 32)
    assert (m["scored_px"], m["reference_px"], m["detected_px"]) == (12, 4, 4)
    assert m["scored_km2"] == pytest.approx(12 * 100 / 1e6)
    # a pixel the run did not analyse (255) never counts, whatever the labels say
    mask2, prob2 = mask.copy(), prob.copy()
    mask2[0, 1], prob2[0, 1] = 255, 255
    m2 = pixel_metrics(mask2, prob2, labels)
    assert (m2["tp"], m2["fp"], m2["fn"], m2["tn"]) == (3, 1, 0, 7)


# ---------------------------------------------------------------------------------------------
# a real scan against the real inventory


INVENTORY_DIR = "iburi_2018_inventory_west"
INVENTORY = f"{INVENTORY_DIR}/iburi_2018_inventory_west.gpkg"
BBOX = "141.90,42.70,141.925,42.72"  # west of 141.93 E: inside the inventory


@pytest.fixture(scope="module")
def index_run(tmp_path_factory, prefect_harness) -> Path:
    run = tmp_path_factory.mktemp("inv_eval") / "run"
    assert main(["scan", "--region", "iburi-2018", "--bbox", BBOX, "--detector", "index",
                 "--out", str(run), "--no-progress"]) == 0
    return run


def test_real_scan_scored_against_the_real_inventory(index_run, shared_data, tmp_path, capsys):
    inventory = shared_data / INVENTORY
    out = tmp_path / "eval"
    code = main(["evaluate", "--reference", str(inventory), "--reference-layer", "collapse_scars",
                 "deposits", "--mapped-area", "mapped_area", "--run", str(index_run), "--json",
                 "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    result = json.loads(stdout)
    assert json.loads((out / "evaluation.json").read_text()) == result

    # the labels and the area are named, and every section says which
    lab, area, pix, obj = result["labels"], result["area"], result["pixel"], result["objects"]
    assert lab["layers"] == ["collapse_scars", "deposits"]
    assert lab["file"] == str(inventory) and len(lab["sha256"]) == 64
    assert lab["per_layer"]["collapse_scars"]["polygons"] == 1595
    assert lab["per_layer"]["deposits"]["polygons"] == 570
    assert area["mapped_area"]["layer"] == "mapped_area"
    assert "footprint" in area["definition"] and "mapped area" in area["definition"]
    # the ROI is about 2.0 x 2.2 km, all of it mapped and analysed
    assert 3.5 < area["km2"] < 5.0
    assert area["pixel_km2"] == pytest.approx(area["km2"], rel=0.02)
    for section in (pix, obj):
        assert "collapse_scars+deposits" in section["labels"] and lab["sha256"][:12] in section["labels"]
        assert f"{area['km2']:.2f} km2" in section["area"]
    assert result["run"]["detector"].startswith("index-rule")

    # sane ranges for the weights-free rule on 4.5 km2 of the Iburi slopes
    assert 0.01 < pix["reference_share_of_area"] < 0.2
    for k in ("precision", "recall", "f1", "iou"):
        assert 0.05 < pix[k] < 0.9, (k, pix[k])
    assert pix["dice"] == pix["f1"]
    assert 0.5 < pix["auc"] < 1.0
    assert pix["tp"] + pix["fp"] + pix["fn"] + pix["tn"] == pix["scored_px"] == area["pixels"]
    assert obj["reference_landslides"] >= 10
    assert obj["detected"] + obj["missed"] == obj["reference_landslides"]
    assert sum(r["reference"] for r in obj["by_size"]) == obj["reference_landslides"]
    assert sum(r["missed"] for r in obj["by_size"]) == obj["missed"]
    assert 0 < obj["detected_share_by_count"] < 1 and 0 < obj["detected_share_by_area"] < 1
    assert obj["detected_share_by_area"] >= obj["covered_share_of_reference_area"]
    assert 0 <= obj["false_detections"] <= obj["detections"]
    assert obj["false_detections_per_km2"] == pytest.approx(obj["false_detections"] / area["km2"])
    assert obj["min_overlap_fraction"] == 0.1 and "10%" in obj["overlap_rule"]
    shares = [r["detected_share_by_count"] for r in obj["sensitivity"]]
    assert shares == sorted(shares, reverse=True)  # a stricter rule never detects more

    # the Markdown report and the map
    md = (out / "evaluation.md").read_text()
    assert "collapse_scars" in md and "| precision |" in md and "overlap rule" in md
    with Image.open(out / "evaluation.png") as im:
        assert im.width > 300 and im.height > 300
        px = np.asarray(im.convert("RGB"))
    assert px.std() > 20  # the RGB quicklook, not a blank page
    assert result["outputs"]["map_background"].startswith("the run's quicklook.png")

    # without --json the Markdown goes to stdout; without --mapped-area the footprint is scored
    assert main(["evaluate", "--reference", str(inventory), "--reference-layer", "collapse_scars",
                 "--run", str(index_run)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Inventory evaluation") and "run's footprint" in text

    # a run without its manifest and quicklook: the same figures over a grey map
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("probability.tif", "mask.tif", "landslides.gpkg"):
        (bare / name).write_bytes((index_run / name).read_bytes())
    assert main(["evaluate", "--reference", str(inventory), "--reference-layer", "collapse_scars",
                 "deposits", "--mapped-area", "mapped_area", "--run", str(bare), "--json",
                 "--out", str(tmp_path / "bare_eval")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["objects"] == obj
    assert {k: v for k, v in again["pixel"].items() if k != "against"} == \
        {k: v for k, v in pix.items() if k != "against"}  # only the threshold is unknown
    assert again["outputs"]["map_background"].startswith("grey")
    assert (tmp_path / "bare_eval" / "evaluation.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2


def _refused(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_input_is_one_line(index_run, shared_data, tmp_path, capsys):
    inventory = shared_data / INVENTORY
    # a reference far from the run: both extents are named
    far = tmp_path / "far.gpkg"
    gpd.GeoDataFrame({"n": [1]}, geometry=[box(141.0, 43.0, 141.01, 43.01)],
                     crs="EPSG:4326").to_file(far, layer="scars")
    line = _refused(["evaluate", "--reference", far, "--run", index_run], capsys)
    assert "does not overlap the run's footprint" in line
    assert "reference covers lon 141.0000..141.0100, lat 43.0000..43.0100" in line
    assert "footprint covers lon 141.89" in line and "lat 42.7" in line

    # a mapped area that misses the footprint: the scored area is empty
    line = _refused(["evaluate", "--reference", inventory, "--reference-layer", "collapse_scars",
                     "--mapped-area", far, "--run", index_run], capsys)
    assert "scored area is empty" in line

    # a folder that is not a finished run, a missing file, a missing layer
    line = _refused(["evaluate", "--reference", inventory, "--reference-layer", "collapse_scars",
                     "--run", tmp_path], capsys)
    assert "lacks probability.tif, mask.tif, landslides.gpkg" in line
    line = _refused(["evaluate", "--reference", tmp_path / "nope.gpkg", "--run", index_run], capsys)
    assert "nope.gpkg does not exist" in line
    line = _refused(["evaluate", "--reference", inventory, "--reference-layer", "scars",
                     "--run", index_run], capsys)
    assert "no layer 'scars'" in line and "collapse_scars" in line
    line = _refused(["evaluate", "--reference", inventory, "--run", index_run], capsys)
    assert "--reference-layer" in line  # several layers and none named

    # the two modes exclude each other; a mode needs its inputs
    line = _refused(["evaluate", "--data-dir", tmp_path, "--reference", inventory,
                     "--run", index_run], capsys)
    assert "two modes" in line
    assert "--data-dir" in _refused(["evaluate"], capsys)
    assert "--run" in _refused(["evaluate", "--reference", inventory], capsys)
    assert "--data-dir only" in _refused(["evaluate", "--reference", inventory, "--run", index_run,
                                          "--checkpoint", "index"], capsys)
    assert "[0, 1]" in _refused(["evaluate", "--reference", inventory, "--reference-layer",
                                 "collapse_scars", "--run", index_run,
                                 "--min-overlap-fraction", "2"], capsys)


def test_help_names_the_default_overlap(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--data-dir", "--reference", "--run", "--reference-layer", "--mapped-area",
                 "--min-overlap-fraction", "--out", "--json"):
        assert flag in text
    assert f"(default: {DEFAULT_MIN_OVERLAP})" in text
