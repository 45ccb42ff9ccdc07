"""SAS-signed STAC assets (Planetary Computer's token protocol) against ``devservers/sas_storage.py``.

Real HTTP on 127.0.0.1: pystac-client searches ``rustac serve``, GDAL ``/vsicurl/`` reads the signed
COGs from a storage that answers 403 without a valid, unexpired token; tokens come from the server's
token API, which counts its requests.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.windows import from_bounds

import tasks.sources.signing as signing
import tasks.sources.stac as acquire_stac
from devservers.sas_storage import ALOS_COLLECTION, ALOS_ITEM_ID, AW3D30_TIF, GLO30_COLLECTION, S2_COLLECTION
from devservers.stac_server import DEM_ITEM_ID, GLO30_TIF
from tasks.core.errors import InputError, SourceError
from tasks.sources.catalog import StacSource, load_catalog
from tasks.sources.signing import HrefSigner, redact_hrefs, sign_href
from tasks.sources.stac import fetch_dem, fetch_stac_inputs, fetch_window

pytest.importorskip("pystac_client")

IBURI_ROI = shapely.box(141.93, 42.70, 141.98, 42.74)  # inside the bundled AW3D30 crop
SAO_TOME_ROI = shapely.box(6.55, 0.25, 6.60, 0.30)  # inside the genuine GLO-30 tile
T18SVG_ROI = shapely.box(-75.695, 37.718, -75.675, 37.733)
TOKEN_TEXT = re.compile(r"sig=|skoid=|se=20")


@pytest.fixture(autouse=True)
def _short_retry_delay(monkeypatch):
    monkeypatch.setattr(acquire_stac, "RETRY_DELAY_S", 0.1)


def _source(pc_api, **kw) -> StacSource:
    kw.setdefault("max_retries", 1)
    kw.setdefault("timeout_s", 5)
    kw.setdefault("sign", "planetary-computer")
    if kw["sign"] or kw.get("dem_sign") == "planetary-computer":
        kw.setdefault("sas_url", pc_api.sas_url)
    kw.setdefault("collection", S2_COLLECTION)
    return StacSource(kind="stac", url=pc_api.url, **kw)


def _window_of(local: Path, fetched: str) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(fetched) as got, rasterio.open(local) as src:
        assert got.crs == src.crs and got.res == pytest.approx(src.res)
        win = from_bounds(*got.bounds, transform=src.transform).round_offsets().round_lengths()
        return got.read(1), src.read(1, window=win)


def _no_token_anywhere(root: Path, *texts: str) -> None:
    for text in texts:
        assert not TOKEN_TEXT.search(text), text
    for path in root.rglob("*"):
        assert "?" not in path.name and not TOKEN_TEXT.search(path.name), path
        if path.is_file() and path.suffix == ".json":
            assert not TOKEN_TEXT.search(path.read_text()), path


def test_pure_helpers():
    assert sign_href("https://a.blob.core.windows.net/c/x.tif", "se=1&sig=2") == \
        "https://a.blob.core.windows.net/c/x.tif?se=1&sig=2"
    assert sign_href("https://a/c/x.tif?old=1", "?sig=2") == "https://a/c/x.tif?sig=2"
    text = "HTTP error code: 403 on /vsicurl/https://a.blob.core.windows.net/c/x.tif?st=1&sig=abc%3D more"
    assert redact_hrefs(text) == "HTTP error code: 403 on /vsicurl/https://a.blob.core.windows.net/c/x.tif more"
    assert signing.parse_expiry("2026-12-04T10:00:00Z").utcoffset().total_seconds() == 0
    token = signing.SasToken("se=x&sig=secret", signing.parse_expiry("2026-12-04T10:00:00Z"))
    assert "secret" not in repr(token)


def test_catalog_keys_are_validated(tmp_path):
    src = StacSource(kind="stac", url="http://x", sign="planetary-computer", dem_collection="alos-dem")
    assert src.token_api == signing.PLANETARY_COMPUTER_SAS_URL and src.signs_dem
    assert src.dem_asset_key == "data" and src.dem_product.vertical_datum == "EGM96 geoid"
    assert not StacSource(kind="stac", url="http://x", sign="planetary-computer", dem_url="http://y").signs_dem
    assert StacSource(kind="stac", url="http://x", dem_url="http://y", dem_sign="planetary-computer").signs_dem
    for bad, pattern in (("    sign: azure\n", "sign"),
                         ("    dem_collection: srtm\n", "alos-dem, cop-dem-glo-30, cop-dem-glo-90"),
                         ("    sas_url: http://t\n", "sas_url is only used with sign")):
        path = tmp_path / "data_catalog.yaml"
        path.write_text("version: 1\nsources:\n  s:\n    kind: stac\n    url: http://x\n" + bad)
        with pytest.raises(InputError, match=pattern):
            load_catalog(path)


def test_shipped_catalog_example_validates(tmp_path):
    """The commented-out Planetary Computer source in data_catalog.yaml is a valid entry."""
    shipped = (Path(__file__).resolve().parents[2] / "data_catalog.yaml").read_text()
    block = shipped.split("# BEGIN pc-l2a-alos\n", 1)[1].split("  # END pc-l2a-alos", 1)[0]
    entry = "\n".join(line.replace("  # ", "  ", 1) for line in block.splitlines())
    path = tmp_path / "data_catalog.yaml"
    path.write_text("version: 1\nsources:\n" + entry + "\n")
    source = load_catalog(path).source("pc-l2a-alos")
    assert source.sign == "planetary-computer" and source.dem_collection == "alos-dem" and source.signs_dem
    assert source.collection == "sentinel-2-l2a" and "B10" not in source.assets


@pytest.mark.parametrize("collection, roi, local, item_id", [
    (ALOS_COLLECTION, IBURI_ROI, AW3D30_TIF, ALOS_ITEM_ID),
    (GLO30_COLLECTION, SAO_TOME_ROI, GLO30_TIF, DEM_ITEM_ID)])
def test_signed_dem_reads_the_served_tile(pc_api, tmp_path, collection, roi, local, item_id):
    notes: list[str] = []
    path, nodata = fetch_dem(_source(pc_api, dem_collection=collection), roi, roi.bounds, tmp_path, notes)
    got, expected = _window_of(local, path)
    np.testing.assert_array_equal(got, expected)
    assert got.max() > 100  # real terrain, metres
    assert pc_api.storage.tokens.token_requests == {collection: 1}  # one token for all the reads
    statuses = pc_api.storage.faults.statuses("/")
    assert 403 not in statuses and 206 in statuses
    assert item_id in notes[-1] and "EGM" in notes[-1] and "signed" in notes[-1]
    with rasterio.open(local) as src:
        assert nodata == src.nodata  # the file's tag (AW3D30 crop: -32768; GLO-30: none)
    _no_token_anywhere(tmp_path, *notes)


def test_imagery_is_signed_and_dem_notes_name_collection_and_bbox(pc_api, tmp_path):
    source = _source(pc_api, dem_collection=ALOS_COLLECTION)
    inputs = fetch_stac_inputs(source, "pc-test", ("B02", "B04"), T18SVG_ROI, None, None, tmp_path)
    band = inputs.band_paths["B02"]
    got, expected = _window_of(pc_api.paths[inputs.scene_id]["blue"], band)
    np.testing.assert_array_equal(got, expected)
    assert pc_api.storage.tokens.token_requests == {S2_COLLECTION: 1}
    # alos-dem has no item over Virginia: the note names the collection and the ROI's bbox
    note = next(n for n in inputs.notes if "no item of DEM collection" in n)
    assert "'alos-dem'" in note and "-75.69500,37.71800,-75.67500,37.73300" in note
    assert inputs.dem_path is None and inputs.dem_product is None
    _no_token_anywhere(tmp_path, *inputs.notes, repr(inputs.to_dict()))


def test_dem_from_another_api_is_signed_alone(pc_api, stac_api, tmp_path):
    source = StacSource(kind="stac", url=stac_api.url, dem_url=pc_api.url, dem_collection=ALOS_COLLECTION,
                        dem_sign="planetary-computer", sas_url=pc_api.sas_url, max_retries=1, timeout_s=5)
    path, _ = fetch_dem(source, IBURI_ROI, IBURI_ROI.bounds, tmp_path, [])
    assert path and pc_api.storage.tokens.token_requests == {ALOS_COLLECTION: 1}
    record = acquire_stac.dem_record(source)
    assert record["collection"] == ALOS_COLLECTION and record["signed"] and record["units"] == "m"


def test_unsigned_read_is_refused_with_one_line(pc_api, tmp_path):
    source = _source(pc_api, sign=None, dem_collection=ALOS_COLLECTION)
    with pytest.raises(SourceError) as err:
        fetch_dem(source, IBURI_ROI, IBURI_ROI.bounds, tmp_path, [])
    message = str(err.value)
    assert "\n" not in message and "'alos-dem'" in message and "HTTP 403" in message
    assert "sign: planetary-computer" in message
    assert pc_api.storage.faults.records[0].fault == "sas"  # the storage saw no token
    assert pc_api.storage.tokens.token_requests == {}


def test_token_is_renewed_before_it_expires(pc_api, tmp_path, monkeypatch):
    """Between two reads the cached token passes its msft:expiry: the second read asks for a new one
    first (no 403 reaches the client)."""
    monkeypatch.setattr(signing, "EXPIRY_MARGIN_S", 0.5)
    pc_api.storage.tokens.token_lifetime_s = 2
    source = _source(pc_api)
    sign = HrefSigner(pc_api.sas_url, S2_COLLECTION, 5, 1)
    item = pc_api.item("S2A_18SVG_20160112_0_L1C")
    fetch_window(item["assets"]["blue"]["href"], T18SVG_ROI.bounds, source, tmp_path / "b02.tif", "B02", sign)
    assert pc_api.storage.tokens.token_requests[S2_COLLECTION] == 1
    time.sleep(2.0)
    fetch_window(item["assets"]["green"]["href"], T18SVG_ROI.bounds, source, tmp_path / "b03.tif", "B03", sign)
    assert pc_api.storage.tokens.token_requests[S2_COLLECTION] == 2
    assert 403 not in pc_api.storage.faults.statuses("/")


def test_token_expiring_mid_read_is_refreshed_once(pc_api, tmp_path, monkeypatch):
    """The token expires while one read is under way (the storage stalls its first answer): the next
    request gets 403, the client asks for a new token once and the read completes."""
    monkeypatch.setattr(signing, "EXPIRY_MARGIN_S", 0.0)
    pc_api.storage.tokens.token_lifetime_s = 2
    item = pc_api.item("S2A_18SVG_20160112_0_L1C")
    href = item["assets"]["red"]["href"]
    blob_path = "/" + href.split("/", 3)[3]
    pc_api.storage.faults.set("delay", count=1, delay_s=2.5, path_prefix=blob_path)
    path = fetch_window(href, T18SVG_ROI.bounds, _source(pc_api, timeout_s=10), tmp_path / "b04.tif", "B04",
                        HrefSigner(pc_api.sas_url, S2_COLLECTION, 5, 1))
    got, expected = _window_of(pc_api.paths[item["id"]]["red"], str(path))
    np.testing.assert_array_equal(got, expected)
    assert pc_api.storage.tokens.token_requests[S2_COLLECTION] == 2
    assert pc_api.storage.faults.statuses(blob_path).count(403) == 1


def test_revoked_token_refreshes_then_a_second_403_is_one_line(pc_api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    source = _source(pc_api, dem_collection=ALOS_COLLECTION)
    sign = HrefSigner(pc_api.sas_url, ALOS_COLLECTION, 5, 1)
    sign.token()  # cached
    pc_api.storage.tokens.revoke()
    path, _ = fetch_dem(source, IBURI_ROI, IBURI_ROI.bounds, tmp_path / "a", [])
    assert path and pc_api.storage.tokens.token_requests[ALOS_COLLECTION] == 2
    # the storage keeps refusing: one new token, then a one-line error naming the collection
    pc_api.storage.faults.set("403", count=10, path_prefix="/alos-dem/")
    with pytest.raises(SourceError) as err:
        fetch_dem(source, IBURI_ROI, IBURI_ROI.bounds, tmp_path / "b", [])
    message = str(err.value)
    assert "\n" not in message and "'alos-dem'" in message and "even with a new SAS token" in message
    assert not TOKEN_TEXT.search(message)
    assert pc_api.storage.tokens.token_requests[ALOS_COLLECTION] == 3
    # GDAL's warnings about the 403s quote the URL: the logs hold it without its token
    assert "HTTP response code" in caplog.text and not TOKEN_TEXT.search(caplog.text)


@pytest.mark.parametrize("mode, pattern", [("403", "HTTP 403: the token API refuses"),
                                           ("500", "HTTP 500 after 1 retries"),
                                           ("delay", "no answer within 1 s")])
def test_token_api_failures_are_one_line_source_errors(pc_api, tmp_path, mode, pattern):
    pc_api.storage.faults.set(mode, count=5, delay_s=3.0, path_prefix="/api/sas/")
    source = _source(pc_api, dem_collection=ALOS_COLLECTION, timeout_s=1)
    with pytest.raises(SourceError, match=pattern) as err:
        fetch_dem(source, IBURI_ROI, IBURI_ROI.bounds, tmp_path, [])
    message = str(err.value)
    assert "\n" not in message and "'alos-dem'" in message and pc_api.sas_url in message


def test_scan_with_refusing_token_api_is_one_error_line(pc_api, tmp_path, capsys):
    """The CLI: a token API answering 500 -> exit 2, one ``error:`` line, no traceback, no token."""
    from flows.cli import main

    catalog = tmp_path / "data_catalog.yaml"
    catalog.write_text(
        "version: 1\nsources:\n  pc:\n    kind: stac\n"
        f"    url: {pc_api.url}\n    collection: {S2_COLLECTION}\n    sign: planetary-computer\n"
        f"    sas_url: {pc_api.sas_url}\n    dem_collection: {ALOS_COLLECTION}\n    max_retries: 1\n"
        "    timeout_s: 5\n")
    pc_api.storage.faults.set("500", count=10, path_prefix="/api/sas/")
    out = tmp_path / "run"
    code = main(["scan", "--catalog", str(catalog), "--source", "pc", "--bbox=-75.695,37.718,-75.675,37.733",
                 "--start", "2016-01-01", "--end", "2016-12-31", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--orchestration", "in-process", "--no-progress"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "SAS token of collection 'sentinel-2-l1c'" in errors[0] and "HTTP 500" in errors[0]
    _no_token_anywhere(tmp_path, captured.err, captured.out)
