"""``landslide make-dataset``: real inventory polygons (Iburi 2018, west of 141.93 E) on the
analysis grid, the spatial split, bad inputs, and the scene layout `landslide train` reads.

The counts pinned in ``test_full_west_part_counts`` are the ones docs/datasets_from_inventories.md
reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from flows import dataset_cli
from flows.cli import main
from models.data.datasets import load_scene_dataset
from tasks.core.errors import InputError
from tasks.core.grid import AnalysisGrid
from tasks.datasets import inventory
from tasks.datasets.inventory import (
    PixelWindow,
    burn_labels,
    resolve_classes,
    split_windows,
)
from tasks.vector.rasterize import rasterize_polygons, read_polygons

REGION = "iburi-2018"
CLASSES = ["--class", "scar=collapse_scars", "--class", "deposit=deposits"]
# the two sentences the inventory's README requires (citation; modified data)
ATTRIBUTION = [
    ("この地図は地理院地図　平成30年北海道胆振東部地震 正射画像をトレースした地図です "
     "https://github.com/koukita/2018_09_06_atumatyou"),
    "この地図は、https://github.com/koukita/2018_09_06_atumatyou で公開されている地図データを改変したものである",
]
# a small crop with scars and deposits, and the unmapped south-west corner of the region
SMALL_BBOX = "141.895,42.700,141.925,42.745"
WEST_BBOX = "141.8903,42.6824,141.93,42.7695"  # the region west of 141.93 E


@pytest.fixture(scope="module")
def gpkg(shared_data: Path) -> Path:
    return shared_data / "iburi_2018_inventory_west" / "iburi_2018_inventory_west.gpkg"


def _attr_args() -> list[str]:
    return [a for text in ATTRIBUTION for a in ("--attribution", text)]


def _make(gpkg: Path, out: Path, *extra: str, bbox: str = SMALL_BBOX, classes=CLASSES) -> int:
    return main(["make-dataset", "--region", REGION, "--labels", str(gpkg), *classes,
                 "--mapped-area", "mapped_area", "--bbox", bbox, "--no-progress", *_attr_args(),
                 "--out", str(out), *extra])


@pytest.fixture(scope="module")
def small(gpkg: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("make_dataset") / "iburi_small"
    assert _make(gpkg, out, "--val-fraction", "0.4", "--gap-px", "32") == 0
    return out


def _read(path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform


def _assemble(out: Path) -> tuple[dict, AnalysisGrid, np.ndarray]:
    """The full-grid label raster rebuilt from the splits (255 where no split has the pixel)."""
    top = json.loads((out / "dataset.json").read_text())
    grid = AnalysisGrid.from_dict(top["grid"])
    full = np.full(grid.shape, 255, dtype=np.uint8)
    for part in ("train", "val"):
        w = top["spatial_split"][f"{part}_window"]
        labels, _ = _read(out / part / "labels.tif")
        full[w["row0"]:w["row1"], w["col0"]:w["col1"]] = labels
    return top, grid, full


# ------------------------------------------------------------------ real inventory on the grid
def test_labels_match_direct_rasterization(small: Path, gpkg: Path) -> None:
    top, grid, _ = _assemble(small)
    scars = rasterize_polygons(read_polygons(gpkg, "collapse_scars").frame.geometry, grid)
    deposits = rasterize_polygons(read_polygons(gpkg, "deposits").frame.geometry, grid)
    mapped = rasterize_polygons(read_polygons(gpkg, "mapped_area").frame.geometry, grid).astype(bool)
    for part in ("train", "val"):
        w = PixelWindow(**{k: top["spatial_split"][f"{part}_window"][k]
                           for k in ("row0", "row1", "col0", "col1")})
        labels, _ = _read(small / part / "labels.tif")
        with rasterio.open(small / part / "image.tif") as src:
            valid = np.isfinite(src.read(2))  # B02: NaN where the stack is not valid
        sl = w.slices()
        expected = np.where(valid & mapped[sl], (scars[sl] | deposits[sl]).astype(np.uint8), 255)
        assert np.array_equal(labels, expected)
        # 255 everywhere outside the mapped area, and the crop does reach outside it
        assert (labels[~mapped[sl]] == 255).all()
        c = top[part]
        assert c["landslide_px"] == int((labels == 1).sum()) > 0
        assert c["background_px"] == int((labels == 0).sum()) > 0
        assert c["class_px"] == {"scar": int(((scars[sl] == 1) & (labels != 255)).sum()),
                                 "deposit": int(((deposits[sl] == 1) & (labels != 255)).sum())}
    assert (~mapped).any() and top["rasterization"]["rule"] == "centre"
    layers = top["labels_file"]["layers"]
    assert layers["collapse_scars"]["polygons"] == 1595 and layers["deposits"]["polygons"] == 570
    assert 0 < layers["collapse_scars"]["polygons_in_roi"] < 1595
    assert top["labels_file"]["repaired"] == 0
    assert top["mapped_area"]["layer"] == "mapped_area"


def test_burn_labels_all_touched_and_other_crs(small: Path, gpkg: Path, tmp_path: Path) -> None:
    """--all-touched burns a superset; polygons in another CRS (and a mapped area from another
    file) land on the same pixels."""
    _, grid, _ = _assemble(small)
    valid = np.ones(grid.shape, dtype=bool)
    scars, mapped = read_polygons(gpkg, "collapse_scars"), read_polygons(gpkg, "mapped_area")
    centre = burn_labels(grid, valid, {"scar": [scars]}, mapped)
    touched = burn_labels(grid, valid, {"scar": [scars]}, mapped, all_touched=True)
    assert (touched.labels[centre.labels == 1] == 1).all()
    assert (touched.labels == 1).sum() > 1.3 * (centre.labels == 1).sum()
    assert np.array_equal(centre.labels == 255, touched.labels == 255)  # the mapped area: centres

    other = tmp_path / "scars_3857.gpkg"
    scars.frame.to_crs("EPSG:3857").to_file(other, layer="scars", engine="pyogrio")
    area = tmp_path / "mapped_utm.geojson"
    mapped.frame.to_crs("EPSG:32654").to_file(area, driver="GeoJSON", engine="pyogrio")
    moved = burn_labels(grid, valid, {"scar": [read_polygons(other, "scars")]},
                        read_polygons(area))
    assert read_polygons(other, "scars").frame.crs.to_epsg() == 3857
    differ = (moved.labels != centre.labels).sum()
    assert differ <= 1e-3 * (centre.labels != 255).sum()  # a few edge pixel centres at most


def test_split_rasters_do_not_overlap_and_keep_the_gap(small: Path) -> None:
    top = json.loads((small / "dataset.json").read_text())
    split = top["spatial_split"]
    tw, vw = split["train_window"], split["val_window"]
    assert split["axis"] == "lat" and split["gap_px"] == 32
    assert vw["row0"] - tw["row1"] >= 32 == split["gap_px"]
    assert split["train_to_val_distance_px"] == vw["row0"] - tw["row1"]
    with rasterio.open(small / "train" / "labels.tif") as t, \
            rasterio.open(small / "val" / "labels.tif") as v:
        assert t.crs == v.crs and t.res == (10.0, 10.0)
        # train lies north of val, 32 pixels (320 m) at least between them
        assert t.bounds.bottom - v.bounds.top >= 32 * 10.0
        assert (t.height, t.width) == (tw["height"], tw["width"])
    # validation is the southern 40 % of the labelled rows
    labelled = split["labelled_window"]
    assert labelled["row1"] - split["cut"] == round(0.4 * labelled["height"])
    assert split["val_lonlat"][3] < split["train_lonlat"][1]  # val north edge < train south edge
    for part in ("train", "val"):
        sub = json.loads((small / part / "dataset.json").read_text())
        assert sub["this_split"] == part and sub["split_window"] == split[f"{part}_window"]


def test_dataset_json_and_attribution(small: Path, gpkg: Path) -> None:
    top = json.loads((small / "dataset.json").read_text())
    assert top["labels"].startswith("real inventory labels: ")
    assert "weak" not in top["labels"].lower()  # model cards name metrics after the labels
    lf = top["labels_file"]
    assert lf["path"] == str(gpkg.resolve()) and len(lf["sha256"]) == 64
    assert lf["classes"] == {"scar": ["collapse_scars"], "deposit": ["deposits"]}
    assert top["counts"]["landslide_px"] >= top["train"]["landslide_px"] + top["val"]["landslide_px"]
    assert top["grid"]["crs"] == "EPSG:32654" and top["grid"]["res_m"] == 10.0
    text = (small / "ATTRIBUTION.txt").read_text()
    for sentence in ATTRIBUTION:
        assert sentence in text and sentence in top["attribution"]
    assert (small / "train" / "ATTRIBUTION.txt").read_text() == text
    assert not [p.name for p in small.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    assert not (small / ".work").exists()


def test_load_scene_dataset_reads_the_splits(small: Path) -> None:
    for part in ("train", "val"):
        data = load_scene_dataset(small / part)
        assert data.image.shape[0] == 14 and data.labels.shape == data.image.shape[1:]
        assert set(np.unique(data.labels)) <= {0, 1, 255}
        assert data.provenance["labels"].startswith("real inventory labels")
        assert data.provenance["this_split"] == part
        assert data.valid[data.labels != 255].all()  # every labelled pixel has image data


def test_full_west_part_counts(gpkg: Path, tmp_path: Path) -> None:
    """The documented example: the whole region west of 141.93 E (docs/datasets_from_inventories.md)."""
    out = tmp_path / "iburi_real"
    assert _make(gpkg, out, "--val-fraction", "0.5", bbox=WEST_BBOX) == 0
    top = json.loads((out / "dataset.json").read_text())
    assert top["counts"] == {"landslide_px": 27304, "background_px": 259181, "ignored_px": 39771,
                             "class_px": {"scar": 21122, "deposit": 8828}}
    assert top["train"]["landslide_px"] == 14380 and top["val"]["landslide_px"] == 7111
    assert top["spatial_split"]["train_to_val_distance_px"] >= 128


# ------------------------------------------------------------------------------ the split (pure)
def test_split_windows_lat_and_lon() -> None:
    labels = np.full((120, 60), 255, dtype=np.uint8)
    labels[10:110, 5:55] = 0  # labelled rows 10..109 (100 rows), columns 5..54 (50)
    labels[20, 20] = labels[105, 40] = 1
    s = split_windows(labels, "lat", 0.25, 10)
    assert (s.cut, s.gap) == (85, (75, 85))
    assert s.val == PixelWindow(85, 110, 5, 55) and s.train == PixelWindow(10, 75, 5, 55)
    assert s.distance_px == 10
    s = split_windows(labels, "lon", 0.2, 5)
    assert s.cut == 45 and s.val == PixelWindow(10, 110, 45, 55)
    assert s.train == PixelWindow(10, 110, 5, 40) and s.distance_px == 5
    # each part is cropped to its labelled pixels: the gap can only grow
    labels[70:75] = 255
    s = split_windows(labels, "lat", 0.25, 10)
    assert s.train == PixelWindow(10, 70, 5, 55) and s.distance_px == 15
    # the parts never share a row, whatever the options
    for f in (0.01, 0.3, 0.5, 0.9):
        for gap in (0, 1, 7):
            s = split_windows(labels, "lat", f, gap)
            assert s.train.row1 + gap <= s.val.row0
            assert s.val.row1 == 110 and s.train.row0 == 10


def test_split_windows_refuses() -> None:
    labels = np.zeros((40, 10), dtype=np.uint8)
    with pytest.raises(InputError, match="leaves no training part: the labelled area spans 40 rows"):
        split_windows(labels, "lat", 0.25, 30)
    with pytest.raises(InputError, match="every label is ignore"):
        split_windows(np.full((5, 5), 255, np.uint8))
    with pytest.raises(InputError, match="--val-fraction"):
        split_windows(labels, "lat", 1.0, 0)
    with pytest.raises(InputError, match="--split-axis"):
        split_windows(labels, "north", 0.2, 0)


def test_resolve_classes() -> None:
    layers = ["collapse_scars", "deposits", "mapped_area"]
    assert resolve_classes(layers, ["scar=collapse_scars", "deposit=deposits"]) == {
        "scar": ("collapse_scars",), "deposit": ("deposits",)}
    assert resolve_classes(layers, ["slide=collapse_scars+deposits"]) == {
        "slide": ("collapse_scars", "deposits")}
    assert resolve_classes(layers, ["scar=collapse_scars", "deposit=deposits"], chosen=["scar"]) == {
        "scar": ("collapse_scars",)}
    assert resolve_classes(layers, label_layers=["deposits"]) == {"deposits": ("deposits",)}
    assert resolve_classes(layers, chosen=["deposits"]) == {"deposits": ("deposits",)}
    assert resolve_classes(["scars", "area"], mapped_layer="area") == {"scars": ("scars",)}
    with pytest.raises(InputError, match="unknown class 'slide'; the classes are scar "
                                         r"\(collapse_scars\), deposit \(deposits\)"):
        resolve_classes(layers, ["scar=collapse_scars", "deposit=deposits"], chosen=["slide"])
    with pytest.raises(InputError, match="has no layer 'scars' .*its layers: collapse_scars, deposits"):
        resolve_classes(layers, ["scar=scars"], path="f.gpkg")
    with pytest.raises(InputError, match="2 candidate layers"):
        resolve_classes(layers, mapped_layer="mapped_area")
    with pytest.raises(InputError, match="expected NAME=LAYER"):
        resolve_classes(layers, ["scar"])
    with pytest.raises(InputError, match="is the --mapped-area"):
        resolve_classes(layers, ["area=mapped_area"], mapped_layer="mapped_area")


def test_resolve_mapped_area(tmp_path: Path) -> None:
    labels = tmp_path / "inv.gpkg"
    other = tmp_path / "area.geojson"
    other.write_text("{}")
    layers = ["scars", "mapped_area"]
    assert inventory.resolve_mapped_area(labels, layers, None) is None
    assert inventory.resolve_mapped_area(labels, layers, "mapped_area") == (labels, "mapped_area")
    assert inventory.resolve_mapped_area(labels, layers, str(other)) == (other, None)
    assert inventory.resolve_mapped_area(labels, layers, str(other), "a") == (other, "a")
    with pytest.raises(InputError, match="is neither a layer of .* nor an existing file"):
        inventory.resolve_mapped_area(labels, layers, "area")
    with pytest.raises(InputError, match="--mapped-area-layer needs --mapped-area FILE"):
        inventory.resolve_mapped_area(labels, layers, None, "a")


def test_cli_defaults_are_the_library_defaults() -> None:
    assert dataset_cli.VAL_FRACTION == inventory.DEFAULT_VAL_FRACTION
    assert dataset_cli.GAP_PX == inventory.DEFAULT_GAP_PX == 128


# ------------------------------------------------------------------------------ bad inputs
def _refused(capsys, out: Path, argv: list[str], match: str) -> str:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own checks (choices, types) exit from the parser
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return lines[0]


def _argv(gpkg: Path, out: Path, *args: str, bbox: str = SMALL_BBOX) -> list[str]:
    return ["make-dataset", "--region", REGION, "--labels", str(gpkg), "--bbox", bbox,
            "--no-progress", *_attr_args(), "--out", str(out), *args]


def test_refuses_unknown_layer_and_class(gpkg: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    _refused(capsys, out, _argv(gpkg, out, "--label-layer", "scars"),
             "has no layer 'scars' (class 'scars'); its layers: collapse_scars, deposits, "
             "mapped_area, cloud_unmappable, possible_deep_landslide_area")
    _refused(capsys, out, _argv(gpkg, out, *CLASSES, "--classes", "scar,landslide"),
             "unknown class 'landslide'; the classes are scar (collapse_scars), deposit (deposits)")
    _refused(capsys, out, _argv(gpkg, out, "--mapped-area", "mapped"),
             "--mapped-area 'mapped' is neither a layer of")
    _refused(capsys, out, _argv(gpkg, out), "5 candidate layers")


def test_refuses_empty_layer_and_unreadable_file(gpkg: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    _refused(capsys, out, _argv(gpkg, out, "--label-layer", "cloud_unmappable"),
             "layer 'cloud_unmappable' holds no polygon")
    bad = tmp_path / "inventory.gpkg"
    bad.write_text("not a GeoPackage\n")
    _refused(capsys, out, _argv(bad, out, "--label-layer", "x"),
             f"--labels {bad} is not a vector file OGR can read")
    _refused(capsys, out, _argv(tmp_path / "missing.gpkg", out, "--label-layer", "x"),
             "missing.gpkg does not exist")


def test_refuses_labels_outside_the_roi(gpkg: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    line = _refused(capsys, out, _argv(gpkg, out, *CLASSES, bbox="141.95,42.70,142.02,42.76"),
                    "no polygon of layer(s) collapse_scars, deposits lies inside the ROI "
                    "(lon 141.9500..142.0200, lat 42.7000..42.7600)")
    assert "collapse_scars: lon 141.8316..141.9300, lat 42.7073..42.8817" in line
    assert str(gpkg) in line


def test_refuses_a_split_without_landslides(gpkg: Path, tmp_path: Path, capsys) -> None:
    """The southern quarter of this crop is mapped but holds no landslide."""
    out = tmp_path / "ds"
    _refused(capsys, out, _argv(gpkg, out, *CLASSES, "--mapped-area", "mapped_area", "--gap-px", "8",
                                bbox="141.905,42.690,141.93,42.725"),
             "the validation part (lon ")


def test_refuses_missing_attribution_and_existing_out(gpkg: Path, small: Path, tmp_path: Path,
                                                      capsys) -> None:
    out = tmp_path / "ds"
    argv = [a for a in _argv(gpkg, out, *CLASSES) if a not in ATTRIBUTION and a != "--attribution"]
    _refused(capsys, out, argv, "README.md (beside --labels) sets attribution terms: pass "
                                "--attribution TEXT|FILE")
    before = sorted(p.relative_to(small) for p in small.rglob("*"))
    rc = main(_argv(gpkg, small, *CLASSES))
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"error: --out {small} already exists; pass --overwrite to replace it"
    assert sorted(p.relative_to(small) for p in small.rglob("*")) == before
    for args, match in ((["--split-axis", "north"], "invalid choice: 'north'"),
                        (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
                        (["--gap-px", "-1"], "--gap-px must be >= 0")):
        _refused(capsys, out, _argv(gpkg, out, *CLASSES, *args), match)


def test_overwrite_replaces(gpkg: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert _make(gpkg, out, "--overwrite", "--gap-px", "16", "--val-fraction", "0.4",
                 "--split-axis", "lon", "--all-touched",
                 classes=["--label-layer", "collapse_scars"]) == 0
    assert not (out / "old.txt").exists()
    top = json.loads((out / "dataset.json").read_text())
    assert top["spatial_split"]["axis"] == "lon" and top["rasterization"]["rule"] == "all_touched"
    assert top["labels_file"]["classes"] == {"collapse_scars": ["collapse_scars"]}
    assert top["spatial_split"]["val_lonlat"][0] > top["spatial_split"]["train_lonlat"][2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
