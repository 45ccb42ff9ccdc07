"""A local server speaking the Sentinel Hub wire protocol, rendering the real T18SVG L1C bands.

Endpoints (all on 127.0.0.1, threaded):

- ``POST /auth/realms/main/protocol/openid-connect/token`` (also ``/oauth/token``): OAuth2 client
  credentials, form ``grant_type=client_credentials&client_id=..&client_secret=..`` (or HTTP Basic)
  -> ``{"access_token", "token_type": "Bearer", "expires_in", ...}``; a wrong id/secret gets
  401 ``{"error": "invalid_client", ...}`` as Keycloak answers. Tokens look like JWTs (the client
  decodes their payload in ``SentinelHubSession.info``).
- Catalog API 1.0.0 under ``/api/v1/catalog/1.0.0``: ``GET /`` , ``/conformance``, ``/collections``,
  ``/collections/{id}``, ``/collections/{id}/items/{item}``, and ``POST /search`` (collections, bbox in
  WGS84, intersects (by its bounds), datetime interval, ids, ``filter`` limited to
  ``eo:cloud_cover <|<=|>|>= N`` in cql2-text, ``limit`` and ``next``) answering a FeatureCollection
  with ``context: {next, limit, returned}`` and a ``rel=next`` POST link, as the real API pages.
- Process API ``POST /api/v1/process``: ``input.bounds`` (``bbox`` + ``properties.crs`` URI, or a
  ``geometry``: its bounds are rendered, no clipping), ``input.data[0]`` (``dataFilter.timeRange``,
  ``maxCloudCoverage``, ``processing.upsampling/downsampling``), ``output.width/height`` or
  ``resx/resy`` (in CRS units), ``output.responses``. One response -> ``image/tiff``; several ->
  ``application/x-tar`` with ``<identifier>.tif`` per tiff response and ``userdata.json`` for a
  ``userdata`` json response, like the real multipart tar fixture.

Simplifications (documented, on purpose):

- The evalscript is not executed. Only the band list of its ``setup()`` ``input`` is read (either
  ``input: ["B02", ...]`` or ``input: [{bands: ["B02", ...], ...}]``) and those bands are returned
  as UINT16 DN, in that order, in every tiff response. ``dataMask`` is 1 where the rendered scene has
  data, unknown bands are zeros.
- ``CLM`` (Sentinel Hub's cloud mask) is a deterministic stand-in, not a cloud detector: on a 60 m
  grid, 1 where the mean B02 DN of the cell exceeds 1250, 0 elsewhere, 255 where B02 is all 0;
  rendered with nearest neighbour (``BandStore._clm``). A test may replace the B02 rule by cloud
  blocks (``set_clm_clouds``: the cells touching given boxes are 1, the rest 0).
- There is one real acquisition (2016-01-12); the catalog lists the same scenes as the STAC server
  (``devservers.stac_server.SCENES``: 2016-01-12 cloud 2.5 %, 2016-02-01 cloud 71.3 %, 2022-01-25
  cloud 8.4 % baseline 04.00, and the two partial January 2017 scenes), all rendered from the same real
  pixels. The full scenes cover the whole real 19 km x 19 km subset; the partial ones only their
  footprint (the STAC server's strips of its 3 km crop: west x < 440220, east x >= 439020 in
  EPSG:32618), and the east one's DN carry the same +37 as on the STAC server. Outside a scene's
  footprint (or the subset) its pixels are 0 with ``dataMask`` 0 (Sentinel Hub's "no data").
- Several scenes in ``timeRange`` (under ``maxCloudCoverage``) are mosaicked per pixel as Sentinel Hub
  does (``mosaickingOrder``: ``mostRecent`` (default), ``leastRecent``, ``leastCC``): each pixel from
  the first scene in that order with ``dataMask`` 1 there. No scene -> all zeros.
- ``processing.harmonizeValues`` (default true, as on Sentinel Hub) removes the +1000 DN of processing
  baseline >= 04.00; ``false`` returns the raw DN (what the pipeline requests).
- DEM: ``type: dem`` with ``demInstance: COPERNICUS_30`` renders the real GLO-30 tile N00E006 (Sao Tome)
  as FLOAT32 metres with the request's resampling, 0 outside it (the service's answer over the sea);
  other DEM instances get 400.
- Bands are reprojected with rasterio from the native 10/20/60 m grids (nearest by default, like
  Sentinel Hub's default up/downsampling).

Faults (``FaultControl``): ``set("429", retry_after=...)`` - Retry-After is in **milliseconds**, as the
real service sends it and as sentinelhub-py's ``RateLimit`` reads it; ``set("500")``; ``set("401")``;
``set("delay", delay_s=...)``; ``set("truncate")``; use ``path_prefix`` to target one endpoint.

Run by hand::

    landslide dev-server sentinelhub --port 8083
    python -m devservers.sentinelhub_server --port 8083 --client-id test-id --client-secret test-secret
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.server
import io
import json
import logging
import re
import secrets
import tarfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds as transform_from_bounds
from rasterio.warp import reproject, transform_bounds, transform_geom

from devservers.stac_server import GLO30_TIF, S2_EPSG, S2_JP2_DIR, SCENES, Scene
from devservers.static_files import BackgroundServer, FaultControl, RequestRecord, serve_until_interrupted

LOGGER = logging.getLogger(__name__)

TOKEN_PATHS = ("/auth/realms/main/protocol/openid-connect/token", "/oauth/token")
CATALOG_PREFIX = "/api/v1/catalog/1.0.0"
PROCESS_PATH = "/api/v1/process"
L1C_COLLECTION = "sentinel-2-l1c"
L1C_TYPES = {"sentinel-2-l1c", "S2L1C"}
ALL_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
TOKEN_LIFETIME_S = 3600
CLM_B02_THRESHOLD_DN = 1250  # stand-in CLM: cloud where a 60 m cell's mean B02 DN is above this
_RESAMPLING = {"NEAREST": Resampling.nearest, "BILINEAR": Resampling.bilinear, "BICUBIC": Resampling.cubic}
_CLOUD_FILTER_RE = re.compile(r"eo:cloud_cover\s*(<=|>=|<|>|=)\s*([0-9.]+)")
CLM_NO_DATA = 255
MOSAICKING_ORDERS = ("mostRecent", "leastRecent", "leastCC")


class ApiError(Exception):
    """An error answered as Sentinel Hub's JSON error body."""

    def __init__(self, status: int, message: str, code: str = "COMMON_BAD_PAYLOAD") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def body(self) -> dict:
        reason = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}.get(self.status, "Error")
        return {"error": {"status": self.status, "reason": reason, "message": self.message, "code": self.code}}


