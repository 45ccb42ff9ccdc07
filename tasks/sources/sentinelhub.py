"""The ``sentinelhub`` source: Catalog API search + Process API download of the scenes over the ROI.

What it does, in order (``fetch_sentinelhub_inputs``):

1. credentials from the environment (``SH_CLIENT_ID`` / ``SH_CLIENT_SECRET``, names configurable) or a
   Prefect Secret block holding ``id:secret``; the secret goes to ``SHConfig`` and nowhere else;
2. Catalog API search over the ROI's bbox and the date window with ``eo:cloud_cover <= max_cloud_pct``;
   scene choice as for the ``stac`` source (``tasks.sources.mosaic.choose_mosaic``): the least-cloudy scene
   whose footprint covers the ROI alone (ties: the most recent), else a per-pixel mosaic of the ranked
   scenes that each add footprint, up to ``max_mosaic_scenes`` (``SceneInputs.mosaic``; alignment takes
   every pixel from the first of them with data and no cloud there);
3. per chosen scene, Process API requests of the wanted bands as UINT16 DN on the analysis grid
   (``tasks.core.grid.make_grid``: UTM of the ROI, 10 m, snapped outward), time range = that scene's UTC
   day (so Sentinel Hub renders that acquisition; ``leastCC`` only orders the tiles of that day),
   ``harmonizeValues: false`` (raw DN; the pipeline subtracts ``offset_dn`` from the processing
   baseline), bilinear up/downsampling (the band contract's resampling); the grid is cut into pieces of
   at most 2500 x 2500 px (the API's limit) and reassembled;
4. the DEM collection (FLOAT32, metres) on the same grid, when the source names one;
5. the CLM cloud mask (``cloud_mask: true``, the default) as one more output band of the same
   requests, with B08 and B03 when the model does not ask for them; alignment turns it into cloud and
   shadow classes (``tasks.raster.clouds``: CLM is the cloud, its shadows are projected away from the
   sun, computed for the scene's time, where B08 is dark) and drops both from the analysed area;
6. one GeoTIFF per band in a cache folder keyed by a hash of the request, written to a temporary folder
   and renamed into place, so a rerun makes no request and a failure leaves nothing under a cache name.

Pure helpers (``plan_pieces``, ``build_evalscript``, ``scene_candidates``, ``choose_scenes``,
``scene_baseline``, ``request_key``) hold the decisions; the rest is I/O through the unmodified ``sentinelhub`` client.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import rasterio
import shapely
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from tasks.core.bands import SPECTRAL_BAND_NAMES, spectral_request
from tasks.core.errors import InputError, SourceError
from tasks.core.files import atomic_write_json
from tasks.core.grid import AnalysisGrid, make_grid
from tasks.sources.catalog import SentinelHubSource
from tasks.sources.cloud import SH_CLM_BAND, SH_CLM_ORIGIN, clm_plan
from tasks.sources.local import SceneInputs, harmonization_offset
from tasks.sources.mosaic import FULL_COVER, SceneCandidate, choose_mosaic, window_end

log = logging.getLogger(__name__)

MAX_PX = 2500  # Process API: output width and height each at most 2500 px
FIRST_S2_DAY = dt.date(2015, 6, 27)  # Sentinel-2A's first acquisitions: the open start of a window
TOKEN_PATH = "/auth/realms/main/protocol/openid-connect/token"
CACHE_VERSION = 1  # bump when the request body or the file layout changes

# Catalog collection id -> (sentinelhub DataCollection attribute, contract bands it has)
COLLECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sentinel-2-l1c": ("SENTINEL2_L1C", SPECTRAL_BAND_NAMES),
    "sentinel-2-l2a": ("SENTINEL2_L2A", tuple(b for b in SPECTRAL_BAND_NAMES if b != "B10")),
}
DEM_COLLECTIONS: dict[str, str] = {
    "COPERNICUS_30": "DEM_COPERNICUS_30", "COPERNICUS_90": "DEM_COPERNICUS_90", "MAPZEN": "DEM_MAPZEN"}
# bands the shadow rule reads (tasks.raster.clouds.classify): B08 darkness, B03 the water test
SHADOW_RULE_BANDS = ("B08", "B03")
_BASELINE_IN_ID = re.compile(r"_N(\d{2})(\d{2})_")


@dataclass(frozen=True)
class Credentials:
    """OAuth client credentials; ``secret`` never appears in ``repr`` or logs."""

    client_id: str
    secret: str = field(repr=False)
    origin: str  # where they came from, e.g. "environment SH_CLIENT_ID/SH_CLIENT_SECRET"


# ---------------------------------------------------------------- pure helpers


def plan_pieces(width: int, height: int, max_px: int = MAX_PX) -> list[Window]:
    """Cut a ``width`` x ``height`` grid into near-equal windows of at most ``max_px`` per side.

    Raises:
        InputError: a non-positive size or limit.
    """
    if width < 1 or height < 1 or max_px < 1:
        raise InputError(f"cannot split a {width} x {height} px grid into pieces of {max_px} px")
    nx, ny = math.ceil(width / max_px), math.ceil(height / max_px)
    xs = [round(i * width / nx) for i in range(nx + 1)]
    ys = [round(j * height / ny) for j in range(ny + 1)]
    return [Window(xs[i], ys[j], xs[i + 1] - xs[i], ys[j + 1] - ys[j])
            for j in range(ny) for i in range(nx)]


def build_evalscript(bands: tuple[str, ...], sample_type: str = "UINT16") -> str:
    """A V3 evalscript returning ``bands`` in this order as DN of ``sample_type``."""
    names = ", ".join(f'"{b}"' for b in bands)
    values = ", ".join(f"s.{b}" for b in bands)
    return (
        "//VERSION=3\n"
        "function setup() {\n"
        f'  return {{input: [{{bands: [{names}], units: "DN"}}],\n'
        f'          output: {{bands: {len(bands)}, sampleType: "{sample_type}"}}}};\n'
        "}\n"
        f"function evaluatePixel(s) {{ return [{values}]; }}\n")


def scene_candidates(features: list[dict], max_cloud_pct: float) -> list[SceneCandidate]:
    """Catalog features with a known ``eo:cloud_cover`` within the limit, as ``tasks.sources.mosaic`` candidates.

    The footprint is the feature's geometry (WGS84, as the Catalog API answers); None (no geometry)
    counts as covering everything.
    """
    out = []
    for feat in features:
        props = feat.get("properties", {})
        cloud = props.get("eo:cloud_cover")
        if cloud is None or float(cloud) > max_cloud_pct:
            continue
        geom = feat.get("geometry")
        footprint = shapely.geometry.shape({k: geom[k] for k in ("type", "coordinates")}) if geom else None
        out.append(SceneCandidate(feat["id"], float(cloud), _utc_iso(props.get("datetime")), footprint))
    return out


def choose_scenes(features: list[dict], roi_lonlat: shapely.Geometry, max_cloud_pct: float, end: dt.datetime,
                  max_scenes: int) -> tuple[list[dict], float]:
    """The features to render, best first, and the share of the ROI their footprints cover.

    The ``stac`` source's rule (``tasks.sources.mosaic.choose_mosaic``): the best-ranked feature covering the ROI
    alone, else the ranked features (cloud cover, closeness to ``end``, id) that each add footprint, up
    to ``max_scenes`` (with 1: the best-ranked feature meeting the ROI). Features under the limit on the
    same UTC day as a better one are dropped: that day's request (``leastCC`` within the day) already
    renders them. Empty when no feature under the limit meets the ROI.
    """
    by_id = {f["id"]: f for f in features}
    picked, covered = choose_mosaic(scene_candidates(features, max_cloud_pct), roi_lonlat, end, max_scenes)
    chosen, days = [], set()
    for cand in picked:
        day = cand.acquired[:10]
        if day and day in days:
            continue
        days.add(day)
        chosen.append(by_id[cand.scene_id])
    return chosen, covered


def _utc_iso(value: str | None) -> str:
    if not value:
        return ""
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat()


def scene_baseline(item: dict) -> str | None:
    """Processing baseline of a catalog item: ``s2:processing_baseline``, else the ``_Nxxyy_`` of its id."""
    props = item.get("properties", {})
    if props.get("s2:processing_baseline"):
        return str(props["s2:processing_baseline"])
    match = _BASELINE_IN_ID.search(item.get("id", ""))
    return f"{match.group(1)}.{match.group(2)}" if match else None


def request_key(**parts: Any) -> str:
    """Stable hash (24 hex) of a request description (JSON of sorted keys)."""
    text = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _window_bounds(grid: AnalysisGrid, win: Window) -> tuple[float, float, float, float]:
    left = grid.xmin + win.col_off * grid.res_m
    top = grid.ymax - win.row_off * grid.res_m
    return (left, top - win.height * grid.res_m, left + win.width * grid.res_m, top)


# ---------------------------------------------------------------- credentials and client


def resolve_credentials(source: SentinelHubSource) -> Credentials:
    """Client id and secret from the environment, else from the Prefect Secret block.

    Raises:
        InputError: neither is configured (names the variables and the block).
    """
    cid = os.environ.get(source.client_id_env, "").strip()
    secret = os.environ.get(source.client_secret_env, "").strip()
    if cid and secret:
        return Credentials(cid, secret, f"environment {source.client_id_env}/{source.client_secret_env}")
    if source.secret_block:
        try:
            from prefect.blocks.system import Secret

            value = str(Secret.load(source.secret_block).get())
        except Exception as exc:  # noqa: BLE001 - any failure to read the block is a config problem
            raise InputError(
                f"Sentinel Hub credentials: Prefect Secret block {source.secret_block!r} could not be read "
                f"({type(exc).__name__}); create it with value 'id:secret', or set "
                f"{source.client_id_env} and {source.client_secret_env}") from None
        cid, sep, secret = value.partition(":")
        if not sep or not cid.strip() or not secret.strip():
            raise InputError(f"Sentinel Hub credentials: Prefect Secret block {source.secret_block!r} must "
                             "hold 'client_id:client_secret'")
        return Credentials(cid.strip(), secret.strip(), f"Prefect Secret block {source.secret_block!r}")
    raise InputError(
        f"Sentinel Hub credentials missing: set {source.client_id_env} and {source.client_secret_env} "
        "(an OAuth client of your Sentinel Hub / CDSE account), or name a Prefect Secret block holding "
        "'id:secret' with 'secret_block:' in data_catalog.yaml")


def _config(source: SentinelHubSource, creds: Credentials, retry_sleep_s: float) -> Any:
    from sentinelhub import SHConfig

    attempts = source.max_retries + 1
    return SHConfig(
        use_defaults=True,  # never read or write ~/.config/sentinelhub/config.toml
        sh_client_id=creds.client_id,
        sh_client_secret=creds.secret,
        sh_base_url=source.base_url.rstrip("/"),
        sh_token_url=source.token_url or source.base_url.rstrip("/") + TOKEN_PATH,
        max_download_attempts=attempts,  # 5xx, timeouts, cut bodies: sleep x3 backoff between tries
        download_sleep_time=retry_sleep_s,
        max_retries=attempts,  # 429: bounded (the client waits Retry-After, in milliseconds)
        download_timeout_seconds=source.timeout_s,
    )


def _collection(attr: str, base_url: str) -> Any:
    """A built-in collection re-defined with ``service_url`` = our base URL (built-ins pin their own)."""
    from sentinelhub import DataCollection

    base = getattr(DataCollection, attr)
    name = f"LANDSLIDE_{attr}_{hashlib.sha1(base_url.encode()).hexdigest()[:8]}"
    definition = base.value.derive(service_url=base_url.rstrip("/"), _name=name)
    if definition in DataCollection._value2member_map_:  # same collection defined elsewhere (any name)
        return DataCollection(definition)
    return base.define_from(name, service_url=base_url.rstrip("/"))


def _status(exc: BaseException) -> int | None:
    req = getattr(exc, "request_exception", None)
    resp = getattr(req, "response", None)
    return getattr(resp, "status_code", None)


@contextlib.contextmanager
def _translated(what: str, source: SentinelHubSource, creds: Credentials) -> Iterator[None]:
    """Turn client exceptions into one-line ``SourceError``s (never carrying the secret)."""
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error
    from sentinelhub.exceptions import BaseSentinelHubException, OutOfRequestsException

    hint = (f"check {source.client_id_env}/{source.client_secret_env} ({creds.origin}) and that the "
            f"OAuth client may use {source.base_url}")
    try:
        yield
    except OAuth2Error as exc:
        raise SourceError(f"Sentinel Hub {what}: credentials rejected by the token endpoint "
                          f"({exc.error}); {hint}") from None
    except OutOfRequestsException:
        raise SourceError(f"Sentinel Hub {what}: still rate limited (429) after {source.max_retries + 1} "
                          "attempts; wait and rerun, or raise max_retries in data_catalog.yaml") from None
    except BaseSentinelHubException as exc:
        status = _status(exc)
        if status in (401, 403):
            raise SourceError(f"Sentinel Hub {what}: credentials rejected (HTTP {status}); {hint}") from None
        first = _clean(str(exc), creds)
        raise SourceError(f"Sentinel Hub {what} failed after {source.max_retries + 1} attempts"
                          f"{f' (HTTP {status})' if status else ''}: {first}") from None
    except Exception as exc:  # requests/ssl errors that escape the client
        import requests

        if isinstance(exc, requests.RequestException):
            raise SourceError(f"Sentinel Hub {what}: {type(exc).__name__}: {_clean(str(exc), creds)}") from None
        raise


def _clean(text: str, creds: Credentials) -> str:
    line = " ".join(text.split())[:300]
    return line.replace(creds.secret, "***") if creds.secret else line


# ---------------------------------------------------------------- catalog search


def _search(source: SentinelHubSource, config: Any, collection: Any, roi: shapely.Geometry,
            first: dt.date, last: dt.date, cache_dir: Path, creds: Credentials) -> list[dict]:
    """Every catalog feature over the ROI's bbox in the window under the cloud limit (id, properties,
    geometry); cached when the window has ended."""
    from sentinelhub import CRS, BBox, SentinelHubCatalog

    bbox = tuple(round(v, 6) for v in roi.bounds)
    key = request_key(kind="search-features", base=source.base_url, collection=source.collection, bbox=bbox,
                      first=first, last=last, max_cloud=source.max_cloud_pct)
    cached = cache_dir / "search" / f"{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())["features"]
    with _translated("catalog search", source, creds):
        catalog = SentinelHubCatalog(config=config)
        features = list(catalog.search(
            collection, bbox=BBox(bbox, CRS.WGS84), time=(first.isoformat(), last.isoformat()),
            filter=f"eo:cloud_cover <= {source.max_cloud_pct:g}", limit=100))
    slim = [{"id": f["id"], "properties": f.get("properties", {}), "geometry": f.get("geometry")}
            for f in features]
    if last < dt.datetime.now(dt.timezone.utc).date():  # an open window may still gain scenes
        _write_json_atomic(cached, {"features": slim})
    return slim


# ---------------------------------------------------------------- process API download


def _download_grid(config: Any, collection: Any, evalscript: str, grid: AnalysisGrid, bands: tuple[str, ...],
                   dtype: str, nodata: float | None, time_range: tuple[dt.datetime, dt.datetime] | None,
                   max_cloud_pct: float | None, out_dir: Path, max_px: int, other_args: dict) -> int:
    """Request every piece of the grid and write one GeoTIFF per band name into ``out_dir``.

    Returns:
        the number of Process API requests made.
    """
    from sentinelhub import CRS, BBox, MimeType, MosaickingOrder, ResamplingType, SentinelHubRequest

    epsg = rasterio.crs.CRS.from_user_input(grid.crs).to_epsg()
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1, "dtype": dtype,
               "crs": grid.crs, "transform": grid.transform, "nodata": nodata, "compress": "deflate",
               "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER"}
    pieces = plan_pieces(grid.width, grid.height, max_px)
    with contextlib.ExitStack() as stack:
        dsts = {b: stack.enter_context(rasterio.open(out_dir / f"{b}.tif", "w", **profile)) for b in bands}
        for b, dst in dsts.items():
            dst.set_band_description(1, b)
        for win in pieces:
            input_data = SentinelHubRequest.input_data(
                collection, time_interval=time_range,
                maxcc=None if max_cloud_pct is None else max_cloud_pct / 100.0,
                mosaicking_order=MosaickingOrder.LEAST_CC if time_range else None,
                upsampling=ResamplingType.BILINEAR, downsampling=ResamplingType.BILINEAR,
                other_args=other_args or None)
            request = SentinelHubRequest(
                evalscript=evalscript, input_data=[input_data],
                responses=[SentinelHubRequest.output_response("default", MimeType.TIFF)],
                bbox=BBox(_window_bounds(grid, win), CRS(epsg)), size=(int(win.width), int(win.height)),
                config=config)
            data = np.asarray(request.get_data(max_threads=1)[0])
            if data.ndim == 2:
                data = data[..., None]
            if data.shape != (win.height, win.width, len(bands)):
                raise SourceError(f"Sentinel Hub answered an image of shape {data.shape} for a "
                                  f"{win.width} x {win.height} x {len(bands)} request")
            for i, b in enumerate(bands):
                dsts[b].write(data[..., i].astype(dtype, copy=False), 1, window=win)
    return len(pieces)


def _cached_fetch(entry: Path, download) -> tuple[Path, bool]:
    """Run ``download(tmp_dir)`` into a temporary folder and rename it to ``entry``; reuse ``entry``."""
    if entry.is_dir():
        return entry, False
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    try:
        download(tmp)
        try:
            os.replace(tmp, entry)
        except OSError:  # another run finished the same entry first: keep theirs
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry, True


def _write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, unique=True)  # a shared download cache: several runs may write it


# ---------------------------------------------------------------- the source


def _collection_of(source: SentinelHubSource, source_name: str) -> tuple[str, tuple[str, ...]]:
    """The sentinelhub ``DataCollection`` attribute and the bands of the source's collection."""
    if source.collection not in COLLECTIONS:
        raise InputError(f"source {source_name!r}: collection {source.collection!r} is not supported; "
                         f"use one of {', '.join(COLLECTIONS)}")
    return COLLECTIONS[source.collection]


