"""Bad input through the real entry point ``flows.cli.main``: one ``error:`` line, exit 2, no files.

Every case here must be refused while planning, before the Prefect flow starts (an autouse fixture
makes starting a flow fail the test), so the whole file runs in seconds without a Prefect server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from flows.cli import main
from tasks.run.outputs import FINAL_NAMES
from tests.data.crops import (
    T18SVG,
    crop_raster,
    local_source,
    lonlat_bounds,
    synthetic_dem_like,
    t18svg_crops,
    write_catalog,
)

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "data_catalog.yaml"
EXIT_INPUT = 2


@pytest.fixture(autouse=True)
def _no_flow(monkeypatch):
    """Bad input must be found before any flow starts: starting one fails the test."""
    import flows.scan
    import flows.train
    import tasks.run.pipeline

    def refuse(*args, **kwargs):
        pytest.fail("a Prefect flow was started although the input is bad; it must be refused while "
                    "planning")

    monkeypatch.setattr(flows.scan, "scan_flow", refuse)
    monkeypatch.setattr(tasks.run.pipeline, "scan_in_process", refuse)
    monkeypatch.setattr(flows.train, "train_flow", refuse)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit status, stdout, stderr). argparse exits via SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # noqa: BLE001 - a user mistake must never escape main()
        pytest.fail(f"main({argv}) raised {type(exc).__name__} instead of printing one 'error:' "
                    f"line and exiting {EXIT_INPUT}: {str(exc).splitlines()[0] if str(exc) else ''}")
    out, err = capsys.readouterr()
    return code, out, err


def final_files(out: Path) -> list[str]:
    if not out.exists():
        return []
    return sorted([n for n in FINAL_NAMES if (out / n).exists()] + [p.name for p in out.glob("*.tif")])


START_LINE = re.compile(r"^scan \d{8}T\d{6}Z-[0-9a-f]{6}: .* -> .* \((in-process|prefect); ")


def assert_refused(code: int, err: str, out_dir: Path | None, *needles: str) -> str:
    """Exit 2, one stderr line ``error: ...`` naming every needle, no traceback, no final files.

    A mistake found while planning comes after the scan's start line (``scan <run id>: <where> ->
    <out> (...)``, printed within a second so a user sees the scan began); nothing else is printed."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    if len(lines) == 2 and START_LINE.match(lines[0]):
        lines = lines[1:]
    assert len(lines) == 1, f"stderr must be one error line (after the start line), got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not named in: {line}"
    assert code == EXIT_INPUT, f"exit status {code}, expected {EXIT_INPUT}; stderr: {line}"
    if out_dir is not None:
        assert final_files(out_dir) == [], f"files under final names in {out_dir}"
    return line


def absolute_catalog() -> dict:
    """The shipped catalog with its relative paths made absolute (to write variants to tmp)."""
    raw = yaml.safe_load(CATALOG.read_text())
    for source in raw["sources"].values():
        if source.get("dem"):
            source["dem"] = str((REPO / source["dem"]).resolve())
        for scene in source["scenes"]:
            scene["band_template"] = str((REPO / scene["band_template"]).resolve())
            if scene.get("b8a"):
                scene["b8a"] = str((REPO / scene["b8a"]).resolve())
    return raw


@pytest.fixture
def crops_catalog(tmp_path):
    """A catalog over real T18SVG crops + a synthetic DEM; returns a writer taking band overrides.

    T18SVG has no DEM; the index detector needs SLOPE, so the source gets ``synthetic_dem_like``.
    """
    crops = t18svg_crops(tmp_path / "bands", bands=("B02", "B03", "B04"))
    dem = synthetic_dem_like(tmp_path / "bands" / "dem.tif", crops["B02"])
    bbox = list(lonlat_bounds(crops["B02"]))

    def write(**band_overrides) -> Path:
        bands = {**crops, **band_overrides}
        return write_catalog(tmp_path / "cat.yaml", {"s": local_source(bands, dem=dem)},
                             {"r": {"source": "s", "bbox": bbox}})

    return write


def scan_args(catalog: Path, out: Path, *extra) -> list:
    return ["scan", "--catalog", catalog, "--out", out, "--no-progress", *extra]


# ---------------------------------------------------------------------------------------------
# 1, 7, 10, 11: region, ROI and dates


def test_unknown_region(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(CATALOG, out, "--region", "atlantis", "--detector", "index"), capsys)
    line = assert_refused(code, err, out, "unknown region 'atlantis'", "iburi-2018")
    assert not out.exists(), line


def test_roi_outside_the_data(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(CATALOG, out, "--region", "iburi-2018", "--detector", "index",
                                     "--bbox", "10,10,10.1,10.1"), capsys)
    assert_refused(code, err, out, "does not intersect")


def test_start_after_end(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(CATALOG, out, "--region", "iburi-2018", "--detector", "index",
                                     "--start", "2019-01-01", "--end", "2018-01-01"), capsys)
    assert_refused(code, err, out, "--start 2019-01-01 is after --end 2018-01-01")