# ---------------------------------------------------------------- pure helpers (no I/O)


def parse_evalscript_bands(evalscript: str) -> list[str]:
    """Band names of the evalscript's ``setup()`` input, in order.

    Accepts ``input: ["B02", "B03"]`` and ``input: [{bands: ["B02", "B03"], units: "DN"}]`` (quotes
    single or double, keys quoted or not).

    Raises:
        ApiError: no input band list found.
    """
    match = re.search(r"""["']?bands["']?\s*:\s*\[([^\]]*)\]""", evalscript)
    if match is None:
        match = re.search(r"""["']?input["']?\s*:\s*\[([^\]{]*)\]""", evalscript)
    if match is None:
        raise ApiError(400, "Could not find the input band list in the evalscript's setup()",
                       "RENDERER_EXCEPTION")
    bands = re.findall(r"""["']([A-Za-z0-9_]+)["']""", match.group(1))
    if not bands:
        raise ApiError(400, "Empty input band list in the evalscript's setup()", "RENDERER_EXCEPTION")
    return bands


def parse_crs(uri: str | None) -> CRS:
    """CRS from Sentinel Hub's CRS URIs (``http://www.opengis.net/def/crs/EPSG/0/32618``, ``.../OGC/1.3/CRS84``)."""
    if not uri or uri.rstrip("/").endswith("CRS84"):
        return CRS.from_epsg(4326)
    match = re.search(r"EPSG/0/(\d+)$", uri) or re.search(r"EPSG::(\d+)$", uri) or re.search(r"^EPSG:(\d+)$", uri)
    if match is None:
        raise ApiError(400, f"Unsupported CRS {uri!r}")
    return CRS.from_epsg(int(match.group(1)))


def _geometry_bounds(geometry: dict) -> tuple[float, float, float, float]:
    coords = np.asarray(_flatten_coords(geometry["coordinates"]), dtype=float)
    return float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max())


def _flatten_coords(coords: list) -> list:
    if coords and isinstance(coords[0], (int, float)):
        return [coords]
    return [point for part in coords for point in _flatten_coords(part)]