def _open_search(source: SentinelHubSource, attr: str, start: dt.date | None, end: dt.date | None,
                 retry_sleep_s: float) -> tuple[Credentials, Any, Any, dt.date, dt.date]:
    """Credentials, client config and collection for ``source``, and the window with open ends filled."""
    creds = resolve_credentials(source)
    config = _config(source, creds, retry_sleep_s)
    collection = _collection(attr, source.base_url.rstrip("/"))
    return creds, config, collection, start or FIRST_S2_DAY, end or dt.datetime.now(dt.timezone.utc).date()


def list_scenes(source: SentinelHubSource, source_name: str, roi_lonlat: shapely.Geometry,
                start: dt.date | None, end: dt.date | None, cache_dir: Path, *,
                retry_sleep_s: float = 5.0) -> list[tuple[str, str]]:
    """The Catalog API's scenes over the ROI's bbox in the window, under the cloud limit, for listing
    (regional scans): (scene id, acquisition time in ISO UTC, "" where the catalog gives none). The
    search is the scan's (``_search``), cached once the window has ended.

    Raises:
        InputError: missing credentials or an unsupported collection.
        SourceError: rejected credentials, or a search that kept failing.
    """
    attr, _ = _collection_of(source, source_name)
    creds, config, collection, first, last = _open_search(source, attr, start, end, retry_sleep_s)
    features = _search(source, config, collection, roi_lonlat, first, last, Path(cache_dir), creds)
    return [(f["id"], _utc_iso(f.get("properties", {}).get("datetime"))) for f in features]