@pytest.mark.parametrize("bbox", ["1,2,3", "a,b,c,d"])
def test_bad_bbox_string(tmp_path, capsys, bbox):
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(CATALOG, out, "--region", "iburi-2018", "--detector", "index",
                                     "--bbox", bbox), capsys)
    assert_refused(code, err, out, "--bbox")


def test_bbox_with_min_above_max(tmp_path, capsys):
    """Four numbers that parse, but minx > maxx: refused as one line, like the other ROI errors."""
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(CATALOG, out, "--region", "iburi-2018", "--detector", "index",
                                     "--bbox", "142.0,42.7,141.9,42.75"), capsys)
    assert_refused(code, err, out, "bbox")


def test_date_that_does_not_exist(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(CATALOG, out, "--region", "iburi-2018", "--detector", "index",
                                     "--start", "2018-13-01"), capsys)
    assert_refused(code, err, out, "--start", "date")


# ---------------------------------------------------------------------------------------------
# 2, 3: catalog and band names


def test_misspelled_catalog_key(tmp_path, capsys):
    raw = absolute_catalog()
    scene = raw["sources"]["iburi-2018-local"]["scenes"][0]
    scene["band_tokns"] = scene.pop("band_tokens")
    cat = tmp_path / "cat.yaml"
    cat.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(cat, out, "--region", "iburi-2018", "--detector", "index"), capsys)
    assert_refused(code, err, out, "band_tokns", "unknown key", str(cat))


def test_band_not_in_contract_in_catalog(tmp_path, capsys):
    crops = t18svg_crops(tmp_path / "bands", bands=("B02", "B03", "B04"))
    crops["B13"] = crops["B04"]
    cat = write_catalog(tmp_path / "cat.yaml", {"s": local_source(crops)},
                        {"r": {"source": "s", "bbox": list(lonlat_bounds(crops["B02"]))}})
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(cat, out, "--region", "r", "--detector", "index"), capsys)
    assert_refused(code, err, out, "B13")


def test_band_not_in_contract_for_train(tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("train", "val"):  # only their presence is checked before the bands
        (data / split).mkdir(parents=True)
        (data / split / "labels.tif").write_bytes(b"")
    out = tmp_path / "ckpt"
    code, _, err = run_cli(["train", "--data-dir", data, "--name", "m", "--out", out,
                            "--bands", "B02,B13"], capsys)
    assert_refused(code, err, out, "B13")
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------------------------
# 4, 5, 6: band rasters


def test_band_raster_missing(tmp_path, capsys, crops_catalog):
    missing = tmp_path / "nowhere" / "s2_B03.tif"
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(crops_catalog(B03=missing), out, "--region", "r",
                                     "--detector", "index"), capsys)
    assert_refused(code, err, out, str(missing), "does not exist", "B03")


def test_band_file_is_not_a_raster(tmp_path, capsys, crops_catalog):
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster\n")
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(crops_catalog(B03=text), out, "--region", "r",
                                     "--detector", "index"), capsys)
    assert_refused(code, err, out, str(text), "not a raster", "B03")


def test_band_raster_without_crs(tmp_path, capsys, crops_catalog):
    nocrs = crop_raster(T18SVG / "s2_B04.jp2", tmp_path / "nocrs.tif",
                        (440040.0, 4165020.0, 442080.0, 4167060.0), crs=None)
    with rasterio.open(nocrs) as src:
        assert src.crs is None
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(crops_catalog(B04=nocrs), out, "--region", "r",
                                     "--detector", "index"), capsys)
    assert_refused(code, err, out, str(nocrs), "no CRS", "B04")


# ---------------------------------------------------------------------------------------------
# 8, 9: checkpoints


@pytest.fixture(scope="module")
def rgbn_checkpoint(tmp_path_factory) -> Path:
    """A tiny valid checkpoint (U-Net MobileNetV2, random weights) on B02, B03, B04, B08."""
    import torch

    from models.checkpoint import InputTransform, ModelCard, save_checkpoint
    from models.registry import build_model

    torch.manual_seed(0)
    bands = ["B02", "B03", "B04", "B08"]
    model = build_model("Unet", "mobilenet_v2", in_channels=len(bands)).eval()
    card = ModelCard(
        name="test-rgbn-unet", version="0.0.1", arch="Unet", encoder="mobilenet_v2", bands=bands,
        input_transform=InputTransform.from_stats([1000.0] * 4, [500.0] * 4), threshold=0.5,
        trained_on={"dataset": "none", "split": "none", "file_list_sha256": "0" * 64,
                    "labels": "random weights, for tests only"},
        training={"epochs": 0, "loss": "none", "seed": 0})
    _, card_path = save_checkpoint(model, card, tmp_path_factory.mktemp("ckpt"))
    return card_path


def test_checkpoint_needing_a_band_the_source_lacks(tmp_path, capsys, rgbn_checkpoint):
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(CATALOG, out, "--region", "iburi-2018", "--device", "cpu",
                                     "--checkpoint", rgbn_checkpoint), capsys)
    assert_refused(code, err, out, "B08", "cannot provide")


