"""The local Sentinel Hub server, exercised with the unmodified sentinelhub 3.12 client."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from devservers.stac_server import S2_CROP_BOUNDS, S2_JP2_DIR

sentinelhub = pytest.importorskip("sentinelhub")
from sentinelhub import (  # noqa: E402
    BBox,
    CRS,
    MimeType,
    SentinelHubCatalog,
    SentinelHubRequest,
    SentinelHubSession,
)
from sentinelhub.exceptions import DownloadFailedException, SHRateLimitWarning  # noqa: E402

L4S_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12")
BBOX = BBox(S2_CROP_BOUNDS, CRS(32618))  # 3 km x 3 km on the tile's 60 m grid -> 300 x 300 px at 10 m
PROCESS = "/api/v1/process"


def _evalscript(bands=L4S_S2_BANDS) -> str:
    names = ", ".join(f'"{b}"' for b in bands)
    return f"""//VERSION=3
function setup() {{
  return {{input: [{{bands: [{names}], units: "DN"}}],
           output: {{bands: {len(bands)}, sampleType: "UINT16"}}}};
}}
function evaluatePixel(s) {{ return [{", ".join("s." + b for b in bands)}]; }}
"""


def _request(api, config, *, time=("2016-01-01", "2016-01-31"), maxcc=1.0, responses=None, size=(300, 300),
             bands=L4S_S2_BANDS) -> SentinelHubRequest:
    return SentinelHubRequest(
        evalscript=_evalscript(bands),
        input_data=[SentinelHubRequest.input_data(api.collection, time_interval=time, maxcc=maxcc)],
        responses=responses or [SentinelHubRequest.output_response("default", MimeType.TIFF)],
        bbox=BBOX, size=size, config=config,
    )


def _local(band: str, scale: int) -> np.ndarray:
    """The band's native crop, repeated to the 10 m grid (nearest resampling on an aligned grid)."""
    with rasterio.open(S2_JP2_DIR / f"s2_{band}.jp2") as src:
        data = src.read(1, window=from_bounds(*S2_CROP_BOUNDS, transform=src.transform).round_offsets().round_lengths())
    return np.repeat(np.repeat(data, scale, axis=0), scale, axis=1)


@pytest.fixture(scope="module")
def reference_10m() -> np.ndarray:
    """(H, W, 12) local bands on the 10 m grid of BBOX."""
    scales = {"B01": 6, "B09": 6, "B10": 6, "B05": 2, "B06": 2, "B07": 2, "B11": 2, "B12": 2}
    return np.stack([_local(b, scales.get(b, 1)) for b in L4S_S2_BANDS], axis=-1)


def test_process_api_returns_all_l4s_bands(sentinelhub_api, reference_10m):
    data = _request(sentinelhub_api, sentinelhub_api.config()).get_data()[0]
    assert data.shape == (300, 300, 12) and data.dtype == np.uint16
    np.testing.assert_array_equal(data, reference_10m)
    sent = sentinelhub_api.server.last_process_request
    assert sent["input"]["bounds"]["properties"]["crs"].endswith("EPSG/0/32618")
    assert sent["input"]["data"][0]["type"] == "sentinel-2-l1c"
    assert {r.headers.get("Authorization", "")[:7] for r in sentinelhub_api.faults.records
            if r.path == PROCESS} == {"Bearer "}


def test_process_api_multipart_tar(sentinelhub_api, reference_10m):
    responses = [SentinelHubRequest.output_response("default", MimeType.TIFF),
                 SentinelHubRequest.output_response("userdata", MimeType.JSON)]
    data = _request(sentinelhub_api, sentinelhub_api.config(), responses=responses, size=(150, 150),
                    bands=("B05", "B11")).get_data()[0]
    assert set(data) == {"default.tif", "userdata.json"}
    assert data["default.tif"].shape == (150, 150, 2)
    np.testing.assert_array_equal(data["default.tif"][..., 0], _local("B05", 1))
    assert data["userdata.json"] == {"scenes": ["S2A_18SVG_20160112_0_L1C"]}


