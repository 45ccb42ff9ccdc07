"""The local STAC API + COG server, exercised with the real clients (pystac-client, rasterio/GDAL, requests)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rasterio
import requests
from rasterio.windows import Window

from devservers.stac_server import BASELINE_OFFSET_DN, DEM_ITEM_ID, GLO30_TIF, S2_ASSETS

pystac_client = pytest.importorskip("pystac_client")

WINDOW = Window(150, 150, 64, 64)  # crosses COG tile edges (128 px tiles)


def _gdal_env(stac_api, **extra) -> rasterio.Env:
    """GDAL settings for reads over http: no directory listing, no retries, and no vsicurl cache for this
    server (GDAL caches failures per URL otherwise, so a read after a fault would fail from cache)."""
    options = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MAX_RETRY": 0,
        "GDAL_HTTP_TIMEOUT": 1,
        "CPL_VSIL_CURL_NON_CACHED": f"/vsicurl/{stac_api.static_url}/",
    }
    options.update(extra)
    return rasterio.Env(**options)


def _path(href: str) -> str:
    return "/" + href.split("/", 3)[3]


def _read(href: str, window: Window = WINDOW) -> np.ndarray:
    with rasterio.open(href) as src:
        return src.read(1, window=window)


def test_search_returns_items_and_client_side_cloud_filter(stac_api):
    client = pystac_client.Client.open(stac_api.url)
    bbox = stac_api.items[0]["bbox"]
    search = client.search(collections=["sentinel-2-l1c"], bbox=bbox, datetime="2016-01-01/2016-12-31", limit=1)
    items = list(search.items())  # limit=1 makes pystac-client follow rel="next"
    assert sorted(i.id for i in items) == ["S2A_18SVG_20160112_0_L1C", "S2A_18SVG_20160201_0_L1C"]
    # rustac's memory backend has no query/CQL2: cloud cover is filtered after the search
    clear = [i for i in items if i.properties["eo:cloud_cover"] <= 20]
    assert [i.id for i in clear] == ["S2A_18SVG_20160112_0_L1C"]
    item = clear[0]
    assert set(item.assets) == {key for key, *_ in S2_ASSETS}
    # served as projection v1.1 proj:epsg (like Earth Search); pystac 1.15 migrates it to v2 proj:code on load
    raw = requests.get(f"{stac_api.url}/collections/sentinel-2-l1c/items/{item.id}", timeout=5).json()
    assert raw["properties"]["proj:epsg"] == 32618
    assert item.properties["proj:code"] == "EPSG:32618"
    assert item.assets["cirrus"].extra_fields["eo:bands"][0]["name"] == "cirrus"
    assert item.assets["red"].href.startswith(stac_api.static_url)


def test_baseline_04_item_carries_offset(stac_api):
    client = pystac_client.Client.open(stac_api.url)
    items = list(client.search(collections=["sentinel-2-l1c"], datetime="2022-01-01/2022-12-31").items())
    assert [i.id for i in items] == ["S2B_18SVG_20220125_0_L1C"]
    assert items[0].properties["s2:processing_baseline"] == "04.00"
    with _gdal_env(stac_api):
        shifted = _read(items[0].assets["blue"].href)
    original = _read(str(stac_api.cog_paths["S2A_18SVG_20160112_0_L1C"]["blue"]))
    np.testing.assert_array_equal(shifted, np.where(original > 0, original + BASELINE_OFFSET_DN, 0))


def test_dem_item_and_read_over_http(stac_api):
    client = pystac_client.Client.open(stac_api.url)
    items = list(client.search(collections=["cop-dem-glo-30"], bbox=[6.55, 0.25, 6.6, 0.3]).items())
    assert [i.id for i in items] == [DEM_ITEM_ID]
    with _gdal_env(stac_api):
        with rasterio.open(items[0].assets["data"].href) as src:
            remote = src.read(1, window=Window(335, 335, 50, 50))
            bounds = src.window_bounds(Window(335, 335, 50, 50))
    with rasterio.open(GLO30_TIF) as src:
        local = src.read(1, window=rasterio.windows.from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths())
    np.testing.assert_array_equal(remote, local)
    assert remote.max() > 100  # real Sao Tome terrain, not an empty crop


def test_window_read_uses_range_requests(stac_api):
    item = stac_api.item("S2A_18SVG_20160112_0_L1C")
    href = item["assets"]["red"]["href"]
    local = stac_api.cog_paths[item["id"]]["red"]
    with _gdal_env(stac_api):
        remote = _read(href)
    np.testing.assert_array_equal(remote, _read(str(local)))
    gets = [r for r in stac_api.faults.records if r.method == "GET" and r.path == _path(href)]
    assert gets and all(r.status == 206 for r in gets)
    assert sum(r.bytes_sent for r in gets) < local.stat().st_size


def test_static_server_range_semantics(stac_api):
    item = stac_api.item("S2A_18SVG_20160112_0_L1C")
    href, size = item["assets"]["coastal"]["href"], stac_api.cog_paths[item["id"]]["coastal"].stat().st_size
    head = requests.head(href, timeout=5)
    assert head.status_code == 200 and head.headers["Accept-Ranges"] == "bytes"
    assert int(head.headers["Content-Length"]) == size
    part = requests.get(href, headers={"Range": "bytes=10-19"}, timeout=5)
    assert part.status_code == 206 and part.headers["Content-Range"] == f"bytes 10-19/{size}"
    assert part.content == stac_api.cog_paths[item["id"]]["coastal"].read_bytes()[10:20]
    suffix = requests.get(href, headers={"Range": "bytes=-5"}, timeout=5)
    assert suffix.status_code == 206 and len(suffix.content) == 5
    assert requests.get(href, headers={"Range": f"bytes={size}-"}, timeout=5).status_code == 416
    assert requests.get(stac_api.static_url + "/missing.tif", timeout=5).status_code == 404


def test_fault_500_then_cleared(stac_api):
    href = stac_api.item("S2A_18SVG_20160112_0_L1C")["assets"]["green"]["href"]
    stac_api.faults.set("500", count=5, path_prefix=_path(href))
    with _gdal_env(stac_api), pytest.raises(rasterio.errors.RasterioIOError, match="500"):
        _read(href)
    assert 500 in stac_api.faults.statuses(_path(href))
    stac_api.faults.clear()
    with _gdal_env(stac_api):
        assert _read(href).shape == (64, 64)


def test_fault_429_retry_after(stac_api):
    href = stac_api.item("S2A_18SVG_20160112_0_L1C")["assets"]["nir"]["href"]
    stac_api.faults.set("429", count=1, retry_after=2)
    response = requests.get(href, timeout=5)
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    # GDAL without retries raises; with GDAL_HTTP_MAX_RETRY it retries 429 and succeeds
    stac_api.faults.set("429", count=5, path_prefix=_path(href))
    with _gdal_env(stac_api), pytest.raises(rasterio.errors.RasterioIOError, match="429"):
        _read(href)
    stac_api.faults.clear()
    stac_api.faults.clear_log()
    stac_api.faults.set("429", count=2, path_prefix=_path(href))
    with _gdal_env(stac_api, GDAL_HTTP_MAX_RETRY=3, GDAL_HTTP_RETRY_DELAY=0.1):
        remote = _read(href)
    np.testing.assert_array_equal(remote, _read(str(stac_api.cog_paths["S2A_18SVG_20160112_0_L1C"]["nir"])))
    assert stac_api.faults.statuses(_path(href)).count(429) == 2


def test_fault_truncated_body(stac_api):
    item = stac_api.item("S2A_18SVG_20160112_0_L1C")
    href = item["assets"]["swir16"]["href"]
    # every GET truncated: GDAL raises instead of returning wrong pixels
    stac_api.faults.set("truncate", count=20, path_prefix=_path(href))
    with _gdal_env(stac_api), pytest.raises(rasterio.errors.RasterioIOError):
        _read(href, Window(0, 0, 150, 150))
    assert any(r.fault == "truncate" for r in stac_api.faults.records)
    stac_api.faults.clear()
    with _gdal_env(stac_api):
        remote = _read(href, Window(0, 0, 150, 150))
    np.testing.assert_array_equal(remote, _read(str(stac_api.cog_paths[item["id"]]["swir16"]), Window(0, 0, 150, 150)))
    # a plain HTTP client sees the short body as an error, too
    stac_api.faults.set("truncate", count=1)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(href, timeout=5)


def test_fault_delay_beyond_client_timeout(stac_api):
    href = stac_api.item("S2A_18SVG_20160112_0_L1C")["assets"]["rededge1"]["href"]
    stac_api.faults.set("delay", count=1, delay_s=1.0)
    with pytest.raises(requests.exceptions.Timeout):
        requests.get(href, timeout=0.3)
    stac_api.faults.set("delay", count=4, delay_s=1.3, path_prefix=_path(href))
    with _gdal_env(stac_api), pytest.raises(rasterio.errors.RasterioIOError, match="(?i)timed out|timeout"):
        _read(href)
    stac_api.faults.clear()
    time.sleep(1.5)  # let the delayed answers drain before the next read
    with _gdal_env(stac_api):
        assert _read(href, Window(0, 0, 64, 64)).shape == (64, 64)  # rededge1 is 20 m: 150 x 150 px
