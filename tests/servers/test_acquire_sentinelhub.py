"""The ``sentinelhub`` source (tasks/acquire_sentinelhub.py) against the local Sentinel Hub server.

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
from rasterio.warp import reproject
from shapely.geometry import box

from tasks.acquire_sentinelhub import fetch_sentinelhub_inputs, plan_pieces
from tasks.bands import SPECTRAL_BAND_NAMES
from tasks.catalog import SentinelHubSource
from tasks.errors import InputError, SourceError
from tasks.grid import make_grid
from devservers.stac_server import S2_JP2_DIR

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
    assert not list(tmp_path.rglob("*.tmp-*"))


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
    with rasterio.open(clm_path) as src:
        cloud = (src.read(1) >= 1) & (src.read(1) <= 254)
    both = np.isfinite(sh) & np.isfinite(local)
    assert (both | cloud).mean() > 0.95  # cloud pixels are masked in the Sentinel Hub run only
    for i, band in enumerate(SPECTRAL_BAND_NAMES):  # same pixels; allow 1 DN of resampling rounding
        diff = np.abs(sh[i] - local[i])[both[i]]
        assert diff.max() <= 1.0, band  # measured: identical (both bilinear from the same native pixels)
    _check_cloud_masking(api, manifest, out_sh, out_local, clm_path)


def _check_cloud_masking(api, manifest, out_sh, out_local, clm_path):
    """CLM cloud pixels (the server's stand-in) are not analysed: out of valid.tif and the footprint,
    nodata in the COGs (so no polygon), and counted in the manifest; the local source has no mask."""
    import geopandas as gpd
    import shapely

    assert "CLM" in api.server.last_process_request["evalscript"]
    with rasterio.open(clm_path) as src, rasterio.open(out_sh / ".work" / "valid.tif") as v_sh, \
            rasterio.open(out_local / ".work" / "valid.tif") as v_local:
        assert src.transform == v_sh.transform and src.shape == v_sh.shape
        cloud = (src.read(1) >= 1) & (src.read(1) <= 254)
        valid_sh, valid_local, transform = v_sh.read(1) == 1, v_local.read(1) == 1, v_sh.transform
    cloudy_analysable = cloud & valid_local
    assert cloudy_analysable.sum() > 20  # the stand-in marks bright cells in this ROI
    assert not (valid_sh & cloud).any()
    np.testing.assert_array_equal(valid_sh, valid_local & ~cloud)  # nothing else changed
    record = manifest["inputs"]["cloud_mask"]
    assert record["applied"] and record["rule"] == {"cloud_range": [1, 254]}
    assert record["scenes"][L1C_0112]["cloud_masked_px"] == int(cloudy_analysable.sum())
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
        assert not shapely.contains_xy(polygons.union_all(), np.asarray(xs), np.asarray(ys)).any()
    local_record = json.loads((out_local / "manifest.json").read_text())["inputs"]["cloud_mask"]
    assert local_record["applied"] is False


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
    from tasks.acquire_sentinelhub import _config, _fetch_dem, resolve_credentials

    from devservers.stac_server import GLO30_TIF

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
