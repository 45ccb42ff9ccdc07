"""The scan flow end to end, through ``flows.cli.main`` under the session Prefect test harness.

Most runs use the weights-free ``--detector index`` so the tests do not depend on a trained model;
one test uses the shipped checkpoint (skipped while it does not exist). Each scan covers a few
hundred pixels a side and takes seconds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.features import rasterize
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

from flows.cli import main
from tasks.core.stitch import Stitcher
from tasks.core.tiling import iter_windows
from tasks.run.outputs import FINAL_NAMES, NODATA_U8, PROB_SCALE
from tests.data.crops import local_source, lonlat_bounds, synthetic_dem_like, t18svg_crops, write_catalog
from tests.data.sample_run import IBURI_BBOX, SECRET

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "data_catalog.yaml"
DEFAULT_CARD = REPO / "models" / "checkpoints" / "iburi2018-real-unet-efficientnet-b0.json"
POST_SCENE = "iburi-2018-post-s2-mosaic"
PRE_SCENE = "iburi-2018-pre-s2-mosaic"

# docs/contracts.md section 3, written out here so the test pins the contract, not the implementation.
LANDSLIDE_SCHEMA = [
    ("landslide_id", "int"), ("area_m2", "real"), ("perimeter_m", "real"), ("area_px_m2", "real"),
    ("length_m", "real"), ("width_m", "real"), ("elongation", "real"), ("mean_prob", "real"),
    ("max_prob", "real"), ("confidence_class", "text"), ("uncertainty", "real"),
    ("mean_slope_deg", "real"), ("max_slope_deg", "real"), ("aspect_deg", "real"),
    ("mean_elev_m", "real"), ("relief_m", "real"), ("dem", "text"), ("centroid_lon", "real"), ("centroid_lat", "real"),
    ("scene_id", "text"), ("acquired", "datetime"), ("acquired_note", "text"), ("model", "text"),
    ("run_id", "text"), ("detected_at", "datetime"),
]


def run_scan(out: Path, *args) -> Path:
    argv = ["scan", "--catalog", CATALOG, "--out", out, "--no-progress", *args]
    code = main([str(a) for a in argv])
    assert code == 0
    return out


def bbox_arg(bbox) -> str:
    return ",".join(f"{v:.6f}" for v in bbox)


def read_u8(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(1), src.profile


def decode(encoded: np.ndarray) -> np.ndarray:
    out = encoded.astype(np.float32) / PROB_SCALE
    out[encoded == NODATA_U8] = np.nan
    return out


def assert_published(out: Path) -> None:
    """Exactly the final files; no staging or work folder left behind."""
    assert sorted(p.name for p in out.iterdir()) == sorted(FINAL_NAMES)


def to_utm(geom, crs: str):
    return shp_transform(Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform,
                         shapely.segmentize(geom, 0.0005))


# ---------------------------------------------------------------------------------------------
# 1. The Iburi sample on a small bbox, index detector


# iburi_run (tests/conftest.py): the session's sample scan of IBURI_BBOX, with SECRET in the
# environment (credentials there never reach outputs)


@pytest.fixture(scope="module")
def iburi_manifest(iburi_run) -> dict:
    return json.loads((iburi_run / "manifest.json").read_text())


def test_run_folder_holds_the_final_files_only(iburi_run):
    assert_published(iburi_run)


def test_geopackage_layers_and_schema(iburi_run):
    gpkg = iburi_run / "landslides.gpkg"
    assert [tuple(x) for x in pyogrio.list_layers(gpkg)] == [("landslides", "Polygon"),
                                                             ("footprint", "MultiPolygon"),
                                                             ("layer_styles", None)]  # QGIS styles
    info = pyogrio.read_info(gpkg, layer="landslides")
    assert info["crs"] == "EPSG:32654"
    assert info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == [name for name, _ in LANDSLIDE_SCHEMA]
    for (name, kind), dtype in zip(LANDSLIDE_SCHEMA, info["dtypes"]):
        want = {"int": ("int64", "int32"), "real": ("float64",), "text": ("object",)}.get(kind)
        if kind == "datetime":
            assert str(dtype).startswith("datetime64"), (name, dtype)
        else:
            assert str(dtype) in want, (name, dtype)
    fp = pyogrio.read_info(gpkg, layer="footprint")
    assert fp["crs"] == "EPSG:32654" and fp["geometry_type"] == "MultiPolygon"


def test_polygons_and_attributes(iburi_run, iburi_manifest):
    gdf = gpd.read_file(iburi_run / "landslides.gpkg", layer="landslides")
    assert len(gdf) > 0
    # which DEM the terrain attributes come from: the catalog's local AW3D30 file
    assert (gdf["dem"] == Path(iburi_manifest["inputs"]["dem_path"]).name).all()
    assert iburi_manifest["inputs"]["dem_product"] is None  # a local file, not a STAC product
    assert gdf.crs.to_epsg() == 32654
    assert gdf.is_valid.all() and (gdf.geom_type == "Polygon").all()
    assert gdf["landslide_id"].is_unique and (gdf["landslide_id"] >= 1).all()
    np.testing.assert_allclose(gdf["area_m2"], gdf.geometry.area, rtol=1e-9)
    np.testing.assert_allclose(gdf["perimeter_m"], gdf.geometry.length, rtol=1e-9)
    assert (gdf["area_px_m2"] >= 500).all()  # --min-area-m2 default (on pixels, before simplifying)
    assert gdf["mean_prob"].between(0, 1).all() and gdf["max_prob"].between(0, 1).all()
    assert (gdf["mean_prob"] <= gdf["max_prob"] + 1e-9).all()
    assert (gdf["mean_prob"] >= 0.5 - 1e-6).all()  # every pixel passed the index threshold
    assert gdf["uncertainty"].between(0, 1).all()
    assert gdf["mean_slope_deg"].between(0, 90).all() and gdf["mean_elev_m"].notna().all()
    minx, miny, maxx, maxy = IBURI_BBOX
    assert gdf["centroid_lon"].between(minx, maxx).all() and gdf["centroid_lat"].between(miny, maxy).all()
    lonlat = gdf.geometry.centroid.to_crs("EPSG:4326")
    np.testing.assert_allclose(gdf["centroid_lon"], lonlat.x, atol=1e-7)
    np.testing.assert_allclose(gdf["centroid_lat"], lonlat.y, atol=1e-7)
    assert gdf["model"].str.startswith("index-rule@").all()
    assert (gdf["model"] == iburi_manifest["detector"]["ref"]).all()
    assert (gdf["scene_id"] == POST_SCENE).all()
    assert (gdf["run_id"] == iburi_manifest["run_id"]).all()
    assert gdf["acquired"].isna().all()  # a composite: its scene dates are unknown
    assert gdf["detected_at"].notna().all() and str(gdf["detected_at"].dt.tz) == "UTC"
    fp = gpd.read_file(iburi_run / "landslides.gpkg", layer="footprint")
    assert len(fp) == 1 and fp["status"].iloc[0] == "analysed"
    assert fp.geometry.iloc[0].buffer(1e-6).contains(gdf.geometry.union_all())


def test_cogs_are_valid_and_share_one_grid(iburi_run, iburi_manifest):
    grid = iburi_manifest["grid"]
    profiles = {}
    for name in ("probability.tif", "uncertainty.tif", "mask.tif"):
        with rasterio.open(iburi_run / name) as src:
            assert src.driver == "GTiff"
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", name
            assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
            assert src.count == 1 and src.dtypes[0] == "uint8" and src.nodata == NODATA_U8
            assert src.crs.to_epsg() == 32654
            profiles[name] = (src.width, src.height, tuple(src.transform)[:6])
            if name != "mask.tif":
                assert src.scales[0] == pytest.approx(1 / 254)
    assert len(set(profiles.values())) == 1, profiles
    width, height, transform = profiles["mask.tif"]
    assert (width, height) == (grid["width"], grid["height"])
    np.testing.assert_allclose(transform, grid["transform"])
    assert transform[0] == 10 and transform[4] == -10 and transform[2] % 10 == 0 and transform[5] % 10 == 0
    prob, _ = read_u8(iburi_run / "probability.tif")
    mask, _ = read_u8(iburi_run / "mask.tif")
    assert set(np.unique(mask)) <= {0, 1, 255}
    assert ((prob == NODATA_U8) == (mask == NODATA_U8)).all()  # same analysed area
    assert (prob <= 254).sum() > 0.95 * prob.size  # the small bbox lies well inside the sample


def test_mask_matches_polygons(iburi_run):
    mask, profile = read_u8(iburi_run / "mask.tif")
    gdf = gpd.read_file(iburi_run / "landslides.gpkg", layer="landslides")
    burned = rasterize(((g, 1) for g in gdf.geometry), out_shape=mask.shape,
                       transform=profile["transform"], fill=0, dtype="uint8")
    # the raster-exact area is the mask's; the written outlines are simplified (by default half a
    # pixel diagonal, README "Geometry of the polygons"), so a few border pixels' centres change
    # side (the exact outlines: tests/flows/test_geometry_run.py)
    assert gdf["area_px_m2"].sum() == (mask == 1).sum() * 100.0
    # (840 of 13,651 on this sample: a one-pixel stair's chord runs through the pixel centres)
    differ = ((burned == 1) != (mask == 1)).sum()
    assert differ <= 0.10 * (mask == 1).sum()
    assert gdf["area_m2"].sum() == pytest.approx((mask == 1).sum() * 100.0, rel=0.01)


def test_manifest(iburi_run, iburi_manifest):
    m = iburi_manifest
    for key in ("run_id", "inputs", "grid", "detector", "parameters", "versions", "timings", "counts"):
        assert key in m, key
    assert m["inputs"]["scene_ids"] == [POST_SCENE] and m["inputs"]["source"] == "iburi-2018-local"
    assert set(m["inputs"]["band_paths"]) == {"B02", "B03", "B04"}
    assert m["grid"]["crs"] == "EPSG:32654" and m["grid"]["res_m"] == 10
    assert m["detector"]["kind"] == "index" and m["detector"]["ref"].startswith("index-rule@")
    assert m["parameters"]["overlap_px"] == 32
    assert "torch" in m["versions"] and "rasterio" in m["versions"] and "prefect" in m["versions"]
    assert all(v >= 0 for v in m["timings"].values())
    gdf = gpd.read_file(iburi_run / "landslides.gpkg", layer="landslides")
    mask, _ = read_u8(iburi_run / "mask.tif")
    assert m["counts"]["polygons"] == len(gdf)
    assert m["counts"]["landslide_px"] == int((mask == 1).sum())
    assert m["counts"]["landslide_area_m2"] == pytest.approx(gdf["area_m2"].sum())
    text = (iburi_run / "manifest.json").read_text()
    assert SECRET not in text
    assert "SH_CLIENT" not in text and "password" not in text.lower()


# ---------------------------------------------------------------------------------------------
# 2. Seams


def seam_ratio(prob: np.ndarray, size: int = 128, overlap: int = 32) -> float:
    """Mean |p difference| across patch borders / that inside patches (columns and rows pooled).

    Patch starts are those of ``tasks.core.tiling.iter_windows`` (multiples of size - overlap, the
    last one shifted to the edge); a border is where a patch starts or ends.
    """
    border_sum = border_n = inner_sum = inner_n = 0.0
    for arr in (prob, prob.T):
        length = arr.shape[1]
        stride = size - overlap
        starts = list(range(0, length - size + 1, stride))
        if starts[-1] != length - size:
            starts.append(length - size)
        borders = {s for s in starts if s > 0} | {s + size for s in starts if s + size < length}
        diff = np.abs(arr[:, 1:] - arr[:, :-1])  # column j - 1 -> diff between columns j - 1 and j
        is_border = np.zeros(length - 1, dtype=bool)
        is_border[[b - 1 for b in borders]] = True
        ok = np.isfinite(diff)
        border_sum += diff[:, is_border][ok[:, is_border]].sum()
        border_n += ok[:, is_border].sum()
        inner_sum += diff[:, ~is_border][ok[:, ~is_border]].sum()
        inner_n += ok[:, ~is_border].sum()
    assert border_n > 0 and inner_n > 0
    return float((border_sum / border_n) / (inner_sum / inner_n))


def _stitch_synthetic(overlap_weights: int) -> np.ndarray:
    """Patches of one textured scene, each shifted by its own constant, stitched with the real
    overlapping windows (size 128, overlap 32) and ``overlap_weights`` px of blending ramp."""
    rng = np.random.default_rng(0)
    h = w = 416  # starts 0, 96, 192, 288
    texture = rng.normal(0.0, 0.03, (h, w)).astype(np.float32)
    stitcher = Stitcher(h, w, 128, overlap_weights)
    for window in iter_windows(h, w, 128, 32):
        r, c = int(window.row_off), int(window.col_off)
        p = 0.5 + texture[r:r + 128, c:c + 128] + rng.uniform(-0.3, 0.3)
        stitcher.add(window, p, np.ones((128, 128), dtype=bool))
    return stitcher.result()


def test_seam_measure_detects_unblended_stitching():
    """Control: the measure sees seams when patches are averaged without a weight window."""
    unblended = seam_ratio(_stitch_synthetic(0))
    blended = seam_ratio(_stitch_synthetic(32))
    assert unblended > 3.0, f"control failed: unblended border/interior ratio {unblended:.2f}"
    assert blended < 1.5, f"blended synthetic border/interior ratio {blended:.2f}"


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    """A U-Net MobileNetV2 with random weights on the shipped model's bands: untrained, but a real
    network whose zero-padded convolutions make patch edges differ, i.e. seams when not blended."""
    import torch

    from models.checkpoint import InputTransform, ModelCard, save_checkpoint
    from models.registry import build_model

    torch.manual_seed(0)
    bands = ["B02", "B03", "B04", "SLOPE", "DEM"]
    model = build_model("Unet", "mobilenet_v2", in_channels=len(bands)).eval()
    card = ModelCard(
        name="random-unet", version="0.0.1", arch="Unet", encoder="mobilenet_v2", bands=bands,
        input_transform=InputTransform.from_stats([1000, 900, 800, 15, 150], [300, 300, 300, 10, 100]),
        threshold=0.5, trained_on={"dataset": "none", "split": "none", "file_list_sha256": "0" * 64,
                                   "labels": "none: random weights, for tests only"},
        training={"epochs": 0, "loss": "none", "seed": 0})
    return save_checkpoint(model, card, tmp_path_factory.mktemp("ckpt"))[1]


SEAM_BBOX = "141.95,42.71,141.99,42.74"  # ~335 x 340 px: 4 to 5 patch borders in each direction


def test_model_run_blends_patches_without_seams(prefect_harness, tmp_path, random_checkpoint):
    """A network through the whole flow: blended (overlap 32) shows no seams; the same network
    tiled without overlap does, so the measure is sensitive to real model edge effects."""
    ratios = {}
    for overlap in (32, 0):
        out = run_scan(tmp_path / f"run{overlap}", "--region", "iburi-2018", "--bbox", SEAM_BBOX,
                       "--checkpoint", random_checkpoint, "--device", "cpu", "--overlap", overlap)
        assert_published(out)
        p = decode(read_u8(out / "probability.tif")[0])
        assert min(p.shape) > 2 * 128 and np.isfinite(p).mean() > 0.95  # ROI corners: nodata
        ratios[overlap] = seam_ratio(p, 128, overlap)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["detector"]["kind"] == "model"
        assert manifest["detector"]["ref"].startswith("random-unet@")
        assert manifest["parameters"]["overlap_px"] == overlap
    msg = f"border/interior ratio: blended {ratios[32]:.3f}, no overlap {ratios[0]:.3f}"
    assert ratios[32] < 1.5, msg
    assert ratios[0] > 1.8, msg


@pytest.mark.skipif(not DEFAULT_CARD.exists(), reason=f"shipped checkpoint {DEFAULT_CARD.name} "
                    "not built yet (landslide train ... --out models/checkpoints)")
def test_default_model_run_has_no_seams(prefect_harness, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        out = run_scan(tmp_path / "run", "--region", "iburi-2018", "--bbox", SEAM_BBOX, "--device", "cpu")
    assert_published(out)
    # the bundled sample is the card's own training scene: the out-of-domain check stays silent
    assert not [r for r in caplog.records if "outside the training domain" in r.getMessage()]
    gdf = gpd.read_file(out / "landslides.gpkg", layer="landslides")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["detector"]["kind"] == "model"
    assert manifest["detector"]["ref"].startswith("iburi2018-real-unet-efficientnet-b0@")
    assert (gdf["model"] == manifest["detector"]["ref"]).all()
    (check,) = manifest["domain_check"]
    assert not check["outside"] and sorted(check["bands"]) == ["B02", "B03", "B04", "DEM", "SLOPE"]
    prob, _ = read_u8(out / "probability.tif")
    p = decode(prob)
    assert min(p.shape) > 2 * 128, p.shape  # several patch borders in both directions
    ratio = seam_ratio(p)
    assert ratio < 1.5, f"seams: border/interior probability difference ratio {ratio:.3f}"


# ---------------------------------------------------------------------------------------------
# 3. An ROI smaller than one patch


def test_roi_smaller_than_a_patch(prefect_harness, tmp_path):
    bbox = (141.960, 42.730, 141.964, 42.734)  # ~330 m x 445 m
    out = run_scan(tmp_path / "run", "--region", "iburi-2018", "--bbox", bbox_arg(bbox),
                   "--detector", "index")
    assert_published(out)
    manifest = json.loads((out / "manifest.json").read_text())
    grid = manifest["grid"]
    assert grid["width"] < 128 and grid["height"] < 128
    for name in ("probability.tif", "uncertainty.tif", "mask.tif"):
        with rasterio.open(out / name) as src:
            assert (src.width, src.height) == (grid["width"], grid["height"])
            assert (src.read(1) != NODATA_U8).mean() > 0.8
    roi = to_utm(box(*bbox), grid["crs"])
    assert abs(grid["width"] * 10 - (roi.bounds[2] - roi.bounds[0])) <= 20
    assert abs(grid["height"] * 10 - (roi.bounds[3] - roi.bounds[1])) <= 20
    assert manifest["counts"]["patches"] == 1


# ---------------------------------------------------------------------------------------------
# 4, 5. Nodata: all-nodata input, and a NaN block in one band


def _t18svg_catalog(tmp_path: Path, bands: dict[str, Path], bounds_of: Path) -> Path:
    # T18SVG has no DEM, and the index detector needs SLOPE: give the source a synthetic DEM.
    dem = synthetic_dem_like(tmp_path / "dem.tif", bounds_of)
    return write_catalog(tmp_path / "cat.yaml", {"s": local_source(bands, dem=dem)},
                         {"r": {"source": "s", "bbox": list(lonlat_bounds(bounds_of))}})


def _blanked(crops: dict[str, Path], tmp_path: Path, keep_cols: dict[str, slice]) -> dict[str, Path]:
    """Copies of the crops with every pixel nodata (0) except the columns ``keep_cols[band]``."""
    out = {}
    for band, path in crops.items():
        with rasterio.open(path) as src:
            profile, data = src.profile.copy(), src.read()
        blank = np.zeros_like(data)
        if band in keep_cols:
            blank[:, :, keep_cols[band]] = data[:, :, keep_cols[band]]
        profile.update(nodata=0)
        out[band] = tmp_path / f"blank_{band}.tif"
        with rasterio.open(out[band], "w", **profile) as dst:
            dst.write(blank)
    return out


def _refused(err: str, code: int, out: Path, *needles: str) -> str:
    """One ``error:`` line (Prefect's own log lines aside), exit 2, nothing under a final name."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not any((out / name).exists() for name in FINAL_NAMES)
    return errors[0]


def test_all_nodata_input_is_refused_not_reported_as_no_landslides(tmp_path, capsys):
    """Bands that cover the ROI but hold only nodata there: "0 landslides" would be a lie (refused
    while planning, before Prefect starts)."""
    crops = t18svg_crops(tmp_path / "real", bands=("B02", "B03", "B04"))
    cat = _t18svg_catalog(tmp_path, _blanked(crops, tmp_path, {}), crops["B02"])
    out = tmp_path / "run"
    code = main(["scan", "--catalog", str(cat), "--region", "r", "--detector", "index",
                 "--out", str(out), "--no-progress"])
    line = _refused(capsys.readouterr().err, code, out, "band B02", "no data in the ROI")
    assert "nodata or cloud" not in line


@pytest.mark.parametrize("orchestration", ["prefect", "in-process"])
def test_layers_with_data_in_no_common_pixel_are_refused(tmp_path, orchestration):
    """B02 has data only in the western half and B03 only in the eastern half: each layer passes
    the planning check, and the align step (inside the Prefect flow, or run in-process) finds that
    no pixel can be analysed. Run as a user runs it, in its own process: the log keeps no traceback
    for it."""
    crops = t18svg_crops(tmp_path / "real", bands=("B02", "B03", "B04"))
    with rasterio.open(crops["B02"]) as src:
        half = src.width // 2
    keep = {"B02": slice(0, half), "B03": slice(half, None), "B04": slice(None)}
    cat = _t18svg_catalog(tmp_path, _blanked(crops, tmp_path, keep), crops["B02"])
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "scan", "--catalog", str(cat), "--region",
                           "r", "--detector", "index", "--out", str(out), "--no-progress",
                           "--orchestration", orchestration],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    _refused(proc.stderr, proc.returncode, out, "no pixel of the ROI has data in every layer",
             "B02 ", "B03 ")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if orchestration == "prefect":
        assert "Task run 'align" in proc.stderr  # it was the flow's align step that refused