def _parse_time(value: str | None) -> dt.datetime | None:
    if value in (None, "", ".."):
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _in_interval(when: dt.datetime, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    return (start is None or when >= start) and (end is None or when <= end)


def _cloud_ok(cloud: float, op: str, value: float) -> bool:
    return {"<": cloud < value, "<=": cloud <= value, ">": cloud > value, ">=": cloud >= value,
            "=": cloud == value}[op]


def _fake_jwt(client_id: str) -> str:
    def enc(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    payload = {"sub": client_id, "azp": client_id, "iat": now, "exp": now + TOKEN_LIFETIME_S,
               "jti": secrets.token_hex(8), "iss": "local-sentinelhub-test-server"}
    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(payload)}.{secrets.token_hex(8)}"


# ---------------------------------------------------------------- scenes and rendering


@dataclass
class _Band:
    data: np.ndarray
    transform: rasterio.Affine
    crs: CRS


class BandStore:
    """The real T18SVG bands, decoded once on first use and kept in memory (about 40 MB)."""

    def __init__(self, jp2_dir: Path = S2_JP2_DIR) -> None:
        self.jp2_dir = jp2_dir
        self._bands: dict[str, _Band] = {}
        self._scene_bands: dict[tuple[str, str, bool], _Band] = {}
        self._lock = threading.Lock()
        self._clm_boxes: tuple[tuple[float, float, float, float], ...] | None = None

    def get(self, band: str) -> _Band:
        if band == "CLM":
            return self._clm()
        with self._lock:
            if band not in self._bands:
                with rasterio.open(self.jp2_dir / f"s2_{band}.jp2") as src:
                    self._bands[band] = _Band(src.read(1), src.transform, src.crs)
            return self._bands[band]

    def _clm(self) -> _Band:
        """A stand-in for Sentinel Hub's CLM cloud mask (0 clear, 1 cloud, 255 no data) on a 60 m grid.

        Test assignment, not a cloud detector: a 60 m cell is "cloud" where the mean B02 DN of its
        6 x 6 10 m pixels exceeds ``CLM_B02_THRESHOLD_DN`` (bright surfaces: 4 to 15 % of the cells
        in the test ROIs), 255 where all its B02 pixels are 0 (no data). Deterministic, so tests can
        compute the expected mask.
        """
        blue = self.get("B02")
        with self._lock:
            if "CLM" not in self._bands:
                h, w = (blue.data.shape[0] // 6) * 6, (blue.data.shape[1] // 6) * 6
                cells = blue.data[:h, :w].astype(np.float64).reshape(h // 6, 6, w // 6, 6)
                mean, empty = cells.mean(axis=(1, 3)), (cells == 0).all(axis=(1, 3))
                cloud = mean > CLM_B02_THRESHOLD_DN
                if self._clm_boxes is not None:
                    cloud = _cells_touching(self._clm_boxes, blue.transform * rasterio.Affine.scale(6), cloud.shape)
                clm = np.where(empty, 255, cloud).astype(np.uint16)
                self._bands["CLM"] = _Band(clm, blue.transform * rasterio.Affine.scale(6), blue.crs)
            return self._bands["CLM"]

    def set_clm_clouds(self, boxes: list[tuple[float, float, float, float]] | None) -> None:
        """Test assignment of the CLM stand-in: with ``boxes`` (left, bottom, right, top in EPSG:32618),
        CLM is 1 in the 60 m cells that touch a box and 0 in every other cell with data, in every scene,
        instead of the B02 rule; None restores the B02 rule. A cloud block whose shadow a test can
        predict; the Process API answers as always."""
        with self._lock:
            self._clm_boxes = tuple(tuple(float(v) for v in b) for b in boxes) if boxes else None  # type: ignore[misc]
            self._bands.pop("CLM", None)
            for key in [k for k in self._scene_bands if k[1] == "CLM"]:
                del self._scene_bands[key]

    def footprint_wgs84(self) -> tuple[float, float, float, float]:
        with rasterio.open(self.jp2_dir / "s2_B02.jp2") as src:
            return transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)

    def scene_band(self, scene: Scene, band: str, harmonize: bool) -> _Band:
        """One band of one served scene at its native resolution.

        The real pixels where their centres lie inside the scene's footprint (the whole subset for a
        full scene; ``CLM``: its cells that touch the footprint), plus the scene's test DN shift and, unless ``harmonize``, the +1000 DN of baseline
        >= 04.00 (nonzero pixels only); 0 outside (``CLM``: 255, its no-data value, and never shifted).
        """
        shift = 0 if band == "CLM" else scene.dn_delta + (0 if harmonize else scene.offset_dn)
        base = self.get(band)
        if scene.footprint_x is None and shift == 0:
            return base
        key = (scene.item_id, band, harmonize)
        with self._lock:
            if key not in self._scene_bands:
                data = base.data
                if scene.footprint_x is not None:
                    x0, y0, x1, y1 = scene.footprint_bounds
                    # bands: pixels centred inside; CLM (its 60 m cells are offset by 10 m from the
                    # footprint's edges): cells that touch the footprint, so that a cloud cell
                    # straddling an edge is cloud in every scene that has data under it
                    t = base.transform
                    left = t.c + np.arange(data.shape[1]) * t.a
                    top = t.f + np.arange(data.shape[0]) * t.e
                    if band == "CLM":
                        in_x = (left < x1) & (left + t.a > x0)
                        in_y = (top + t.e < y1) & (top > y0)
                    else:
                        cx, cy = left + t.a / 2, top + t.e / 2
                        in_x, in_y = (cx >= x0) & (cx < x1), (cy >= y0) & (cy < y1)
                    inside = in_y[:, None] & in_x[None, :]
                else:
                    inside = np.ones(data.shape, dtype=bool)
                if band == "CLM":
                    values = np.where(inside, data, CLM_NO_DATA)
                else:
                    values = np.where(inside & (data > 0), data.astype(np.int64) + shift, 0)
                values = np.clip(values, 0, np.iinfo(np.uint16).max).astype(np.uint16)
                self._scene_bands[key] = _Band(values, base.transform, base.crs)
            return self._scene_bands[key]

    def render_scene(self, scene: Scene, band: str, harmonize: bool, dst_crs: CRS,
                     dst_transform: rasterio.Affine, shape: tuple[int, int], resampling: Resampling) -> np.ndarray:
        """One band of one scene on the requested grid, uint16, 0 where the scene has no data."""
        src = self.scene_band(scene, band, harmonize)
        out = np.zeros(shape, dtype=np.uint16)
        reproject(src.data, out, src_transform=src.transform, src_crs=src.crs, src_nodata=0,
                  dst_transform=dst_transform, dst_crs=dst_crs, dst_nodata=0, resampling=resampling)
        return out

    def data_mask(self, scene: Scene, dst_crs: CRS, dst_transform: rasterio.Affine,
                  shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``dataMask`` of one scene on the requested grid: its 10 m B02 has data (nearest)."""
        return self.render_scene(scene, "B02", True, dst_crs, dst_transform, shape, Resampling.nearest) > 0


def _cells_touching(boxes, transform: rasterio.Affine, shape: tuple[int, int]) -> np.ndarray:
    """bool ``shape``: the cells of a north-up grid that overlap any of ``boxes`` (left, bottom, right, top)."""
    left = transform.c + np.arange(shape[1]) * transform.a
    top = transform.f + np.arange(shape[0]) * transform.e
    out = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        in_x = (left < x1) & (left + transform.a > x0)
        in_y = (top + transform.e < y1) & (top > y0)
        out |= in_y[:, None] & in_x[None, :]
    return out


def catalog_id(scene: Scene) -> str:
    """Sentinel Hub catalog id style: S2A_MSIL1C_20160112T155612_N0201_R097_T18SVG_20160112T160000."""
    date = scene.datetime[:10].replace("-", "")
    baseline = scene.processing_baseline.replace(".", "")
    return f"S2{scene.platform[-1].upper()}_MSIL1C_{date}T155612_N{baseline}_R097_T18SVG_{date}T160000"


def scene_footprint(store: BandStore, scene: Scene) -> tuple[dict, list[float]]:
    """(GeoJSON geometry in WGS84, bbox) of a served scene: the real subset, or the partial scene's strip."""
    if scene.footprint_x is None:
        left, bottom, right, top = store.footprint_wgs84()
        ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
        return {"type": "MultiPolygon", "coordinates": [[ring]]}, [left, bottom, right, top]
    left, bottom, right, top = scene.footprint_bounds
    ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    geom = transform_geom(f"EPSG:{S2_EPSG}", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    bbox = list(transform_bounds(f"EPSG:{S2_EPSG}", "EPSG:4326", *scene.footprint_bounds, densify_pts=21))
    return {"type": "MultiPolygon", "coordinates": [geom["coordinates"]]}, bbox


def catalog_features(store: BandStore, base_url: str) -> list[dict]:
    """STAC features of the served scenes, shaped like the Catalog API's sentinel-2-l1c features.

    The same scenes as the STAC server (``devservers.stac_server.SCENES``), with Sentinel Hub style ids
    (``catalog_id``) and footprints (``scene_footprint``).
    """
    features = []
    for scene in SCENES:
        geometry, bbox = scene_footprint(store, scene)
        features.append({
            "stac_version": "1.0.0",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.0.0/schema.json",
                                "https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
            "id": catalog_id(scene),
            "type": "Feature",
            "geometry": {**geometry, "crs": {"type": "name", "properties": {
                "name": "urn:ogc:def:crs:OGC::CRS84"}}},
            "bbox": bbox,
            "properties": {
                "datetime": scene.datetime,
                "platform": scene.platform,
                "instruments": ["msi"],
                "constellation": "sentinel-2",
                "gsd": 10,
                "eo:cloud_cover": scene.cloud_cover,
                "proj:epsg": 32618,
            },
            "assets": {},
            "links": [{"href": f"{base_url}{CATALOG_PREFIX}/collections/{L1C_COLLECTION}", "rel": "collection",
                       "type": "application/json"}],
            "collection": L1C_COLLECTION,
        })
    return features


# ---------------------------------------------------------------- HTTP layer


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        LOGGER.debug("sentinelhub %s - " + format, self.address_string(), *args)

    # -- plumbing

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None,
              truncate: bool = False) -> None:
        payload = body[: len(body) // 2] if truncate else body
        # log before answering, so a client that got the answer always finds it in the log
        self.server.faults.log(RequestRecord(self.command, self.path, status, None, len(payload),
                                             "truncate" if truncate else None, dict(self.headers)))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if truncate:
            self.close_connection = True

    def _json(self, status: int, obj: object, extra: dict[str, str] | None = None, truncate: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra, truncate)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._body()
        fault = self.server.faults.take(path, self.command)
        if fault is not None:
            if fault.mode == "delay":
                time.sleep(fault.delay_s)
            elif fault.mode == "429":
                self._json(429, {"status": 429, "reason": "Too Many Requests",
                                 "message": "You have exceeded your rate limit", "code": "RATE_LIMIT_EXCEEDED"},
                           {"Retry-After": fault.retry_after})
                return
            elif fault.mode in ("500", "401"):
                status = int(fault.mode)
                self._json(status, ApiError(status, f"scripted fault {status}",
                                            "COMMON_EXCEPTION" if status == 500 else "COMMON_UNAUTHORIZED").body())
                return
        truncate = fault is not None and fault.mode == "truncate"
        try:
            if self.command == "POST" and path in TOKEN_PATHS:
                self._token(body, truncate)
            elif path.startswith(CATALOG_PREFIX):
                self._require_auth()
                self._catalog(path[len(CATALOG_PREFIX):].rstrip("/"), body, truncate)
            elif self.command == "POST" and path == PROCESS_PATH:
                self._require_auth()
                self._process(body, truncate)
            else:
                raise ApiError(404, f"No endpoint {self.command} {path}", "COMMON_NOT_FOUND")
        except ApiError as err:
            self._json(err.status, err.body())
        except Exception as err:  # noqa: BLE001 - a test server answers 500 instead of dropping the socket
            LOGGER.exception("sentinelhub test server error")
            self._json(500, ApiError(500, f"{type(err).__name__}: {err}", "COMMON_EXCEPTION").body())

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    # -- endpoints

    def _require_auth(self) -> None:
        header = self.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        if token is None or not self.server.token_valid(token):
            raise ApiError(401, "Token is missing or invalid", "COMMON_UNAUTHORIZED")

    def _token(self, body: bytes, truncate: bool) -> None:
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            client_id, client_secret = urllib.parse.unquote(client_id), urllib.parse.unquote(client_secret)
        if form.get("grant_type") != "client_credentials":
            self._json(400, {"error": "unsupported_grant_type", "error_description": "Unsupported grant type"})
            return
        if client_id != self.server.client_id or client_secret != self.server.client_secret:
            self._json(401, {"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"})
            return
        token = self.server.issue_token(client_id)
        self._json(200, {"access_token": token, "expires_in": TOKEN_LIFETIME_S, "refresh_expires_in": 0,
                         "token_type": "Bearer", "not-before-policy": 0, "scope": "email profile"},
                   truncate=truncate)

    def _catalog(self, sub: str, body: bytes, truncate: bool) -> None:
        base = self.server.base_url
        root = f"{base}{CATALOG_PREFIX}"
        collection = {"stac_version": "1.0.0", "id": L1C_COLLECTION, "type": "Collection",
                      "title": "Sentinel 2 L1C", "description": "Sentinel 2 imagery processed to level 1C",
                      "license": "proprietary", "extent": {"spatial": {"bbox": [list(self.server.store.footprint_wgs84())]},
                                                           "temporal": {"interval": [["2015-11-01T00:00:00Z", None]]}},
                      "links": [{"href": f"{root}/collections/{L1C_COLLECTION}", "rel": "self"}]}
        if self.command == "GET" and sub == "":
            self._json(200, {"stac_version": "1.0.0", "id": "sentinel-hub", "type": "Catalog",
                             "title": "Sentinel Hub STAC catalog", "description": "Local test catalog",
                             "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                            "https://api.stacspec.org/v1.0.0/item-search",
                                            "https://api.stacspec.org/v1.0.0/item-search#filter"],
                             "links": [{"href": f"{root}/", "rel": "self"},
                                       {"href": f"{root}/search", "rel": "search", "method": "POST"}]})
        elif self.command == "GET" and sub == "/conformance":
            self._json(200, {"conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                            "https://api.stacspec.org/v1.0.0/item-search"]})
        elif self.command == "GET" and sub == "/collections":
            self._json(200, {"collections": [collection], "links": []})
        elif self.command == "GET" and sub == f"/collections/{L1C_COLLECTION}":
            self._json(200, collection)
        elif self.command == "GET" and sub.startswith(f"/collections/{L1C_COLLECTION}/items/"):
            item_id = sub.rsplit("/", 1)[1]
            found = [f for f in catalog_features(self.server.store, base) if f["id"] == item_id]
            if not found:
                raise ApiError(404, f"Item {item_id} not found", "COMMON_NOT_FOUND")
            self._json(200, found[0])
        elif self.command == "POST" and sub == "/search":
            self._json(200, self._search(json.loads(body or b"{}")), truncate=truncate)
        else:
            raise ApiError(404, f"No catalog endpoint {self.command} {sub}", "COMMON_NOT_FOUND")

    def _search(self, query: dict) -> dict:
        features = catalog_features(self.server.store, self.server.base_url)
        collections = query.get("collections") or [L1C_COLLECTION]
        features = [f for f in features if f["collection"] in collections]
        if "bbox" in query or "intersects" in query:
            west, south, east, north = query.get("bbox") or _geometry_bounds(query["intersects"])
            features = [f for f in features if not (f["bbox"][0] > east or f["bbox"][2] < west
                                                    or f["bbox"][1] > north or f["bbox"][3] < south)]
        if query.get("datetime"):
            start_s, _, end_s = query["datetime"].partition("/")
            start, end = _parse_time(start_s), _parse_time(end_s or start_s)
            features = [f for f in features if _in_interval(_parse_time(f["properties"]["datetime"]), start, end)]
        if query.get("ids"):
            features = [f for f in features if f["id"] in query["ids"]]
        flt = query.get("filter")
        if isinstance(flt, str):
            for op, value in _CLOUD_FILTER_RE.findall(flt):
                features = [f for f in features if _cloud_ok(f["properties"]["eo:cloud_cover"], op, float(value))]
        elif flt:
            raise ApiError(400, "This test server only understands cql2-text eo:cloud_cover comparisons")
        limit = max(1, min(int(query.get("limit", 10)), 100))
        start = int(query.get("next") or 0)
        page = features[start:start + limit]
        next_index = start + limit if start + limit < len(features) else None
        context = {"limit": limit, "returned": len(page)}
        links = []
        if next_index is not None:
            context["next"] = next_index
            links.append({"href": f"{self.server.base_url}{CATALOG_PREFIX}/search", "rel": "next",
                          "type": "application/geo+json", "title": "Next set of results", "method": "POST",
                          "body": {"next": next_index}, "merge": True})
        return {"type": "FeatureCollection", "features": page, "links": links, "context": context}

    def _process_dem(self, request: dict, data: dict, crs: CRS, bounds: tuple[float, float, float, float],
                     width: int, height: int, out: dict, truncate: bool) -> None:
        """``type: dem`` with ``demInstance: COPERNICUS_30``: the real GLO-30 tile, FLOAT32 metres,
        0 outside it (as the service answers over the sea). Other instances: 400 (not served here)."""
        instance = (data.get("dataFilter") or {}).get("demInstance", "MAPZEN")
        if instance != "COPERNICUS_30":
            raise ApiError(400, f"demInstance {instance!r} is not served by this test server (COPERNICUS_30 is)")
        bands = parse_evalscript_bands(request.get("evalscript") or "")
        transform = transform_from_bounds(*bounds, width, height)
        processing = data.get("processing") or {}
        key = processing.get("upsampling") or processing.get("downsampling") or "NEAREST"
        dem = self.server.dem()
        stack = np.zeros((len(bands), height, width), dtype=np.float32)
        for i, band in enumerate(bands):
            if band == "DEM":
                reproject(dem.data, stack[i], src_transform=dem.transform, src_crs=dem.crs,
                          dst_transform=transform, dst_crs=crs, dst_nodata=0,
                          resampling=_RESAMPLING.get(key, Resampling.nearest))
        self.server.last_process_request = request
        self._send(200, _encode_tiff(stack, crs, transform), "image/tiff", truncate=truncate)

    def _process(self, body: bytes, truncate: bool) -> None:
        try:
            request = json.loads(body)
        except json.JSONDecodeError as err:
            raise ApiError(400, f"Request body is not JSON: {err}") from err
        store = self.server.store
        inp, out = request.get("input") or {}, request.get("output") or {}
        bounds = inp.get("bounds") or {}
        crs = parse_crs((bounds.get("properties") or {}).get("crs"))
        if "bbox" in bounds:
            west, south, east, north = bounds["bbox"]
        elif "geometry" in bounds:
            west, south, east, north = _geometry_bounds(bounds["geometry"])
        else:
            raise ApiError(400, "input.bounds needs bbox or geometry")
        if "width" in out or "height" in out:
            width, height = int(out.get("width", 0)), int(out.get("height", 0))
        elif "resx" in out and "resy" in out:
            width = int(round((east - west) / float(out["resx"])))
            height = int(round((north - south) / float(out["resy"])))
        else:
            raise ApiError(400, "output needs width/height or resx/resy")
        if not (1 <= width <= 2500 and 1 <= height <= 2500):
            raise ApiError(400, f"Output size {width}x{height} outside 1..2500 px (the real API's limit)")
        data_list = inp.get("data") or []
        if not data_list:
            raise ApiError(400, "input.data is empty")
        data = data_list[0]
        if data.get("type") == "dem":
            self._process_dem(request, data, crs, (west, south, east, north), width, height, out, truncate)
            return
        if data.get("type") not in L1C_TYPES:
            raise ApiError(400, f"Unsupported data type {data.get('type')!r}; this server serves sentinel-2-l1c")
        dfilter = data.get("dataFilter") or {}
        time_range = dfilter.get("timeRange") or {}
        start, end = _parse_time(time_range.get("from")), _parse_time(time_range.get("to"))
        max_cc = float(dfilter.get("maxCloudCoverage", 100))
        scenes = order_scenes([s for s in SCENES if s.cloud_cover <= max_cc
                               and _in_interval(_parse_time(s.datetime), start, end)],
                              dfilter.get("mosaickingOrder") or "mostRecent")
        processing = data.get("processing") or {}
        harmonize = bool(processing.get("harmonizeValues", True))
        bands = parse_evalscript_bands(request.get("evalscript") or "")
        transform = transform_from_bounds(west, south, east, north, width, height)
        shape = (height, width)
        # per pixel, the first scene (in mosaicking order) with data there; 0 = none
        index = np.zeros(shape, dtype=np.uint8)
        for k, scene in enumerate(scenes, start=1):
            index[(index == 0) & store.data_mask(scene, crs, transform, shape)] = k
        used = [(k, scene) for k, scene in enumerate(scenes, start=1) if (index == k).any()]
        stack = np.zeros((len(bands), height, width), dtype=np.uint16)
        for i, band in enumerate(bands):
            if band == "dataMask":
                stack[i] = index > 0
                continue
            if band == "CLM":  # a mask: never interpolated here
                resampling = Resampling.nearest
            elif band in ALL_BANDS:
                # Sentinel Hub: upsampling applies where the output is finer than the source, else downsampling.
                src_res = abs(store.get(band).transform.a)
                out_res_m = abs(transform.a) if crs.is_projected else abs(transform.a) * 111_320
                key = processing.get("upsampling" if out_res_m < src_res else "downsampling", "NEAREST")
                resampling = _RESAMPLING.get(key, Resampling.nearest)
            else:
                continue
            for k, scene in used:
                rendered = store.render_scene(scene, band, harmonize, crs, transform, shape, resampling)
                stack[i][index == k] = rendered[index == k]
        tiff = _encode_tiff(stack, crs, transform)
        responses = out.get("responses") or [{"identifier": "default", "format": {"type": "image/tiff"}}]
        self.server.last_process_request = request
        if len(responses) == 1:
            fmt = (responses[0].get("format") or {}).get("type", "image/tiff")
            if fmt != "image/tiff":
                raise ApiError(400, f"This test server renders image/tiff only, got {fmt}")
            self._send(200, tiff, "image/tiff", truncate=truncate)
            return
        self._send(200, _encode_tar(responses, tiff, scenes), "application/x-tar", truncate=truncate)


def order_scenes(scenes: list[Scene], order: str) -> list[Scene]:
    """Scenes in Sentinel Hub's ``mosaickingOrder`` (``leastCC`` ties: the most recent first).

    Raises:
        ApiError: an unknown order (400, as the service answers).
    """
    if order not in MOSAICKING_ORDERS:
        raise ApiError(400, f"mosaickingOrder {order!r} is not one of {', '.join(MOSAICKING_ORDERS)}")
    newest_first = sorted(scenes, key=lambda s: s.datetime, reverse=True)
    if order == "mostRecent":
        return newest_first
    if order == "leastRecent":
        return newest_first[::-1]
    return sorted(newest_first, key=lambda s: s.cloud_cover)


def _encode_tiff(stack: np.ndarray, crs: CRS, transform: rasterio.Affine) -> bytes:
    count, height, width = stack.shape
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=width, height=height, count=count, dtype=stack.dtype.name, crs=crs,
                      transform=transform, compress="deflate") as dst:
            dst.write(stack)
        return mem.read()


def _encode_tar(responses: list[dict], tiff: bytes, scenes: list) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for response in responses:
            ident = response.get("identifier", "default")
            fmt = (response.get("format") or {}).get("type", "image/tiff")
            if fmt == "application/json":
                payload = json.dumps({"scenes": [s.item_id for s in scenes]}).encode()
                name = f"{ident}.json"
            elif fmt == "image/tiff":
                payload, name = tiff, f"{ident}.tif"
            else:
                raise ApiError(400, f"This test server renders image/tiff and application/json only, got {fmt}")
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], client_id: str, client_secret: str, faults: FaultControl,
                 store: BandStore) -> None:
        super().__init__(address, _Handler)
        self.client_id, self.client_secret = client_id, client_secret
        self.faults, self.store = faults, store
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self.last_process_request: dict | None = None
        self._dem: _Band | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def dem(self) -> _Band:
        """The real GLO-30 tile (N00 E006), read once."""
        with self._lock:
            if self._dem is None:
                with rasterio.open(GLO30_TIF) as src:
                    data = src.read(1).astype(np.float32)
                    if src.nodata is not None:
                        data[data == src.nodata] = 0
                    self._dem = _Band(data, src.transform, src.crs)
            return self._dem

    def issue_token(self, client_id: str) -> str:
        token = _fake_jwt(client_id)
        with self._lock:
            self._tokens[token] = time.time() + TOKEN_LIFETIME_S
        return token

    def token_valid(self, token: str) -> bool:
        with self._lock:
            return self._tokens.get(token, 0) > time.time()

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()


class SentinelHubTestServer(BackgroundServer):
    """The Sentinel Hub test server in a background thread on 127.0.0.1.

    Attributes after ``start()``: ``base_url`` (for ``SHConfig.sh_base_url`` and a collection's
    ``service_url``), ``token_url`` (``SHConfig.sh_token_url``), ``faults`` (script + request log).
    """

    def __init__(self, client_id: str = "test-client-id", client_secret: str = "test-client-secret",
                 port: int = 0, faults: FaultControl | None = None, store: BandStore | None = None) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.faults = faults or FaultControl()
        self._server = _Server(("127.0.0.1", port), client_id, client_secret, self.faults, store or BandStore())
        self.thread_name = "sentinelhub-test"

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def token_url(self) -> str:
        return f"{self.base_url}{TOKEN_PATHS[0]}"

    @property
    def store(self) -> BandStore:
        return self._server.store

    @property
    def last_process_request(self) -> dict | None:
        return self._server.last_process_request

    def revoke_tokens(self) -> None:
        """Invalidate every issued token (the next API call gets 401)."""
        self._server.revoke_tokens()

    def set_clm_clouds(self, boxes: list[tuple[float, float, float, float]] | None) -> None:
        """CLM cloud blocks instead of the B02 stand-in (``BandStore.set_clm_clouds``); None restores it."""
        self._server.store.set_clm_clouds(boxes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Sentinel Hub (OAuth, Catalog, Process API) test server")
    parser.add_argument("--port", type=int, default=8083)
    parser.add_argument("--client-id", default="test-client-id")
    parser.add_argument("--client-secret", default="test-client-secret")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with SentinelHubTestServer(args.client_id, args.client_secret, args.port) as server:
        print(f"Sentinel Hub test server: sh_base_url={server.base_url} sh_token_url={server.token_url} "
              f"client_id={args.client_id} (Ctrl-C to stop; clients need OAUTHLIB_INSECURE_TRANSPORT=1)", flush=True)
        serve_until_interrupted()


if __name__ == "__main__":
    main()