def test_checkpoint_that_is_a_pickle(tmp_path, capsys, rgbn_checkpoint):
    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    card = folder / rgbn_checkpoint.name
    card.write_text(rgbn_checkpoint.read_text())
    weights = card.with_suffix(".safetensors")
    torch.save({"w": torch.zeros(3)}, weights)
    out = tmp_path / "out"
    code, _, err = run_cli(scan_args(CATALOG, out, "--region", "iburi-2018", "--device", "cpu",
                                     "--checkpoint", card), capsys)
    assert_refused(code, err, out, str(weights), "not a safetensors file", "pickle")


# ---------------------------------------------------------------------------------------------
# 12, 13: evaluate without labels, a finished run in --out


def test_evaluate_without_labels(tmp_path, capsys):
    data = tmp_path / "scene"
    data.mkdir()
    from tasks.core.bands import BAND_NAMES

    image = np.full((len(BAND_NAMES), 32, 32), np.nan, dtype=np.float32)
    image[:4] = 1000.0
    profile = dict(driver="GTiff", width=32, height=32, count=len(BAND_NAMES), dtype="float32",
                   crs="EPSG:32654", transform=rasterio.transform.from_origin(500000, 4700000, 10, 10))
    with rasterio.open(data / "image.tif", "w", **profile) as dst:
        dst.write(image)
        dst.descriptions = BAND_NAMES
    code, out, err = run_cli(["evaluate", "--data-dir", data, "--checkpoint", "index"], capsys)
    assert_refused(code, err, None, "labels.tif", str(data))
    assert out == ""
    assert sorted(p.name for p in data.iterdir()) == ["image.tif"]


def test_out_holding_a_finished_run(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in FINAL_NAMES:
        (out / name).write_text(f"previous run: {name}")
    code, _, err = run_cli(scan_args(CATALOG, out, "--region", "iburi-2018", "--detector", "index"), capsys)
    assert_refused(code, err, None, "already holds a run", "--overwrite")
    for name in FINAL_NAMES:  # the finished run is left alone
        assert (out / name).read_text() == f"previous run: {name}"
    assert not (out / ".staging").exists()


# ---------------------------------------------------------------------------------------------
# help and listings


@pytest.mark.parametrize("argv, needles", [
    (["--help"], ["scan", "train", "evaluate", "regions", "models"]),
    (["scan", "--help"], ["--region", "--bbox", "--aoi", "--start", "--end", "--catalog",
                          "--checkpoint", "--detector", "--overlap", "--threshold", "--min-area-m2",
                          "--out", "--overwrite"]),
    (["train", "--help"], ["--data-dir", "--name", "--model", "--bands", "--epochs"]),
    (["evaluate", "--help"], ["--data-dir", "--checkpoint", "--threshold", "--json"]),
])
def test_help(capsys, argv, needles):
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    for needle in needles:
        assert needle in out, f"{needle!r} missing from `landslide {' '.join(argv)}`"


def test_regions_lists_the_catalog(capsys):
    code, out, err = run_cli(["regions", "--catalog", CATALOG], capsys)
    assert code == 0, err
    assert "iburi-2018" in out and "iburi-2018-local" in out and "kind=local" in out


def test_models_lists_the_paper_models_and_what_each_card_holds(capsys):
    from models.cards import DEFAULT_CHECKPOINT, list_checkpoints
    from models.registry import list_models

    code, out, err = run_cli(["models", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["architectures"] == list_models() and len(info["architectures"]) == 12
    cards = {c["name"]: c for c in info["checkpoints"]}
    assert sorted(cards) == list_checkpoints() and info["checkpoints"][0]["name"] == DEFAULT_CHECKPOINT
    default = cards[DEFAULT_CHECKPOINT]
    assert default["labels"] == "real" and default["bands"] == ["B02", "B03", "B04", "SLOPE", "DEM"]
    val = next(m for m in default["metrics"] if m["name"] == "val")
    assert val["basis"] == "real inventory labels" and 0 < val["f1"] < 1
    code, out, err = run_cli(["models"], capsys)
    assert code == 0, err
    assert all(name in out for name in list_models())
    assert f"{DEFAULT_CHECKPOINT}  (default)" in out and f"F1 {val['f1']:.3f}" in out
    # Weak-label agreement is never presented as accuracy against real labels.
    weak_lines = [line for line in out.splitlines() if "weak_labels:" in line]
    assert weak_lines and all("(not accuracy)" in line for line in weak_lines)


def test_version_and_models_import_neither_torch_nor_prefect():
    """`landslide --version` and `landslide models` answer without the heavy imports (issue 21)."""
    code = ("import sys; from flows.cli import main\n"
            "for argv in (['--version'], ['models'], ['models', '--json']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as exc:\n"
            "        assert exc.code in (0, None), exc.code\n"
            "heavy = sorted(m for m in ('torch', 'prefect', 'segmentation_models_pytorch', 'rasterio')"
            " if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_version(capsys):
    from importlib import metadata

    code, out, err = run_cli(["--version"], capsys)
    assert code == 0 and err == ""
    assert out.strip().startswith(f"landslide-pipeline {metadata.version('landslide-pipeline')} (Python 3.")