def test_nan_block_in_a_band_is_not_analysed(prefect_harness, tmp_path):
    crops = t18svg_crops(tmp_path / "real", bands=("B02", "B03", "B04"))
    with rasterio.open(crops["B03"]) as src:
        data = src.read(1).astype(np.float32)
        profile = src.profile.copy()
        block_transform = src.transform
    r0, r1, c0, c1 = 60, 130, 40, 150
    data[r0:r1, c0:c1] = np.nan
    profile.update(dtype="float32", nodata=None)
    nan_b03 = tmp_path / "b03_nan.tif"
    with rasterio.open(nan_b03, "w", **profile) as dst:
        dst.write(data, 1)
    cat = _t18svg_catalog(tmp_path, {**crops, "B03": nan_b03}, crops["B02"])
    out = tmp_path / "run"
    assert main(["scan", "--catalog", str(cat), "--region", "r", "--detector", "index",
                 "--out", str(out), "--no-progress"]) == 0
    assert_published(out)
    mask, mprofile = read_u8(out / "mask.tif")
    # the NaN block in the band's CRS (EPSG:32618, which is also the analysis CRS here)
    x0, y0 = block_transform * (c0, r0)
    x1, y1 = block_transform * (c1, r1)
    nan_box = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    assert mprofile["crs"].to_epsg() == 32618
    rows, cols = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    xs, ys = mprofile["transform"] * (cols + 0.5, rows + 0.5)
    inside = shapely.contains_xy(nan_box, xs, ys)
    assert inside.sum() > 0.9 * (r1 - r0) * (c1 - c0)
    assert (mask[inside] == NODATA_U8).all()  # the NaN block is not analysed ...
    with rasterio.open(crops["B02"]) as src:
        crop_box = box(*src.bounds)
    elsewhere = (shapely.contains_xy(crop_box.buffer(-20), xs, ys)
                 & ~shapely.contains_xy(nan_box.buffer(20), xs, ys))
    assert (mask[elsewhere] != NODATA_U8).mean() > 0.99  # ... the rest of the band is
    fp = gpd.read_file(out / "landslides.gpkg", layer="footprint").geometry.iloc[0]
    assert fp.intersection(nan_box.buffer(-10)).area == 0
    gdf = gpd.read_file(out / "landslides.gpkg", layer="landslides")
    assert not gdf.geometry.intersects(nan_box.buffer(-10)).any()
    assert len(gdf) > 0 and (gdf["acquired"] == pd.Timestamp("2016-01-12T15:58:00Z")).all()
    assert gdf["acquired_note"].isna().all()  # only explains a missing date
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["band_stats"]["B03"]["nan_pixels_in_source"] == (r1 - r0) * (c1 - c0)


