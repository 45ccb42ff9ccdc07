"""The local Sentinel Hub server, exercised with the unmodified sentinelhub 3.12 client."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from devservers.stac_server import S2_CROP_BOUNDS, S2_JP2_DIR

sentinelhub = pytest.importorskip("sentinelhub")
from sentinelhub import (  # noqa: E402
    CRS,
    BBox,
    MimeType,
    MosaickingOrder,
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


# ---------------------------------------------------------------- the partial January 2017 scenes

from devservers.sentinelhub_server import catalog_id  # noqa: E402
from devservers.stac_server import (  # noqa: E402
    BASELINE_OFFSET_DN,
    SCENES,
    SPLIT_EAST_DN_DELTA,
    SPLIT_EAST_X,
    SPLIT_WEST_X,
)

WEST_SCENE, EAST_SCENE = (s for s in SCENES if s.footprint_x is not None)
WEST_DAY, EAST_DAY = ("2017-01-10", "2017-01-11"), ("2017-01-20", "2017-01-21")


def _crop_xs() -> np.ndarray:
    """x of the pixel centres of the 300 px (10 m) columns of BBOX, broadcast to (300, 300)."""
    return np.broadcast_to(S2_CROP_BOUNDS[0] + (np.arange(300) + 0.5) * 10.0, (300, 300))


def _mask_request(api, time, harmonize=None, order=None):
    other = {"processing": {"harmonizeValues": harmonize}} if harmonize is not None else None
    return SentinelHubRequest(
        evalscript=_evalscript(("B02", "B05", "dataMask")),
        input_data=[SentinelHubRequest.input_data(
            api.collection, time_interval=time, mosaicking_order=MosaickingOrder(order) if order else None,
            other_args=other)],
        responses=[SentinelHubRequest.output_response("default", MimeType.TIFF)],
        bbox=BBOX, size=(300, 300), config=api.config(),
    ).get_data()[0]


def test_catalog_lists_the_partial_scenes_with_their_footprints(sentinelhub_api):
    import shapely
    from rasterio.warp import transform_geom

    catalog = SentinelHubCatalog(config=sentinelhub_api.config())
    found = list(catalog.search(sentinelhub_api.collection, bbox=BBOX, time=("2017-01-01", "2017-01-31")))
    assert [f["id"] for f in found] == [catalog_id(WEST_SCENE), catalog_id(EAST_SCENE)]
    assert [f["properties"]["eo:cloud_cover"] for f in found] == [3.1, 5.6]
    assert "_N0204_" in found[0]["id"] and "_N0400_" in found[1]["id"]  # the baselines, as in the STAC items
    for feature, (x0, x1) in zip(found, (SPLIT_WEST_X, SPLIT_EAST_X)):
        strip = shapely.box(x0, S2_CROP_BOUNDS[1], x1, S2_CROP_BOUNDS[3])
        utm = shapely.geometry.shape(transform_geom("EPSG:4326", "EPSG:32618", feature["geometry"]))
        assert utm.symmetric_difference(strip).area < 1e-3 * strip.area
    # a bbox wholly east of the west strip finds only the east scene
    east_only = BBox((440400.0, 4175000.0, 441000.0, 4176000.0), CRS(32618))
    found = list(catalog.search(sentinelhub_api.collection, bbox=east_only, time=("2017-01-01", "2017-01-31")))
    assert [f["id"] for f in found] == [catalog_id(EAST_SCENE)]


def test_partial_scene_is_nodata_outside_its_footprint(sentinelhub_api):
    xs, b02 = _crop_xs(), _local("B02", 1).astype(np.int64)
    west = _mask_request(sentinelhub_api, WEST_DAY)
    inside = (xs >= SPLIT_WEST_X[0]) & (xs < SPLIT_WEST_X[1])
    np.testing.assert_array_equal(west[..., 2], inside.astype(np.uint16))  # dataMask
    np.testing.assert_array_equal(west[..., 0], np.where(inside, b02, 0))
    np.testing.assert_array_equal(west[..., 1], np.where(inside, _local("B05", 2), 0))  # 20 m, nearest
    # the east scene: +37 DN; baseline 04.00 adds +1000 unless harmonized (Sentinel Hub's default)
    inside = (xs >= SPLIT_EAST_X[0]) & (xs < SPLIT_EAST_X[1])
    harmonized = _mask_request(sentinelhub_api, EAST_DAY)
    raw = _mask_request(sentinelhub_api, EAST_DAY, harmonize=False)
    np.testing.assert_array_equal(harmonized[..., 2], inside.astype(np.uint16))
    np.testing.assert_array_equal(harmonized[..., 0], np.where(inside, b02 + SPLIT_EAST_DN_DELTA, 0))
    np.testing.assert_array_equal(raw[..., 0], np.where(inside, b02 + SPLIT_EAST_DN_DELTA + BASELINE_OFFSET_DN, 0))
    assert inside.any() and (~inside).any()


def test_time_range_with_both_scenes_is_mosaicked_in_order(sentinelhub_api):
    xs, b02 = _crop_xs(), _local("B02", 1).astype(np.int64)
    overlap = (xs >= SPLIT_EAST_X[0]) & (xs < SPLIT_WEST_X[1])
    month = ("2017-01-01", "2017-01-31")
    least_cc = _mask_request(sentinelhub_api, month, order="leastCC")[..., 0].astype(np.int64)
    recent = _mask_request(sentinelhub_api, month, order="mostRecent")[..., 0].astype(np.int64)
    assert (least_cc > 0).all() and (recent > 0).all()  # together they cover the crop
    np.testing.assert_array_equal(least_cc[overlap], b02[overlap])  # west (3.1 %) first
    np.testing.assert_array_equal(recent[overlap], b02[overlap] + SPLIT_EAST_DN_DELTA)  # east (01-20) first
    west_only, east_only = xs < SPLIT_EAST_X[0], xs >= SPLIT_WEST_X[1]
    for got in (least_cc, recent):
        np.testing.assert_array_equal(got[west_only], b02[west_only])
        np.testing.assert_array_equal(got[east_only], b02[east_only] + SPLIT_EAST_DN_DELTA)
