"""The ``sentinelhub`` source (tasks/sources/sentinelhub.py) against the local Sentinel Hub server.

The unmodified sentinelhub client talks to ``devservers/sentinelhub_server.py`` over HTTP: OAuth,
Catalog search, Process API (real T18SVG pixels), scripted faults.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from shapely.geometry import box

from devservers.sentinelhub_server import catalog_id
from devservers.stac_server import (
    BASELINE_OFFSET_DN,
    S2_JP2_DIR,
    SCENES,
    SPLIT_EAST_DN_DELTA,
    SPLIT_EAST_X,
    SPLIT_WEST_X,
)
from tasks.core.bands import BAND_NAMES, SPECTRAL_BAND_NAMES
from tasks.core.errors import InputError, SourceError
from tasks.core.grid import make_grid
from tasks.sources.catalog import SentinelHubSource
from tasks.sources.sentinelhub import fetch_sentinelhub_inputs, plan_pieces

pytest.importorskip("sentinelhub")

ROI = box(-75.70, 37.62, -75.69, 37.628)  # ~0.9 x 0.9 km inside the served T18SVG subset
BBOX = "-75.70,37.62,-75.675,37.64"  # the ROI of tests/flows/test_t18svg_scan.py
JAN = (dt.date(2016, 1, 1), dt.date(2016, 3, 1))
PROCESS = "/api/v1/process"
L1C_0112 = "S2A_MSIL1C_20160112T155612_N0201_R097_T18SVG_20160112T160000"
L1C_0201 = "S2A_MSIL1C_20160201T155612_N0201_R097_T18SVG_20160201T160000"


@pytest.fixture
def creds_env(sentinelhub_api, monkeypatch):
    monkeypatch.setenv("SH_CLIENT_ID", sentinelhub_api.client_id)
    monkeypatch.setenv("SH_CLIENT_SECRET", sentinelhub_api.client_secret)
    return sentinelhub_api


def _source(api, **kw) -> SentinelHubSource:
    return SentinelHubSource(kind="sentinelhub", base_url=api.base_url, token_url=api.token_url,
                             max_retries=2, timeout_s=10, **kw)


def _fetch(api, cache, bands=SPECTRAL_BAND_NAMES, window=JAN, roi=ROI, **kw):
    max_px = kw.pop("max_px", 2500)
    return fetch_sentinelhub_inputs(_source(api, **kw), "sh-test", bands, roi, *window, cache,
                                    max_px=max_px, retry_sleep_s=0.05)


def _read(inputs) -> np.ndarray:
    return np.stack([rasterio.open(p).read(1) for p in inputs.band_paths.values()])


def _reference(band: str, grid) -> np.ndarray:
    """The local JPEG2000 band rendered on ``grid`` (bilinear from its native 10/20/60 m grid)."""
    out = np.zeros(grid.shape, dtype=np.uint16)
    with rasterio.open(S2_JP2_DIR / f"s2_{band}.jp2") as src:
        reproject(src.read(1), out, src_transform=src.transform, src_crs=src.crs, src_nodata=0,
                  dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=0, resampling=Resampling.bilinear)
    return out


def test_plan_pieces_cover_the_grid_once():
    pieces = plan_pieces(5001, 2600, 2500)
    assert len(pieces) == 6 and max(max(w.width, w.height) for w in pieces) <= 2500
    cover = np.zeros((2600, 5001), int)
    for w in pieces:
        cover[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert (cover == 1).all()


def test_fetch_all_twelve_bands(creds_env, tmp_path):
    api = creds_env
    inputs = _fetch(api, tmp_path, dem_collection="MAPZEN")
    grid = make_grid(ROI)
    assert inputs.scene_id == L1C_0112 and inputs.acquired.startswith("2016-01-12T16:00")
    assert list(inputs.band_paths) == list(SPECTRAL_BAND_NAMES)
    assert inputs.processing_baseline == "02.01" and inputs.offset_dn == 0
    assert inputs.dem_path is None and any("no DEM" in n for n in inputs.notes)  # server: 400 for MAPZEN
    for band, path in inputs.band_paths.items():
        with rasterio.open(path) as src:
            assert src.crs.to_string() == grid.crs and src.transform == grid.transform
            assert (src.height, src.width) == grid.shape and src.dtypes[0] == "uint16"
            np.testing.assert_array_equal(src.read(1), _reference(band, grid), err_msg=band)
    # the 10 m grid is aligned with the tile's native 10 m pixels: B02 is the raw crop
    with rasterio.open(S2_JP2_DIR / "s2_B02.jp2") as src:
        native = src.read(1, window=rasterio.windows.from_bounds(*grid.bounds, transform=src.transform)
                          .round_offsets().round_lengths())
    np.testing.assert_array_equal(_read(inputs)[1], native)
    sent = api.server.last_process_request
    assert sent["input"]["data"][0]["type"] == "sentinel-2-l1c"
    assert sent["input"]["data"][0]["processing"]["harmonizeValues"] is False


def test_scene_choice_respects_cloud_limit(creds_env, tmp_path):
    window = (dt.date(2016, 1, 20), dt.date(2016, 3, 1))  # only 2016-02-01 (71.3 % cloud)
    with pytest.raises(SourceError, match=r"no sentinel-2-l1c scene with eo:cloud_cover <= 30%"):
        _fetch(creds_env, tmp_path, window=window, dem_collection=None)
    inputs = _fetch(creds_env, tmp_path, bands=("B02",), window=window, max_cloud_pct=80,
                    dem_collection=None)
    assert inputs.scene_id == L1C_0201
    both = _fetch(creds_env, tmp_path, bands=("B02",), max_cloud_pct=80, dem_collection=None)
    assert both.scene_id == L1C_0112  # least cloudy of the two


def test_rerun_is_served_from_the_cache(creds_env, tmp_path):
    first = _fetch(creds_env, tmp_path)
    assert creds_env.faults.statuses(PROCESS)  # it did download
    creds_env.faults.clear_log()
    again = _fetch(creds_env, tmp_path)
    assert creds_env.faults.records == []  # no token, search, process or DEM request
    assert again.band_paths == first.band_paths and any("download cache" in n for n in again.notes)
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]  # no temporary file or folder left


def test_split_requests_equal_one_request(creds_env, tmp_path):
    api = creds_env
    whole = _fetch(api, tmp_path / "one", dem_collection=None)
    assert api.faults.statuses(PROCESS) == [200]
    api.faults.clear_log()
    grid = make_grid(ROI)
    assert 50 < grid.width <= 100 and 50 < grid.height <= 100
    split = _fetch(api, tmp_path / "four", dem_collection=None, max_px=50)
    assert api.faults.statuses(PROCESS) == [200] * 4
    a, b = _read(split).astype(int), _read(whole).astype(int)
    ten_m = [SPECTRAL_BAND_NAMES.index(n) for n in ("B02", "B03", "B04", "B08")]
    np.testing.assert_array_equal(a[ten_m], b[ten_m])  # aligned 10 m: identical
    # 20/60 m bands: the server's GDAL bilinear warp rounds a few pixels differently per extent
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3


@pytest.mark.parametrize("fault", ["429", "500"])
def test_transient_fault_then_success_gives_the_clean_result(creds_env, tmp_path, fault):
    api = creds_env
    clean = _read(_fetch(api, tmp_path / "clean", bands=("B02", "B11"), dem_collection=None))
    api.faults.clear_log()
    api.faults.set(fault, count=1, retry_after=100, path_prefix=PROCESS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SHRateLimitWarning on 429
        got = _read(_fetch(api, tmp_path / "faulty", bands=("B02", "B11"), dem_collection=None))
    assert api.faults.statuses(PROCESS) == [int(fault), 200]
    np.testing.assert_array_equal(got, clean)


def test_persistent_500_fails_and_leaves_nothing(creds_env, tmp_path):
    creds_env.faults.set("500", count=10, path_prefix=PROCESS)
    with pytest.raises(SourceError, match="failed after 3 attempts") as err:
        _fetch(creds_env, tmp_path, bands=("B02",), dem_collection=None)
    assert "\n" not in str(err.value)
    assert creds_env.faults.statuses(PROCESS) == [500, 500, 500]
    assert not (tmp_path / "bands").exists() or not any((tmp_path / "bands").iterdir())


def test_wrong_secret_is_a_one_line_source_error(sentinelhub_api, tmp_path, monkeypatch):
    secret = "wrong-secret-3f9a1c"
    monkeypatch.setenv("SH_CLIENT_ID", "another-client-id")  # dodges the client's per-id session cache
    monkeypatch.setenv("SH_CLIENT_SECRET", secret)
    with pytest.raises(SourceError, match="credentials rejected.*SH_CLIENT_ID/SH_CLIENT_SECRET") as err:
        _fetch(sentinelhub_api, tmp_path, dem_collection=None)
    assert secret not in str(err.value) and "\n" not in str(err.value)
    assert sentinelhub_api.faults.statuses("/auth/") == [401]
    assert not list(tmp_path.rglob("*.tif"))


def test_401_from_the_process_api(creds_env, tmp_path):
    creds_env.faults.set("401", count=1, path_prefix=PROCESS)
    with pytest.raises(SourceError, match=r"credentials rejected \(HTTP 401\)") as err:
        _fetch(creds_env, tmp_path, bands=("B02",), dem_collection=None)
    assert creds_env.client_secret not in str(err.value)


def test_missing_credentials_name_the_variables(sentinelhub_api, tmp_path, monkeypatch):
    monkeypatch.delenv("SH_CLIENT_ID", raising=False)
    monkeypatch.delenv("SH_CLIENT_SECRET", raising=False)
    with pytest.raises(InputError, match="SH_CLIENT_ID and SH_CLIENT_SECRET"):
        _fetch(sentinelhub_api, tmp_path)
    monkeypatch.setenv("MY_ID", "x")
    with pytest.raises(InputError, match="MY_ID and MY_SECRET"):
        _fetch(sentinelhub_api, tmp_path, client_id_env="MY_ID", client_secret_env="MY_SECRET")
    assert sentinelhub_api.faults.records == []


def test_scan_end_to_end_matches_the_local_source(creds_env, prefect_harness, tmp_path, monkeypatch,
                                                  catalog_path):
    """`landslide scan --source <sentinelhub>` with credentials from a Prefect Secret block."""
    from prefect.blocks.system import Secret

    from flows.cli import main

    api = creds_env
    Secret(value=f"{api.client_id}:{api.client_secret}").save("sh-e2e-creds", overwrite=True)
    monkeypatch.delenv("SH_CLIENT_ID")
    monkeypatch.delenv("SH_CLIENT_SECRET")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "version: 1\nsources:\n  sh-local:\n    kind: sentinelhub\n"
        f"    base_url: {api.base_url}\n    token_url: {api.token_url}\n"
        "    secret_block: sh-e2e-creds\n    max_retries: 2\n    timeout_s: 30\n"
        "    dem_collection: null\n")  # the served DEM (Sao Tome) is elsewhere
    ckpt = _twelve_band_checkpoint(tmp_path / "ckpt")
    common = ["--bbox", BBOX, "--checkpoint", str(ckpt), "--keep-work", "--no-progress",
              "--start", "2016-01-01", "--end", "2016-03-01"]
    out_sh, out_local = tmp_path / "sh", tmp_path / "local"
    assert main(["scan", "--source", "sh-local", "--catalog", str(catalog), "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(out_sh), *common]) == 0
    assert main(["scan", "--region", "t18svg-2016", "--catalog", str(catalog_path),
                 "--out", str(out_local), *common]) == 0
    manifest_text = (out_sh / "manifest.json").read_text()
    assert api.client_secret not in manifest_text
    manifest = json.loads(manifest_text)
    secret = api.client_secret.encode()
    for f in [*out_sh.rglob("*"), *(tmp_path / "cache").rglob("*")]:  # no secret in any file written
        assert not f.is_file() or secret not in f.read_bytes(), f
    assert manifest["inputs"]["scene_ids"] == [L1C_0112]
    with rasterio.open(out_sh / ".work" / "stack.tif") as a, rasterio.open(out_local / ".work" / "stack.tif") as b:
        assert a.crs == b.crs and a.transform == b.transform and a.shape == b.shape
        sh, local = a.read(list(range(1, 13))), b.read(list(range(1, 13)))
    (clm_path,) = (tmp_path / "cache" / "sentinelhub" / "bands").glob("*/CLM.tif")
    (mask_path,) = (out_sh / ".work").glob("clouds_*.tif")
    with rasterio.open(mask_path) as src:
        masked = src.read(1) > 0  # CLM cloud or its projected shadow
    both = np.isfinite(sh) & np.isfinite(local)
    assert (both | masked).mean() > 0.95  # cloud and shadow pixels are masked in the Sentinel Hub run only
    for i, band in enumerate(SPECTRAL_BAND_NAMES):  # same pixels; allow 1 DN of resampling rounding
        diff = np.abs(sh[i] - local[i])[both[i]]
        assert diff.max() <= 1.0, band  # measured: identical (both bilinear from the same native pixels)
    _check_cloud_masking(api, manifest, out_sh, out_local, clm_path, mask_path)


def _check_cloud_masking(api, manifest, out_sh, out_local, clm_path, mask_path):
    """CLM cloud pixels (the server's stand-in) and their projected shadows are not analysed: out of
    valid.tif and the footprint, nodata in the COGs (so no polygon), and counted per class in the
    manifest; the local source has no mask."""
    import geopandas as gpd
    import shapely

    assert "CLM" in api.server.last_process_request["evalscript"]
    with rasterio.open(clm_path) as src, rasterio.open(mask_path) as m, \
            rasterio.open(out_sh / ".work" / "valid.tif") as v_sh, \
            rasterio.open(out_local / ".work" / "valid.tif") as v_local:
        assert src.transform == v_sh.transform == m.transform and src.shape == v_sh.shape == m.shape
        cloud = (src.read(1) >= 1) & (src.read(1) <= 254)
        classes = m.read(1)
        valid_sh, valid_local, transform = v_sh.read(1) == 1, v_local.read(1) == 1, v_sh.transform
    np.testing.assert_array_equal(classes == 1, cloud)  # the CLM is the cloud class
    shadow = classes == 2
    masked = cloud | shadow
    cloudy_analysable = masked & valid_local
    assert (cloud & valid_local).sum() > 20  # the stand-in marks bright cells in this ROI
    assert not (valid_sh & masked).any()
    np.testing.assert_array_equal(valid_sh, valid_local & ~masked)  # nothing else changed
    record = manifest["inputs"]["cloud_mask"]
    assert record["applied"] and record["rule"] == {"cloud_values": [1, 2]}
    scene = record["scenes"][L1C_0112]
    assert scene["cloud_masked_px"] == int(cloudy_analysable.sum())
    assert scene["method"]["method"] == "sentinelhub-clm" and scene["method"]["shadows"]["sun_from"]
    assert scene["class_px"] == {"cloud": int(cloud.sum()), "shadow": int(shadow.sum())}
    for name in ("probability.tif", "mask.tif"):  # 255 = not analysed: no detection, no polygon there
        with rasterio.open(out_sh / name) as src:
            assert (src.read(1)[cloudy_analysable] == 255).all(), name
    footprint = gpd.read_file(out_sh / "landslides.gpkg", layer="footprint").geometry.union_all()
    rows, cols = np.nonzero(cloudy_analysable)
    xs, ys = rasterio.transform.xy(transform, rows, cols)
    assert not shapely.contains_xy(footprint, np.asarray(xs), np.asarray(ys)).any()
    assert footprint.area == pytest.approx(valid_sh.sum() * abs(transform.a * transform.e))
    polygons = gpd.read_file(out_sh / "landslides.gpkg", layer="landslides").geometry
    if len(polygons):
        # the polygons' smoothed outlines cut the corners of the pixel staircase, so at a one-pixel notch
        # they may cover the centre of a masked pixel (the scattered shadow pixels make such notches;
        # measured: 5 of 5964 masked pixels, at most 64 % of one), never a whole one
        union = polygons.union_all()
        inside = shapely.contains_xy(union, np.asarray(xs), np.asarray(ys))
        half = abs(transform.a) / 2
        squares = shapely.box(np.asarray(xs)[inside] - half, np.asarray(ys)[inside] - half,
                              np.asarray(xs)[inside] + half, np.asarray(ys)[inside] + half)
        covered = shapely.area(shapely.intersection(squares, union)) / (4 * half * half)
        assert inside.sum() <= 0.01 * len(xs) and (covered < 0.9).all(), (inside.sum(), covered.max())
    local_record = json.loads((out_local / "manifest.json").read_text())["inputs"]["cloud_mask"]
    # the local scene has no mask: s2cloudless runs on its own bands, and in this clear ROI masks nothing
    (local_scene,) = local_record["scenes"].values()
    assert local_scene["method"]["method"] == "s2cloudless" and local_scene["cloud_masked_px"] == 0


def _twelve_band_checkpoint(folder):
    import torch

    from models.checkpoint import InputTransform, ModelCard, save_checkpoint
    from models.registry import build_model

    torch.manual_seed(0)
    model = build_model("Unet", "mobilenet_v2", in_channels=12)
    card = ModelCard(
        name="random-12band", version="0", arch="Unet", encoder="mobilenet_v2",
        bands=list(SPECTRAL_BAND_NAMES),
        input_transform=InputTransform.from_stats([1500.0] * 12, [800.0] * 12), threshold=0.5,
        trained_on={"dataset": "none (random weights: a mechanics test)", "split": "none",
                    "file_list_sha256": "0" * 64, "labels": "none"},
        training={"epochs": 0, "loss": "none", "seed": 0}, description="random weights; not a detector")
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(model, card, folder)[1]


def test_dem_collection_copernicus_30(creds_env, tmp_path):
    """The DEM path: Process API with ``type: dem`` / ``demInstance: COPERNICUS_30`` over Sao Tome (the
    served real GLO-30 tile), FLOAT32 metres on the analysis grid, cached; equals the tile warped locally."""
    from devservers.stac_server import GLO30_TIF
    from tasks.sources.sentinelhub import _config, _fetch_dem, resolve_credentials

    api = creds_env
    source = _source(api)  # dem_collection defaults to COPERNICUS_30
    creds = resolve_credentials(source)
    grid = make_grid(box(6.55, 0.25, 6.57, 0.27))  # ~2.2 km, steep terrain of Sao Tome
    desc = {"crs": grid.crs, "bounds": grid.bounds, "size": (grid.width, grid.height)}
    path, note, made = _fetch_dem(source, _config(source, creds, 0.05), creds, grid, desc, tmp_path, 100)
    assert note is None and made == 9  # 223 x 221 px in pieces of at most 100 px
    sent = api.server.last_process_request["input"]["data"][0]
    assert sent["type"] == "dem" and sent["dataFilter"]["demInstance"] == "COPERNICUS_30"
    expected = np.zeros(grid.shape, dtype=np.float32)
    with rasterio.open(GLO30_TIF) as src:
        reproject(src.read(1), expected, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=grid.transform, dst_crs=grid.crs, resampling=Resampling.bilinear)
    with rasterio.open(path) as got:
        assert got.dtypes[0] == "float32" and got.transform == grid.transform and got.crs.to_string() == grid.crs
        dem = got.read(1)
    assert dem.max() > 100  # real relief in metres, not an empty answer
    # pieces are warped separately; bilinear weights at piece borders can differ by rounding only
    np.testing.assert_allclose(dem, expected, atol=0.01)
    api.faults.clear_log()
    again = _fetch_dem(source, _config(source, creds, 0.05), creds, grid, desc, tmp_path, 100)
    assert again[0] == path and again[2] == 0 and api.faults.records == []  # from the cache


# ---------------------------------------------------------------------------------- per-pixel mosaic

# the two partial January 2017 scenes, served like on the STAC server (west 3.1 % cloud, x < 440220;
# east 5.6 %, baseline 04.00, +37 DN, x >= 439020, EPSG:32618)
WEST, EAST = (catalog_id(s) for s in SCENES if s.footprint_x is not None)
JAN2017 = (dt.date(2017, 1, 1), dt.date(2017, 1, 31))
# 2.1 x 1.6 km crossing both footprints (the ROI of the stac mosaic test)
SPLIT_ROI = box(*transform_bounds("EPSG:32618", "EPSG:4326", 438620, 4174880, 440720, 4176480))
RGB = ("B02", "B03", "B04")


def _band(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1).astype(np.float64)


def test_choose_scenes_rule():
    """Pure: a covering feature wins alone; else the ranked features that add footprint, a same-day one
    dropped (its day's request renders it), the limit honoured, features over the cloud limit ignored."""
    from tasks.sources.sentinelhub import choose_scenes

    def feat(fid, cloud, day, x0, x1):
        geom = box(x0, 0, x1, 1).__geo_interface__ if x0 is not None else None
        return {"id": fid, "properties": {"eo:cloud_cover": cloud, "datetime": f"{day}T10:00:00Z"},
                "geometry": geom}

    roi, end = box(0, 0, 3, 1), dt.datetime(2020, 1, 31, tzinfo=dt.timezone.utc)
    a, b = feat("a", 1.0, "2020-01-10", 0, 1.5), feat("b", 2.0, "2020-01-20", 1, 3)
    same_day = feat("c", 1.5, "2020-01-10", 1.4, 2.5)
    cloudy = feat("d", 50.0, "2020-01-25", 0, 3)
    chosen, covered = choose_scenes([b, a, same_day, cloudy], roi, 30, end, 6)
    assert [f["id"] for f in chosen] == ["a", "b"] and covered == pytest.approx(1.0)  # c: a's day
    assert [f["id"] for f in choose_scenes([b, a], roi, 30, end, 1)[0]] == ["a"]
    assert [f["id"] for f in choose_scenes([b, a, cloudy], roi, 60, end, 6)[0]] == ["d"]  # covers alone
    assert [f["id"] for f in choose_scenes([b, feat("e", 9.0, "2020-01-01", None, None)], roi, 30, end, 6)[0]] \
        == ["e"]  # no geometry: assumed to cover
    assert choose_scenes([cloudy], roi, 30, end, 6) == ([], 0.0)


def test_partial_scenes_make_a_per_pixel_mosaic(creds_env, tmp_path):
    """No scene covers the ROI: one request set per scene (its own day), each scene's own pixels inside
    its footprint; alignment takes each pixel from the first-ranked scene with data and no CLM cloud."""
    from tasks.core.grid import roi_in_grid_crs
    from tasks.raster.align import build_stack, roi_mask
    from tasks.sources.mosaic import read_scenes

    api = creds_env
    inputs = _fetch(api, tmp_path / "cache", bands=RGB, window=JAN2017, roi=SPLIT_ROI, dem_collection=None)
    assert [m["scene_id"] for m in inputs.mosaic] == [WEST, EAST]
    assert [m["cloud_pct"] for m in inputs.mosaic] == [3.1, 5.6]
    assert [m["processing_baseline"] for m in inputs.mosaic] == ["02.04", "04.00"]
    assert [m["offset_dn"] for m in inputs.mosaic] == [0.0, BASELINE_OFFSET_DN]
    assert inputs.scene_id == f"{WEST}+{EAST}" and inputs.acquired is None
    assert inputs.acquired_range == ("2017-01-10", "2017-01-20")
    assert any("per-pixel mosaic of 2" in n for n in inputs.notes)
    assert api.faults.statuses(PROCESS) == [200, 200]  # one request per scene (the grid fits one piece)
    sent = api.server.last_process_request["input"]["data"][0]["dataFilter"]
    assert sent["timeRange"]["from"].startswith("2017-01-20") and sent["timeRange"]["to"].startswith("2017-01-20")
    assert sent["mosaickingOrder"] == "leastCC"

    grid = make_grid(SPLIT_ROI)
    xs = np.broadcast_to(grid.xmin + (np.arange(grid.width) + 0.5) * grid.res_m, grid.shape)
    west = {b: _band(inputs.mosaic[0]["band_paths"][b]) for b in RGB}
    east = {b: _band(inputs.mosaic[1]["band_paths"][b]) for b in RGB}
    for b in RGB:  # each scene's own pixels inside its footprint, nodata (0) outside
        real = _reference(b, grid).astype(np.float64)
        in_w = (xs >= SPLIT_WEST_X[0]) & (xs < SPLIT_WEST_X[1])
        in_e = (xs >= SPLIT_EAST_X[0]) & (xs < SPLIT_EAST_X[1])
        np.testing.assert_array_equal(west[b], np.where(in_w, real, 0), err_msg=b)
        np.testing.assert_array_equal(east[b], np.where(in_e, real + SPLIT_EAST_DN_DELTA + BASELINE_OFFSET_DN, 0),
                                      err_msg=b)
    assert all(m["cloud_mask"] is None and m["cloud_detector"]["method"] == "sentinelhub-clm" for m in inputs.mosaic)

    roi_grid = roi_in_grid_crs(SPLIT_ROI, grid)
    res = build_stack(inputs, grid, tmp_path / "work", RGB, roi_grid)
    clouds = []  # each scene's CLM cloud and its projected shadow (tasks.raster.clouds)
    for m in inputs.mosaic:
        clm, classes = _band(m["cloud_detector"]["clm_path"]), _band(tmp_path / "work" / f"clouds_{m['scene_id']}.tif")
        np.testing.assert_array_equal(classes == 1, (clm >= 1) & (clm <= 254))
        clouds.append(classes > 0)
    with rasterio.open(tmp_path / "work" / "scene_index.tif") as src:
        index = src.read(1)
    with rasterio.open(res.stack_path) as src:
        stack = src.read()
    with rasterio.open(res.valid_path) as src:
        valid = src.read(1).astype(bool)

    # the rule, computed here from the downloaded files: first scene with data and no cloud
    inside = roi_mask(roi_grid, grid) > 0
    has = [np.all([w[b] > 0 for b in RGB], axis=0) for w in (west, east)]
    expected = np.zeros(grid.shape, np.uint8)
    lost = []
    for k, (data, cloud) in enumerate(zip(has, clouds), start=1):
        open_px = inside & (expected == 0)
        lost.append(int((open_px & data & cloud).sum()))
        expected[open_px & data & ~cloud] = k
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(valid, index > 0)
    # the footprints and the ranking decide: only the west scene west of 439020, only the east one east
    # of 440220, and in the overlap (both have data) the less cloudy west scene, the east one only where
    # the west one is masked (the same CLM cells, but each scene's shadows come from its own clouds and sun)
    assert set(np.unique(index[inside & (xs < SPLIT_EAST_X[0])])) <= {0, 1}
    assert set(np.unique(index[inside & (xs >= SPLIT_WEST_X[1])])) <= {0, 2}
    overlap = inside & (xs >= SPLIT_EAST_X[0]) & (xs < SPLIT_WEST_X[1])
    assert overlap.sum() > 10_000 and not (overlap & (index == 2) & ~clouds[0]).any()
    assert (index[overlap] == 1).mean() > 0.8
    east_only = inside & (xs >= SPLIT_WEST_X[1])
    assert (index[east_only & has[1] & ~clouds[1]] == 2).all() and (index[east_only] == 2).mean() > 0.5
    for b in RGB:  # values are each scene's own, harmonized
        got = stack[BAND_NAMES.index(b)]
        np.testing.assert_array_equal(got[index == 1], west[b][index == 1])
        np.testing.assert_array_equal(got[index == 2], east[b][index == 2] - BASELINE_OFFSET_DN)
        # the east scene's own values differ (+37 DN): the overlap really came from the west scene
        sel = index == 1
        assert ((east[b] - BASELINE_OFFSET_DN - got)[sel & overlap] == SPLIT_EAST_DN_DELTA).all()
    record = read_scenes(tmp_path / "work")
    assert record["mosaic"] is True
    assert [(e["index"], e["scene_id"], e["acquired"][:10]) for e in record["scenes"]] == [
        (1, WEST, "2017-01-10"), (2, EAST, "2017-01-20")]
    assert [e["pixels"] for e in record["scenes"]] == [int((index == 1).sum()), int((index == 2).sum())]
    assert [e["cloud_masked_px"] for e in record["scenes"]] == lost and lost[0] > 0
    assert record["analysed_px"] == int(valid.sum()) == sum(e["pixels"] for e in record["scenes"])
    assert record["analysed_px"] + record["no_scene_px"] == grid.width * grid.height
    assert [e["offset_removed_dn"] for e in record["scenes"]] == [0.0, BASELINE_OFFSET_DN]

    api.faults.clear_log()  # a rerun: the search and both scenes come from the cache
    again = _fetch(api, tmp_path / "cache", bands=RGB, window=JAN2017, roi=SPLIT_ROI, dem_collection=None)
    assert api.faults.records == []
    assert again.mosaic == inputs.mosaic


def test_mosaic_limit_one_and_a_covering_scene(creds_env, tmp_path):
    """max_mosaic_scenes: 1 renders only the best-ranked scene meeting the ROI (the less cloudy west one,
    the rest nodata); a window with a covering scene renders that one alone."""
    api = creds_env
    single = _fetch(api, tmp_path, bands=("B02",), window=JAN2017, roi=SPLIT_ROI, dem_collection=None,
                    max_mosaic_scenes=1)
    assert single.mosaic is None and single.scene_id == WEST and single.cloud_pct == 3.1
    assert any("covers only" in n for n in single.notes)
    assert api.faults.statuses(PROCESS) == [200]
    grid = make_grid(SPLIT_ROI)
    xs = np.broadcast_to(grid.xmin + (np.arange(grid.width) + 0.5) * grid.res_m, grid.shape)
    b02 = _band(single.band_paths["B02"])
    assert (b02[xs < SPLIT_WEST_X[1]] > 0).all() and not b02[xs >= SPLIT_WEST_X[1]].any()
    # all of 2017 (the mosaic scenes) plus January 2022, whose scene covers the ROI: that one alone
    api.faults.clear_log()
    covered = _fetch(api, tmp_path, bands=("B02",), window=(dt.date(2017, 1, 1), dt.date(2022, 2, 1)),
                     roi=SPLIT_ROI, dem_collection=None)
    assert covered.mosaic is None and covered.scene_id == catalog_id(SCENES[2]) and covered.cloud_pct == 8.4
    assert covered.offset_dn == BASELINE_OFFSET_DN and api.faults.statuses(PROCESS) == [200]
    np.testing.assert_array_equal(_band(covered.band_paths["B02"]),
                                  _reference("B02", grid) + BASELINE_OFFSET_DN)


# ---------------------------------------------------------------------------------- CLM cloud shadows

# a 2 x 2 km cloud block set in the server's CLM (EPSG:32618, over land of the real 2016-01-12 scene)
CLOUD_BLOCK = (437000.0, 4163000.0, 439000.0, 4165000.0)
# the block and the ground north-north-west of it where its shadow can fall (sun from the south-south-east)
SHADOW_ROI = box(*transform_bounds("EPSG:32618", "EPSG:4326", 435800, 4162000, 439600, 4171400))


def test_clm_cloud_block_casts_a_shadow_away_from_the_sun(creds_env, tmp_path):
    """A CLM cloud block gets a shadow class from the same projection as s2cloudless's clouds: displaced
    away from the sun (angles computed for the scene's time), only where B08 is dark and not water, with
    B08/B03 fetched in the same request for a model that does not read them; cloud_mask.json records the
    method and the per-class counts."""
    import shapely
    from shapely import affinity

    from tasks.core.grid import roi_in_grid_crs
    from tasks.raster.align import build_stack, roi_mask
    from tasks.raster.clouds import CLOUD, SHADOW, solar_position

    api = creds_env
    api.server.set_clm_clouds([CLOUD_BLOCK])
    inputs = _fetch(api, tmp_path / "cache", bands=RGB, roi=SHADOW_ROI, dem_collection=None)
    plan = inputs.cloud_detector
    assert inputs.scene_id == L1C_0112 and inputs.offset_dn == 0
    assert inputs.cloud_mask is None and plan["method"] == "sentinelhub-clm"
    assert set(plan["band_paths"]) == {"B08", "B03"} and list(inputs.band_paths) == list(RGB)
    evalscript = api.server.last_process_request["evalscript"]
    assert all(f'"{b}"' in evalscript for b in (*RGB, "B08", "B03", "CLM"))
    assert api.faults.statuses(PROCESS) == [200]  # bands, shadow bands and CLM in one request

    grid = make_grid(SHADOW_ROI)
    assert grid.crs == "EPSG:32618"
    build_stack(inputs, grid, tmp_path / "work", RGB, roi_in_grid_crs(SHADOW_ROI, grid))
    (mask_path,) = (tmp_path / "work").glob("clouds_*.tif")
    classes, clm, b08, b03 = (_band(p) for p in (mask_path, plan["clm_path"], plan["band_paths"]["B08"],
                                                 plan["band_paths"]["B03"]))
    with rasterio.open(tmp_path / "work" / "valid.tif") as src:
        valid = src.read(1) > 0
    cloud, shadow = classes == CLOUD, classes == SHADOW
    np.testing.assert_array_equal(cloud, (clm >= 1) & (clm <= 254))  # the CLM is the cloud class, as it was
    xs = np.broadcast_to(grid.xmin + (np.arange(grid.width) + 0.5) * grid.res_m, grid.shape)
    ys = np.broadcast_to(grid.ymax - (np.arange(grid.height)[:, None] + 0.5) * grid.res_m, grid.shape)
    x0, y0, x1, y1 = CLOUD_BLOCK
    assert cloud[(xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)].all()
    assert not cloud[(xs < x0 - 120) | (xs > x1 + 120) | (ys < y0 - 120) | (ys > y1 + 120)].any()

    lon, lat = (SHADOW_ROI.bounds[0] + SHADOW_ROI.bounds[2]) / 2, (SHADOW_ROI.bounds[1] + SHADOW_ROI.bounds[3]) / 2
    azimuth, zenith = solar_position(dt.datetime.fromisoformat(inputs.acquired), lon, lat)
    assert azimuth == pytest.approx(161.5, abs=1) and zenith == pytest.approx(61.7, abs=1)  # mid-January, 16 UTC
    away = np.array([-np.sin(np.radians(azimuth)), -np.cos(np.radians(azimuth))])  # (east, north)
    block = box(*CLOUD_BLOCK)
    lo_m, hi_m = (h * np.tan(np.radians(zenith)) for h in (300.0, 3000.0))  # the default cloud heights
    sweep = shapely.convex_hull(shapely.union(affinity.translate(block, *(away * lo_m)),
                                              affinity.translate(block, *(away * hi_m))))
    # the shadow lies in the block swept away from the sun over 300..3000 m of cloud height (give or take
    # the 160 m cells the projection works on), never on the sun's side of the block
    assert shadow.sum() > 1000
    assert shapely.contains_xy(sweep.buffer(320), xs[shadow], ys[shadow]).all()
    assert not shadow[ys < y0].any() and not shadow[xs > x1 + 320].any()
    bearing = np.degrees(np.arctan2(xs[shadow].mean() - block.centroid.x, ys[shadow].mean() - block.centroid.y))
    assert (bearing - (azimuth + 180)) % 360 == pytest.approx(0, abs=15) or \
        (bearing - (azimuth + 180)) % 360 == pytest.approx(360, abs=15)
    # only where dark in NIR and not water, and there everywhere well inside the sweep
    dark = (b08 > 0) & (b08 < 1500) & (b08 >= b03)
    assert dark[shadow].all()
    core = shapely.contains_xy(sweep.buffer(-200).difference(block.buffer(400)), xs, ys)
    assert (core & dark).sum() > 500 and shadow[core & dark].all()
    assert not valid[cloud | shadow].any()  # neither is analysed

    record = json.loads((tmp_path / "work" / "cloud_mask.json").read_text())
    entry = record["scenes"][L1C_0112]
    assert record["rule"] == {"cloud_values": [CLOUD, SHADOW]}
    assert entry["method"]["method"] == "sentinelhub-clm"
    assert entry["class_px"] == {"cloud": int(cloud.sum()), "shadow": int(shadow.sum())}
    assert entry["method"]["shadows"]["sun_azimuth_deg"] == pytest.approx(azimuth, abs=0.01)
    inside = roi_mask(roi_in_grid_crs(SHADOW_ROI, grid), grid) > 0  # all of it has data in every band
    assert entry["cloud_masked_px"] == int(((cloud | shadow) & inside).sum())
    print(f"CLM block: {int(cloud.sum())} cloud px, {int(shadow.sum())} shadow px, sun azimuth {azimuth:.1f}, "
          f"zenith {zenith:.1f}; shadow bearing {bearing:.1f}, dark px in the core {int((core & dark).sum())}")


def test_clm_without_shadows(creds_env, tmp_path):
    """``cloud_shadows: false``: no B08/B03 requested for the rule, the CLM alone is masked, and the manifest
    says why there is no shadow class; ``cloud_mask: false``: no CLM and a reason instead of a plan."""
    from tasks.core.grid import roi_in_grid_crs
    from tasks.raster.align import build_stack

    api = creds_env
    api.server.set_clm_clouds([CLOUD_BLOCK])
    inputs = _fetch(api, tmp_path / "cache", bands=RGB, roi=SHADOW_ROI, dem_collection=None, cloud_shadows=False)
    evalscript = api.server.last_process_request["evalscript"]
    assert '"CLM"' in evalscript and '"B08"' not in evalscript
    plan = inputs.cloud_detector
    assert plan["shadows"] is None and plan["shadows_off"] == "cloud_shadows: false for source 'sh-test'"
    grid = make_grid(SHADOW_ROI)
    build_stack(inputs, grid, tmp_path / "work", RGB, roi_in_grid_crs(SHADOW_ROI, grid))
    entry = json.loads((tmp_path / "work" / "cloud_mask.json").read_text())["scenes"][L1C_0112]
    clm = _band(plan["clm_path"])
    assert entry["class_px"] == {"cloud": int(((clm >= 1) & (clm <= 254)).sum()), "shadow": 0}
    assert entry["class_px"]["cloud"] > 40_000  # the 2 x 2 km block
    assert entry["method"]["shadows"] == {"applied": False, "reason": plan["shadows_off"]}

    off = _fetch(api, tmp_path / "cache", bands=RGB, roi=SHADOW_ROI, dem_collection=None, cloud_mask=False)
    assert '"CLM"' not in api.server.last_process_request["evalscript"]
    assert off.cloud_detector is None and off.cloud_mask is None and off.cloud_detector_off == "cloud_mask: false for source 'sh-test'"