def fetch_sentinelhub_inputs(source: SentinelHubSource, source_name: str, spectral_bands: tuple[str, ...],
                             roi_lonlat: shapely.Geometry, start: dt.date | None, end: dt.date | None,
                             cache_dir: Path, *, max_px: int = MAX_PX, res_m: float = 10.0,
                             retry_sleep_s: float = 5.0) -> SceneInputs:
    """Search the scenes, choose one (or a per-pixel mosaic), download their bands and the DEM over the ROI.

    Args:
        source: the catalog entry (kind ``sentinelhub``).
        source_name: its name in the catalog (recorded in the result).
        spectral_bands: contract bands to fetch (B01..B12, B10 included, never B8A).
        roi_lonlat: ROI in EPSG:4326; the download covers ``make_grid(roi_lonlat, res_m)`` exactly.
        start, end: date window (inclusive); None means open.
        cache_dir: download cache root for this source kind.
        max_px: largest width/height of one Process API request (the API allows 2500).
        res_m: grid resolution (the pipeline's analysis resolution).
        retry_sleep_s: first back-off sleep after a 5xx/timeout (then x3 per attempt).

    Returns:
        ``SceneInputs`` whose band and DEM paths are GeoTIFFs on the analysis grid in the cache; for a
        mosaic, ``mosaic`` lists the scenes best first (each with its own band paths, offset and cloud
        mask), ``scene_id`` joins their ids with ``+`` and ``acquired_range`` spans their days.

    Raises:
        InputError: missing credentials, an unknown collection, a band the collection lacks, a bad window.
        SourceError: no scene under the cloud limit, rejected credentials, or a request that kept failing.
    """
    wanted = spectral_request(spectral_bands)
    attr, has = _collection_of(source, source_name)
    missing = [b for b in wanted if b not in has]
    if missing:
        raise InputError(f"source {source_name!r} ({source.collection}) cannot provide band(s) "
                         f"{', '.join(missing)}; use sentinel-2-l1c or a model without them")
    if source.dem_collection and source.dem_collection not in DEM_COLLECTIONS:
        raise InputError(f"source {source_name!r}: dem_collection {source.dem_collection!r} is not supported; "
                         f"use one of {', '.join(DEM_COLLECTIONS)} or null")
    if start and end and start > end:
        raise InputError(f"--start {start} is after --end {end}")
    creds, config, collection, first, last = _open_search(source, attr, start, end, retry_sleep_s)
    cache_dir = Path(cache_dir)
    grid = make_grid(roi_lonlat, res_m=res_m)

    features = _search(source, config, collection, roi_lonlat, first, last, cache_dir, creds)
    chosen, covered = choose_scenes(features, roi_lonlat, source.max_cloud_pct, window_end(end),
                                    source.max_mosaic_scenes)
    if not chosen:
        raise SourceError(
            f"Sentinel Hub: no {source.collection} scene with eo:cloud_cover <= {source.max_cloud_pct:g}% "
            f"over bbox {','.join(f'{v:.4f}' for v in roi_lonlat.bounds)} between {first} and {last} "
            f"({len(features)} found); widen --start/--end, move the ROI, or raise max_cloud_pct in "
            "data_catalog.yaml")
    if not wanted:
        chosen = chosen[:1]  # nothing to render per scene: the DEM alone
    notes: list[str] = []
    if len(chosen) > 1:
        ranked = ", ".join(f"{f['id']} ({f['properties'].get('eo:cloud_cover')}%)" for f in chosen)
        notes.append(f"Sentinel Hub {source.collection}: no scene of {len(features)} <= "
                     f"{source.max_cloud_pct:g}% cloud covers the ROI; per-pixel mosaic of {len(chosen)} "
                     f"(best first: {ranked}), footprints cover {covered:.1%} of the ROI")
    else:
        item = chosen[0]
        notes.append(f"Sentinel Hub {source.collection}: least-cloudy of {len(features)} scene(s) "
                     f"<= {source.max_cloud_pct:g}% cloud: {item['id']} ({item['properties'].get('eo:cloud_cover')}%)")
        if covered < FULL_COVER:
            notes.append(f"scene {item['id']} covers only {covered:.0%} of the ROI and no other scene under the "
                         "cloud limit is taken: the rest is nodata unless other tiles of its day fill it")
    grid_desc = {"crs": grid.crs, "bounds": grid.bounds, "size": (grid.width, grid.height)}
    requests_made = 0
    scenes = []
    for item in chosen:
        scene, made = _fetch_scene(item, source, source_name, config, collection, creds, wanted, grid, grid_desc,
                                   cache_dir, max_px, notes)
        scenes.append(scene)
        requests_made += made
    if wanted:
        if source.cloud_mask:
            shadows = ("with the clouds' shadows projected away from the sun (sun angles computed for each "
                       "scene's time)" if source.cloud_shadows else "no shadows (cloud_shadows: false)")
            notes.append(f"cloud mask: {SH_CLM_ORIGIN}, {shadows}; these pixels are not analysed")
        else:
            notes.append("cloud mask disabled (cloud_mask: false): cloudy pixels are analysed")

    dem_path, dem_note = None, None
    if source.dem_collection:
        dem_path, dem_note, made = _fetch_dem(source, config, creds, grid, grid_desc, cache_dir, max_px)
        requests_made += made
    if dem_note:
        notes.append(dem_note)

    log.info("sentinelhub %s: %s, %d x %d px, %d band(s), %d Process API request(s)", source_name,
             "+".join(s["scene_id"] for s in scenes), grid.width, grid.height, len(wanted), requests_made)
    extent = tuple(transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21))
    first_scene = scenes[0]
    if len(scenes) > 1:
        days = sorted(s["acquired"][:10] for s in scenes)
        return SceneInputs(
            source=source_name, scene_id="+".join(s["scene_id"] for s in scenes), acquired=None,
            acquired_range=(days[0], days[-1]), band_paths=first_scene["band_paths"], available_bands=has,
            dem_path=dem_path, band_nodata=0.0, dem_nodata=None, offset_dn=0.0, processing_baseline=None,
            extent_lonlat=extent, notes=notes, cloud_mask=None, cloud_pct=None, mosaic=scenes)
    return SceneInputs(
        source=source_name,
        scene_id=first_scene["scene_id"],
        acquired=first_scene["acquired"],
        acquired_range=None,
        band_paths=first_scene["band_paths"],
        available_bands=has,
        dem_path=dem_path,
        band_nodata=0.0,  # Sentinel Hub returns 0 where the scene has no data
        dem_nodata=None,
        offset_dn=first_scene["offset_dn"],
        processing_baseline=first_scene["processing_baseline"],
        extent_lonlat=extent,  # type: ignore[arg-type]
        notes=notes,
        cloud_mask=first_scene["cloud_mask"],
        cloud_pct=first_scene["cloud_pct"],
        cloud_detector=first_scene["cloud_detector"],
        cloud_detector_off=first_scene["cloud_detector_off"],
    )