# ---------------------------------------------------------------------------------------------
# 6. A failure mid-run publishes nothing


FAIL_BBOX = [141.96, 42.73, 141.97, 42.74]


def assert_nothing_published(out: Path) -> None:
    assert out.exists()  # the plan was written, so the folder exists ...
    assert [n for n in FINAL_NAMES if (out / n).exists()] == []  # ... but holds no final file
    assert list(out.glob("*.tif")) == [] and list(out.glob("*.gpkg")) == []
    assert not (out / ".staging").exists()


@pytest.mark.parametrize("runner", ["prefect", "in-process"])
@pytest.mark.parametrize("step", ["write_geopackage", "write_cog_blockwise", "write_manifest"])
def test_failure_mid_run_leaves_no_final_files(prefect_harness, tmp_path, monkeypatch, step, runner):
    """A step failing after others have staged their files: the flow (or the same steps run
    in-process) raises, nothing is published."""
    import tasks.run.steps
    from flows.scan import scan_flow
    from tasks.run.pipeline import scan_in_process

    def boom(*args, **kwargs):
        raise RuntimeError(f"injected failure in {step}")

    monkeypatch.setattr(tasks.run.steps, step, boom)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected failure"):
        (scan_flow if runner == "prefect" else scan_in_process)(
            out=str(out), region="iburi-2018", bbox=FAIL_BBOX, detector="index",
            options={"catalog": str(CATALOG), "progress": False})
    assert_nothing_published(out)