def test_process_api_max_cloud_coverage_gives_no_data(sentinelhub_api):
    # 2016-02-01 has 71.3 % cloud: with maxcc 0.5 nothing matches, as on Sentinel Hub the image is empty
    data = _request(sentinelhub_api, sentinelhub_api.config(), time=("2016-02-01", "2016-02-02"),
                    maxcc=0.5, size=(30, 30), bands=("B02",)).get_data()[0]
    assert data.shape == (30, 30) and not data.any()


def test_catalog_search_pages_and_filters(sentinelhub_api):
    catalog = SentinelHubCatalog(config=sentinelhub_api.config())
    found = list(catalog.search(sentinelhub_api.collection, bbox=BBOX, time=("2016-01-01", "2016-03-01"), limit=1))
    assert [f["properties"]["datetime"][:10] for f in found] == ["2016-01-12", "2016-02-01"]
    assert sentinelhub_api.faults.statuses("/api/v1/catalog/1.0.0/search") == [200, 200]  # two pages via `next`
    clear = list(catalog.search(sentinelhub_api.collection, bbox=BBOX, time=("2016-01-01", "2016-03-01"),
                                filter="eo:cloud_cover < 30"))
    assert [f["properties"]["eo:cloud_cover"] for f in clear] == [2.5]


def test_wrong_secret_fails_with_client_error(sentinelhub_api):
    from oauthlib.oauth2.rfc6749.errors import InvalidClientError

    with pytest.raises(InvalidClientError):
        SentinelHubSession(config=sentinelhub_api.config(sh_client_secret="wrong"))
    assert sentinelhub_api.faults.statuses("/auth/") == [401]


def test_fault_429_retry_after_then_success(sentinelhub_api):
    # Retry-After is in milliseconds for Sentinel Hub (sentinelhub-py's RateLimit divides it by 1000)
    sentinelhub_api.faults.set("429", count=1, retry_after=200, path_prefix=PROCESS)
    with pytest.warns(SHRateLimitWarning):
        data = _request(sentinelhub_api, sentinelhub_api.config(), size=(30, 30), bands=("B02",)).get_data()[0]
    assert data.shape == (30, 30) and data.any()
    assert sentinelhub_api.faults.statuses(PROCESS) == [429, 200]


def test_fault_500_then_success(sentinelhub_api):
    sentinelhub_api.faults.set("500", count=1, path_prefix=PROCESS)
    data = _request(sentinelhub_api, sentinelhub_api.config(), size=(30, 30), bands=("B02",)).get_data()[0]
    assert data.any()
    assert sentinelhub_api.faults.statuses(PROCESS) == [500, 200]


def test_fault_500_exhausts_retries(sentinelhub_api):
    sentinelhub_api.faults.set("500", count=5, path_prefix=PROCESS)
    with pytest.raises(DownloadFailedException, match="500"):
        _request(sentinelhub_api, sentinelhub_api.config(max_download_attempts=2), size=(30, 30),
                 bands=("B02",)).get_data()
    assert sentinelhub_api.faults.statuses(PROCESS) == [500, 500]


def test_fault_401_is_not_retried(sentinelhub_api):
    sentinelhub_api.faults.set("401", count=1, path_prefix=PROCESS)
    with pytest.raises(DownloadFailedException, match="401"):
        _request(sentinelhub_api, sentinelhub_api.config(), size=(30, 30), bands=("B02",)).get_data()
    assert sentinelhub_api.faults.statuses(PROCESS) == [401]


def test_fault_truncated_body_and_timeout_are_retried(sentinelhub_api):
    sentinelhub_api.faults.set("truncate", count=1, path_prefix=PROCESS)
    data = _request(sentinelhub_api, sentinelhub_api.config(), size=(30, 30), bands=("B02",)).get_data()[0]
    assert data.any() and sentinelhub_api.faults.statuses(PROCESS) == [200, 200]  # first body was cut short
    sentinelhub_api.faults.clear_log()
    sentinelhub_api.faults.set("delay", count=1, delay_s=1.0, path_prefix=PROCESS)
    config = sentinelhub_api.config(download_timeout_seconds=0.4)
    data = _request(sentinelhub_api, config, size=(30, 30), bands=("B02",)).get_data()[0]
    assert data.any()