def _fetch_scene(item: dict, source: SentinelHubSource, source_name: str, config: Any, collection: Any,
                 creds: Credentials, wanted: tuple[str, ...], grid: AnalysisGrid, grid_desc: dict,
                 cache_dir: Path, max_px: int, notes: list[str]) -> tuple[dict, int]:
    """Render one catalog scene's bands (and CLM) on the grid; a ``SceneInputs.mosaic`` entry.

    The time range is the scene's UTC day, so Sentinel Hub renders that acquisition (``leastCC`` orders
    the tiles of that day, all under the cloud limit). Cached per (scene, day, bands, grid).

    Returns:
        (the entry: scene_id, acquired, cloud_pct, processing_baseline, offset_dn, band_paths,
        band_nodata, cloud_mask (None), cloud_detector (the CLM plan, ``tasks.sources.cloud.clm_plan``)
        and cloud_detector_off; the number of Process API requests made).
    """
    base = source.base_url.rstrip("/")
    scene_id = item["id"]
    acquired = dt.datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
    acquired = acquired.astimezone(dt.timezone.utc)
    day = dt.datetime.combine(acquired.date(), dt.time(0, 0), tzinfo=dt.timezone.utc)
    time_range = (day, day + dt.timedelta(days=1) - dt.timedelta(seconds=1))
    made = 0
    band_paths: dict[str, str] = {}
    detector: dict | None = None
    detector_off = None if source.cloud_mask else f"cloud_mask: false for source {source_name!r}"
    if wanted:
        # the cloud mask rides in the same request as the bands (more output bands, no more requests),
        # with B08 (and B03) for the shadow rule when the model does not ask for them
        shadow_bands = tuple(b for b in SHADOW_RULE_BANDS if b not in wanted) \
            if source.cloud_mask and source.cloud_shadows else ()
        requested = wanted + shadow_bands + ((SH_CLM_BAND,) if source.cloud_mask else ())
        key = request_key(kind="bands", base=base, collection=source.collection, scene=scene_id,
                          day=acquired.date(), maxcc=source.max_cloud_pct, bands=requested, harmonize=False,
                          **grid_desc)
        evalscript = build_evalscript(requested, "UINT16")

        def get_bands(tmp: Path) -> None:
            nonlocal made
            with _translated(f"Process API ({source.collection} {scene_id})", source, creds):
                made += _download_grid(
                    config, collection, evalscript, grid, requested, "uint16", 0, time_range,
                    source.max_cloud_pct, tmp, max_px, {"processing": {"harmonizeValues": False}})

        entry, fresh = _cached_fetch(cache_dir / "bands" / key, get_bands)
        band_paths = {b: str(entry / f"{b}.tif") for b in wanted}
        if source.cloud_mask:
            detector = clm_plan(source, str(entry / f"{SH_CLM_BAND}.tif"),
                                {b: str(entry / f"{b}.tif") for b in SHADOW_RULE_BANDS if b in requested},
                                acquired.isoformat(), scene_id, source_name)
        if not fresh:
            notes.append(f"{scene_id}: bands from the download cache (no request)")

    baseline = scene_baseline(item)
    offset = harmonization_offset(baseline)
    if baseline is None and acquired.date() >= dt.date(2022, 1, 25):
        offset = harmonization_offset("04.00")  # all products since 25 Jan 2022 use baseline >= 04.00
        notes.append(f"{scene_id}: processing baseline unknown; acquired after 2022-01-25, assumed >= 04.00")
    if offset:
        notes.append(f"{scene_id}: processing baseline {baseline or '>= 04.00'}: {offset:g} DN offset removed "
                     "(requested with harmonizeValues=false)")
    cloud = item["properties"].get("eo:cloud_cover")
    return {"scene_id": scene_id, "acquired": acquired.isoformat(),
            "cloud_pct": float(cloud) if cloud is not None else None, "processing_baseline": baseline,
            "offset_dn": offset, "band_paths": band_paths, "band_nodata": 0.0, "cloud_mask": None,
            "cloud_detector": detector, "cloud_detector_off": detector_off}, made