@pytest.mark.parametrize("orchestration", ["prefect", "in-process"])
def test_the_manifest_records_how_the_run_was_executed(prefect_harness, tmp_path, orchestration):
    import logging

    before = {n: list(logging.getLogger(n).handlers) for n in ("tasks", "models", "landslide")}
    out = run_scan(tmp_path / "run", "--region", "iburi-2018", "--bbox", bbox_arg(FAIL_BBOX),
                   "--detector", "index", "--orchestration", orchestration)
    execution = json.loads((out / "manifest.json").read_text())["execution"]
    assert execution["orchestration"] == orchestration
    if orchestration == "prefect":
        assert execution["flow_run_id"] and execution["flow_run_name"]
    else:
        assert "--orchestration in-process" in execution["why"]
    # the in-process scan's stderr logging is gone once the scan is (later commands stay quiet)
    assert {n: list(logging.getLogger(n).handlers) for n in before} == before


def test_auto_orchestration_follows_the_configured_prefect_server(tmp_path, monkeypatch):
    """auto: Prefect where a server is configured (the environment, or the active profile of
    PREFECT_HOME/profiles.toml), else in-process."""
    from flows.cli import _orchestration

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert _orchestration("auto")[0] == "in-process"
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://prefect.example:4200/api"\n'
        '[profiles.local]\n')
    mode, why = _orchestration("auto")
    assert mode == "prefect" and "prefect.example" in why
    monkeypatch.setenv("PREFECT_PROFILE", "local")
    assert _orchestration("auto")[0] == "in-process"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert _orchestration("auto")[0] == "prefect"
    assert _orchestration("in-process")[0] == "in-process"


def test_cli_turns_an_internal_failure_into_an_exit_status(prefect_harness, tmp_path, monkeypatch,
                                                           capsys):
    """STYLE.md: ``except Exception`` at the CLI boundary turns a failure into a one-line message
    and an exit code (flows/cli.py defines EXIT_FAILED = 1 for it); nothing is published."""
    import tasks.run.steps

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure in write_manifest")

    monkeypatch.setattr(tasks.run.steps, "write_manifest", boom)
    out = tmp_path / "run"
    argv = ["scan", "--catalog", str(CATALOG), "--region", "iburi-2018", "--detector", "index",
            "--bbox", bbox_arg(FAIL_BBOX), "--out", str(out), "--no-progress"]
    try:
        code = main(argv)
    except RuntimeError as exc:
        code = f"{type(exc).__name__} escaped main(): {exc}"
    assert_nothing_published(out)
    err = capsys.readouterr().err
    assert code == 1, code
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "injected failure" in last, last


# ---------------------------------------------------------------------------------------------
# 7. --aoi and a date window selecting the pre-event scene


def test_aoi_and_pre_event_window(prefect_harness, tmp_path):
    aoi = shapely.Polygon([(141.950, 42.720), (141.985, 42.722), (141.975, 42.748), (141.955, 42.740)])
    aoi_path = tmp_path / "aoi.geojson"
    aoi_path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": mapping(aoi)}]}))
    out = run_scan(tmp_path / "run", "--region", "iburi-2018", "--aoi", aoi_path,
                   "--start", "2017-07-01", "--end", "2018-07-31", "--detector", "index")
    assert_published(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["scene_ids"] == [PRE_SCENE]
    fp = gpd.read_file(out / "landslides.gpkg", layer="footprint")
    assert fp.crs.to_epsg() == 32654 and (fp["scene_id"] == PRE_SCENE).all()
    aoi_utm = to_utm(aoi, "EPSG:32654")
    footprint = fp.geometry.iloc[0]
    half_pixel_diagonal = 10 * math.sqrt(2) / 2
    assert aoi_utm.buffer(half_pixel_diagonal).contains(footprint)
    # The pre-event mosaic is cloud-masked (0 = nodata) over about half of this AOI: the footprint
    # is the AOI less those pixels, measured here on the band's own EPSG:4326 grid.
    with rasterio.open(REPO / "data/iburi_2018/s2_pre/S2_pre_B2.tif") as src:
        in_aoi = rasterize([(aoi, 1)], out_shape=src.shape, transform=src.transform, dtype="uint8") == 1
        valid_fraction = float((src.read(1)[in_aoi] != src.nodata).mean())
    assert 0.2 < valid_fraction < 0.8
    assert footprint.area == pytest.approx(valid_fraction * aoi_utm.area, rel=0.1)
    gdf = gpd.read_file(out / "landslides.gpkg", layer="landslides")
    assert (gdf["scene_id"] == PRE_SCENE).all()
    assert aoi_utm.buffer(half_pixel_diagonal).contains(gdf.geometry.union_all()) or len(gdf) == 0