def _fetch_dem(source: SentinelHubSource, config: Any, creds: Credentials, grid: AnalysisGrid,
               grid_desc: dict, cache_dir: Path, max_px: int) -> tuple[str | None, str | None, int]:
    """The DEM on the grid (FLOAT32 metres), or ``(None, note, n)`` when the service does not offer it.

    Only a 400/404 answer for the DEM request means "this deployment has no such collection" (it is
    remembered in the cache); any other failure raises.
    """
    from sentinelhub.exceptions import DownloadFailedException

    base = source.base_url.rstrip("/")
    key = request_key(kind="dem", base=base, dem=source.dem_collection, **grid_desc)
    entry = cache_dir / "dem" / key
    unavailable = cache_dir / "dem" / f"{key}.unavailable.json"
    if unavailable.exists():
        return None, json.loads(unavailable.read_text())["note"], 0
    collection = _collection(DEM_COLLECTIONS[source.dem_collection], base)  # type: ignore[index]
    evalscript = build_evalscript(("DEM",), "FLOAT32")
    made = 0

    def get_dem(tmp: Path) -> None:
        nonlocal made
        made += _download_grid(config, collection, evalscript, grid, ("DEM",), "float32", None, None, None,
                               tmp, max_px, {})

    with _translated(f"DEM request ({source.dem_collection})", source, creds):
        try:
            entry, fresh = _cached_fetch(entry, get_dem)
        except DownloadFailedException as exc:
            if _status(exc) in (400, 404):
                note = (f"DEM collection {source.dem_collection} not served by {base} "
                        f"(HTTP {_status(exc)}): no DEM, SLOPE/DEM channels are nodata")
                _write_json_atomic(unavailable, {"note": note})
                return None, note, made + 1
            raise
    return str(entry / "DEM.tif"), None if fresh else "DEM from the download cache (no request)", made
