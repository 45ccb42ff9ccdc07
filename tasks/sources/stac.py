"""The ``stac`` source: STAC API search + COG window reads of one scene over the ROI.

What it does, in order (``fetch_stac_inputs``):

1. pystac-client search of the source's collection over the ROI's bbox and the date window; the
   ``eo:cloud_cover`` limit is applied on the client (many APIs, rustac's among them, lack the
   ``query`` extension); the least-cloudy item whose footprint covers the ROI wins (ties: the most
   recent). If none covers the ROI fully, a per-pixel mosaic (``tasks.sources.mosaic``): the ranked items that
   each add footprint over the ROI, up to ``max_mosaic_scenes``, are all read, and alignment takes
   every pixel from the first of them with data (and no cloud) there (``SceneInputs.mosaic``);
2. for each wanted band, the asset named in ``source.assets`` is read over HTTP (GDAL ``/vsicurl``
   range requests) in the ROI's window only, at its native resolution and CRS, and written as a
   GeoTIFF into a cache folder keyed by a hash of (item id, asset href, ROI bounds);
3. the DEM collection (``dem_collection`` at ``dem_url`` or ``url``): the ROI window of every
   intersecting item, mosaicked with ``rasterio.merge`` into one cached GeoTIFF;
4. ``s2:processing_baseline`` -> ``offset_dn`` (1000 from 04.00 on), recorded in the notes;
5. the cloud mask asset (``cloud_mask_asset``, e.g. ``scl`` of an L2A collection, with
   ``cloud_mask_values``) read like a band; alignment drops its cloud pixels. Without one (Earth
   Search's ``sentinel-2-l1c`` has none) no cloud mask is applied and a note says so.

Cached files are written under a temporary name and renamed into place (``os.replace``), so a failed
or interrupted read never leaves a partial file under a cache name, and a rerun makes no new HTTP
requests for the pixels. Search answers are cached too (``<cache>/search/``) when the date window has
ended, and always for the DEM collection, so such a rerun makes no request at all; a window that is
still open is searched again, so newly published scenes are seen.

Pure helpers (``datetime_range``, ``choose_item``, ``cache_key``, ``pixel_window``,
``http_status``) hold the decisions; the rest is I/O through pystac-client and rasterio.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import rasterio
import shapely
from rasterio.errors import RasterioIOError
from rasterio.merge import merge
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from tasks.core.bands import SPECTRAL_BAND_NAMES, spectral_request
from tasks.core.errors import InputError, SourceError
from tasks.core.files import atomic_write, atomic_write_text
from tasks.sources.catalog import StacSource
from tasks.sources.cloud import (
    B8A_STANDIN,
    S2CLOUDLESS_CONTRACT_BANDS,
    detector_plan,
    missing_bands_reason,
    missing_detector_bands,
)
from tasks.sources.local import SceneInputs, harmonization_offset, raster_extent_lonlat
from tasks.sources.mosaic import SceneCandidate, choose_mosaic, window_end
from tasks.sources.signing import HrefSigner, redact_hrefs, strip_query

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cached file layout or the window rule changes
MARGIN_PX = 4  # native pixels read beyond the ROI on each side (room for bilinear resampling)
S2_NODATA = 0.0  # Sentinel-2 L1C DN 0 = no data
RETRY_DELAY_S = 1.0  # first backoff delay (GDAL and urllib3 double it on each retry)
RETRY_STATUSES = (429, 500, 502, 503, 504)
AUTH_STATUSES = (401, 403)
_STATUS_RE = re.compile(r"(?:HTTP (?:response )?code|HTTP error code|status(?: code)?)\D{0,3}(\d{3})", re.I)


# ----------------------------------------------------------------------------------- pure helpers

def datetime_range(start: dt.date | None, end: dt.date | None) -> str | None:
    """STAC ``datetime`` for the inclusive date window; ``..`` marks an open end, None = no filter.

    Raises:
        InputError: ``start`` after ``end``.
    """
    if start and end and start > end:
        raise InputError(f"--start {start} is after --end {end}")
    if start is None and end is None:
        return None
    first = f"{start.isoformat()}T00:00:00Z" if start else ".."
    last = f"{end.isoformat()}T23:59:59.999Z" if end else ".."
    return f"{first}/{last}"


@dataclass(frozen=True)
class Candidate:
    """What scene choice needs to know about one search result."""

    item_id: str
    cloud_pct: float | None
    acquired: str  # ISO 8601, sorts chronologically
    cover_fraction: float  # share of the ROI inside the item's footprint, 0..1


def cover_fraction(footprint: dict | None, roi_lonlat: shapely.Geometry) -> float:
    """Share of the ROI's area (in degrees^2: fine for a ratio over a small ROI) inside a GeoJSON footprint."""
    if footprint is None:
        return 0.0
    shape = shapely.geometry.shape(footprint)
    if roi_lonlat.area == 0:
        return 1.0 if shape.intersects(roi_lonlat) else 0.0
    return float(shape.intersection(roi_lonlat).area / roi_lonlat.area)


def choose_item(candidates: Iterable[Candidate], max_cloud_pct: float) -> tuple[Candidate | None, int]:
    """The least-cloudy candidate under the cloud limit that covers the ROI (ties: most recent).

    If none covers the ROI fully (>= 99.9 %), the one covering most (then least cloudy) is returned.
    Items without ``eo:cloud_cover`` are kept (cloud cover unknown) but rank after known ones.

    Returns:
        (the choice or None, number of candidates the cloud limit removed).
    """
    pool, dropped = [], 0
    for cand in candidates:
        if cand.cloud_pct is not None and cand.cloud_pct > max_cloud_pct:
            dropped += 1
        elif cand.cover_fraction > 0:
            pool.append(cand)
    if not pool:
        return None, dropped
    full = [c for c in pool if c.cover_fraction >= 0.999]

    def cloud(c: Candidate) -> float:
        return c.cloud_pct if c.cloud_pct is not None else 101.0

    # most recent first, so min() keeps the most recent of equally cloudy ones (ISO text sorts by time)
    newest_first = sorted(full or pool, key=lambda c: c.acquired, reverse=True)
    if full:
        return min(newest_first, key=cloud), dropped
    return min(newest_first, key=lambda c: (-round(c.cover_fraction, 3), cloud(c))), dropped


def cache_key(*parts: Any) -> str:
    """Short stable hash of the request parts (JSON-encoded with sorted keys)."""
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pixel_window(bounds: tuple[float, float, float, float], transform: rasterio.Affine,
                 margin_px: int = MARGIN_PX) -> Window:
    """Whole-pixel window covering ``bounds`` (in the raster's CRS) plus ``margin_px`` on each side.

    Unclipped: it may reach beyond the raster (the caller fills that part with nodata).
    """
    win = rasterio.windows.from_bounds(*bounds, transform=transform)
    col0 = math.floor(win.col_off + 1e-6) - margin_px
    row0 = math.floor(win.row_off + 1e-6) - margin_px
    col1 = math.ceil(win.col_off + win.width - 1e-6) + margin_px
    row1 = math.ceil(win.row_off + win.height - 1e-6) + margin_px
    return Window(col0, row0, max(col1 - col0, 1), max(row1 - row0, 1))


def http_status(message: str) -> int | None:
    """HTTP status in a GDAL/requests error message, e.g. ``HTTP response code: 401`` -> 401."""
    match = _STATUS_RE.search(message)
    return int(match.group(1)) if match else None


def first_line(message: Any) -> str:
    lines = str(message).strip().splitlines()
    return lines[0][:300] if lines else type(message).__name__


# ----------------------------------------------------------------------------------- HTTP settings

def gdal_options(source: StacSource, href: str | None = None) -> dict[str, Any]:
    """GDAL settings for window reads over HTTP: timeouts, retries on 429/5xx with backoff.

    ``CPL_VSIL_CURL_NON_CACHED`` keeps GDAL from caching a failure of ``href`` (it would otherwise
    answer a retry from that cache without a request); each asset is read once, so nothing is lost.
    """
    options: dict[str, Any] = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_TIMEOUT": max(1, math.ceil(source.timeout_s)),
        "GDAL_HTTP_CONNECTTIMEOUT": max(1, math.ceil(min(source.timeout_s, 30.0))),
        "GDAL_HTTP_MAX_RETRY": source.max_retries,
        "GDAL_HTTP_RETRY_DELAY": RETRY_DELAY_S,
        "GDAL_HTTP_RETRY_CODES": ",".join(str(s) for s in RETRY_STATUSES),  # GDAL >= 3.10; 500 is not a default
    }
    if href is not None:
        options["CPL_VSIL_CURL_NON_CACHED"] = f"/vsicurl/{href}"
    return options


def _stac_io(source: StacSource) -> Any:
    """pystac-client I/O with bounded retries: exponential backoff on 429/5xx and connection errors,
    honouring ``Retry-After`` (urllib3 ``Retry``; POST searches included)."""
    from pystac_client.stac_api_io import StacApiIO
    from urllib3 import Retry

    retry = Retry(total=source.max_retries, connect=source.max_retries, read=source.max_retries,
                  status=source.max_retries, backoff_factor=RETRY_DELAY_S / 2, backoff_max=60.0,
                  status_forcelist=RETRY_STATUSES, allowed_methods=None, raise_on_status=False,
                  respect_retry_after_header=True)
    return StacApiIO(timeout=source.timeout_s, max_retries=retry)


def _api_error(exc: Exception, what: str, url: str, retries: int) -> SourceError:
    status = getattr(exc, "status_code", None) or http_status(str(exc))
    if status in AUTH_STATUSES:
        return SourceError(f"{what}: {url} answered HTTP {status}: the credentials or the URL are "
                           "wrong; check 'url' in data_catalog.yaml and any required access")
    detail = f"HTTP {status}" if status else first_line(exc)
    return SourceError(f"{what}: {url} failed after {retries} retries ({detail}); try again later "
                       "or check 'url' in data_catalog.yaml")


def search_cache_path(cache_dir: Path, url: str, collection: str, bbox: tuple[float, ...],
                      datetime: str | None) -> Path:
    """Where the answer of one search is kept: keyed by API URL, collection, bbox and datetime."""
    key = cache_key("search", url.rstrip("/"), collection, [round(v, 6) for v in bbox], datetime)
    return Path(cache_dir) / "search" / f"{_safe(collection)}_{key}.json"


def search_items(source: StacSource, url: str, collection: str, bbox: tuple[float, ...],
                 datetime: str | None, cache_path: Path | None = None) -> list[Any]:
    """All items of ``collection`` intersecting ``bbox`` in ``datetime`` (pystac ``Item`` objects).

    With ``cache_path``, a stored answer is returned without any request, and a fresh answer is
    stored there (written to a temporary name, then renamed).

    Raises:
        SourceError: the API is unreachable, refuses (401/403) or keeps failing after retries.
    """
    import pystac
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    if cache_path is not None and cache_path.exists():
        stored = json.loads(cache_path.read_text())
        return [pystac.Item.from_dict(d) for d in stored["features"]]
    what = f"STAC search of {collection!r}"
    try:
        client = Client.open(url, stac_io=_stac_io(source), timeout=source.timeout_s)
        search = client.search(collections=[collection], bbox=list(bbox), datetime=datetime, limit=100)
        items = list(search.items())
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_path, json.dumps({
                "url": url, "collection": collection, "bbox": list(bbox), "datetime": datetime,
                "features": [i.to_dict() for i in items]}), unique=True)
        return items
    except (APIError, OSError) as exc:
        raise _api_error(exc, what, url, source.max_retries) from None
    except (ValueError, KeyError, TypeError) as exc:  # not a STAC API, or malformed answers
        raise SourceError(f"{what}: {url} does not answer as a STAC API ({first_line(exc)}); check "
                          "'url' in data_catalog.yaml") from None


# ----------------------------------------------------------------------------------- window reads

def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, unique=True, suffix=".part") as tmp:  # .NAME.PID-RANDOM.part.tif
        write(tmp)


Signer = Callable[[str, bool], str]  # (unsigned href, refresh) -> signed href (tasks.sources.signing)


def read_roi_window(href: str, roi_bounds_lonlat: tuple[float, float, float, float],
                    source: StacSource, what: str, sign: Signer | None = None,
                    collection: str | None = None) -> tuple[np.ndarray, dict]:
    """Read the ROI window (plus margin) of the first band of a remote raster.

    Args:
        href: the asset's href as the STAC item gives it (unsigned; the only form messages show).
        sign: signs ``href`` just before the read (None = read it as it is); after a 403 it is
            called once more with ``refresh=True`` for a new token.
        collection: the asset's STAC collection, named in a 403's message.

    Returns:
        ((H, W) array at native resolution, profile with crs/transform/nodata/dtype); the part of the
        window outside the raster is filled with its nodata (0 when it has none).

    Raises:
        SourceError: 401/403 (after one fresh token when signing), or a read still failing after GDAL's
            retries and one more attempt. Messages never hold a signed href.
    """
    href = strip_query(href) if sign is not None else href
    shown = strip_query(href)
    attempts = 2  # GDAL retries each HTTP request; one more open covers a truncated body or timeout
    refreshed = False
    attempt = 0
    while True:
        attempt += 1
        # the signed URL exists only here; NON_CACHED is set for the unsigned prefix (it matches it)
        url = sign(href, refreshed) if sign is not None else href
        try:
            with rasterio.Env(**gdal_options(source, href)), rasterio.open(url) as src:
                bounds = transform_bounds("EPSG:4326", src.crs, *roi_bounds_lonlat, densify_pts=21)
                win = pixel_window(bounds, src.transform)
                nodata = src.nodata
                fill = nodata if nodata is not None else 0
                data = np.full((win.height, win.width), fill, dtype=src.dtypes[0])
                inner = win.intersection(Window(0, 0, src.width, src.height))
                r0, c0 = int(inner.row_off - win.row_off), int(inner.col_off - win.col_off)
                data[r0:r0 + inner.height, c0:c0 + inner.width] = src.read(1, window=inner)
                profile = {"crs": src.crs, "transform": src.window_transform(win), "nodata": nodata,
                           "dtype": src.dtypes[0]}
                return data, profile
        except rasterio.errors.WindowError:
            raise SourceError(f"{what}: {shown} does not overlap the ROI; the item's footprint is "
                              "wrong or the ROI is outside the scene") from None
        except RasterioIOError as exc:
            status = http_status(str(exc))
            of = f" (collection {collection!r})" if collection else ""
            if status == 403 and sign is not None and not refreshed:
                refreshed = True  # the token expired or was revoked early: one retry with a new one
                log.info("%s: %s answered HTTP 403 with a cached SAS token; retrying with a new token",
                         what, shown)
                continue
            if status in AUTH_STATUSES and sign is not None:
                raise SourceError(f"{what}: {shown}{of} answered HTTP {status} even with a new SAS token "
                                  f"from {source.token_api}; check 'sas_url' and the collection in "
                                  "data_catalog.yaml") from None
            if status in AUTH_STATUSES:
                raise SourceError(f"{what}: {shown}{of} answered HTTP {status}: the credentials or the URL "
                                  "are wrong; a storage that needs signed URLs (Planetary Computer) needs "
                                  "sign: planetary-computer on the source (dem_sign for the DEM)") from None
            if attempt >= attempts:
                raise SourceError(f"{what}: reading {shown} failed after {source.max_retries} retries "
                                  f"({redact_hrefs(first_line(exc))}); try again later") from None
            log.warning("%s: read of %s failed (%s); retrying", what, shown, redact_hrefs(first_line(exc)))


def _write_geotiff(path: Path, data: np.ndarray, profile: dict) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       compress="DEFLATE", tiled=True, blockxsize=256, blockysize=256, **profile) as dst:
        dst.write(data, 1)


def fetch_window(href: str, roi_bounds: tuple[float, float, float, float], source: StacSource,
                 path: Path, what: str, sign: Signer | None = None, collection: str | None = None) -> Path:
    """Cached: write the ROI window of ``href`` to ``path`` unless it is already there (``sign``,
    ``collection``: as :func:`read_roi_window`)."""
    if path.exists():
        log.debug("%s: cached %s", what, path)
        return path
    data, profile = read_roi_window(href, roi_bounds, source, what, sign, collection)
    _atomic_write(path, lambda tmp: _write_geotiff(tmp, data, profile))
    return path


def mosaic_dem(parts: list[Path], path: Path) -> None:
    """Mosaic DEM windows (same CRS) into one GeoTIFF at ``path`` (first valid value wins)."""
    sources = [rasterio.open(p) for p in parts]
    try:
        crs = {s.crs for s in sources}
        if len(crs) > 1:
            raise SourceError(f"DEM items come in several CRSs ({', '.join(map(str, crs))}); "
                              "mosaicking them is not supported")
        nodata = sources[0].nodata
        data, transform = merge(sources, nodata=nodata)
        profile = {"crs": sources[0].crs, "transform": transform, "nodata": nodata,
                   "dtype": data.dtype.name}
    finally:
        for s in sources:
            s.close()
    _atomic_write(path, lambda tmp: _write_geotiff(tmp, data[0], profile))


# ----------------------------------------------------------------------------------- the source

def fetch_stac_inputs(source: StacSource, source_name: str, spectral_bands: tuple[str, ...],
                      roi_lonlat: shapely.Geometry, start: dt.date | None, end: dt.date | None,
                      cache_dir: Path) -> SceneInputs:
    """Search, choose the scene, download the ROI windows of the bands and the DEM; return paths.

    Args:
        source: the catalog's ``stac`` source.
        source_name: its name (for messages and the result).
        spectral_bands: Sentinel-2 bands the detector needs (contract names).
        roi_lonlat: the ROI in EPSG:4326.
        start, end: inclusive date window; None means open.
        cache_dir: download cache of this source kind (files go under ``<cache_dir>/<item id>/``).

    Raises:
        InputError: a band with no asset mapping in the catalog or no asset on the chosen item.
        SourceError: no scene matches, the API/asset server refuses or keeps failing.
    """
    wanted = spectral_request(spectral_bands)
    unmapped = [b for b in wanted if b not in source.assets]
    if unmapped:
        raise InputError(f"source {source_name!r} maps no asset for band(s) {', '.join(unmapped)}; "
                         "add them under 'assets:' (band: asset key) in data_catalog.yaml")
    when = datetime_range(start, end)
    roi_bounds = tuple(float(v) for v in roi_lonlat.bounds)
    cache_dir = Path(cache_dir)

    # a window that has ended gets no new scenes: its answer is cached like the pixels (as the
    # Sentinel Hub source does); an open window (no end, or ending today or later) is searched again
    closed = end is not None and end < dt.datetime.now(dt.timezone.utc).date()
    items = search_items(source, source.url, source.collection, roi_bounds, when,
                         search_cache_path(cache_dir, source.url, source.collection, roi_bounds, when)
                         if closed else None)
    by_id = {item.id: item for item in items}
    candidates = [Candidate(item.id, _cloud(item), _acquired(item), cover_fraction(item.geometry, roi_lonlat))
                  for item in items]
    best, dropped = choose_item(candidates, source.max_cloud_pct)
    if best is None:
        bbox_text = ",".join(f"{v:.5f}" for v in roi_bounds)
        raise SourceError(
            f"source {source_name!r}: no item of collection {source.collection!r} at {source.url} in "
            f"bbox {bbox_text}, dates {when or 'any'} with eo:cloud_cover <= {source.max_cloud_pct:g}% "
            f"({len(items)} found, {dropped} over the cloud limit); widen --start/--end or raise "
            "max_cloud_pct")
    notes: list[str] = []
    chosen = [best]
    if best.cover_fraction < 0.999 and source.max_mosaic_scenes > 1:
        pool = [SceneCandidate(c.item_id, c.cloud_pct, c.acquired,
                               shapely.geometry.shape(by_id[c.item_id].geometry) if by_id[c.item_id].geometry else None)
                for c in candidates if c.cloud_pct is None or c.cloud_pct <= source.max_cloud_pct]
        picked, covered = choose_mosaic(pool, roi_lonlat, window_end(end), source.max_mosaic_scenes)
        if len(picked) > 1:
            by_cand = {c.item_id: c for c in candidates}
            chosen = [by_cand[p.scene_id] for p in picked]
            notes.append(f"STAC {source.url} collection {source.collection}: no item of {len(items)} covers the "
                         f"ROI; per-pixel mosaic of {len(chosen)} (best first: "
                         f"{', '.join(f'{c.item_id} ({c.cloud_pct}%)' for c in chosen)}), footprints cover "
                         f"{covered:.1%} of the ROI; {dropped} over the {source.max_cloud_pct:g}% cloud limit")
    if len(chosen) == 1:
        notes.append(f"STAC {source.url} collection {source.collection}: chose {best.item_id} "
                     f"(eo:cloud_cover {best.cloud_pct}) of {len(items)} item(s), {dropped} over "
                     f"the {source.max_cloud_pct:g}% cloud limit")
        if best.cover_fraction < 0.999:
            notes.append(f"scene {best.item_id} covers only {best.cover_fraction:.0%} of the ROI and no other "
                         "scene under the cloud limit adds to it: the rest is nodata")
    sign = (HrefSigner(source.token_api, source.collection, source.timeout_s, source.max_retries)
            if source.sign else None)
    if sign is not None:
        notes.append(f"asset hrefs of {source.collection!r} signed with SAS tokens from {source.token_api}")
    scenes = [_fetch_item(by_id[c.item_id], c, source, source_name, wanted, roi_bounds, cache_dir, notes, sign)
              for c in chosen]
    dem_path, dem_nodata = fetch_dem(source, roi_lonlat, roi_bounds, cache_dir, notes)
    dem_product = dem_record(source) if dem_path else None
    first_scene = scenes[0]
    item = by_id[best.item_id]
    available = tuple(b for b in SPECTRAL_BAND_NAMES
                      if all(source.assets.get(b) in by_id[c.item_id].assets for c in chosen))
    paths = [Path(p) for s in scenes for p in s["band_paths"].values()]
    if paths:
        extents = [raster_extent_lonlat(p) for p in paths]
        extent = (min(e[0] for e in extents), min(e[1] for e in extents),
                  max(e[2] for e in extents), max(e[3] for e in extents))
    else:
        extent = raster_extent_lonlat(Path(dem_path)) if dem_path else roi_bounds
    if len(scenes) > 1:
        days = sorted(s["acquired"][:10] for s in scenes if s["acquired"])
        return SceneInputs(
            source=source_name, scene_id="+".join(s["scene_id"] for s in scenes), acquired=None,
            acquired_range=(days[0], days[-1]) if days else None,
            band_paths=first_scene["band_paths"], available_bands=available, dem_path=dem_path,
            band_nodata=S2_NODATA, dem_nodata=dem_nodata, offset_dn=0.0, processing_baseline=None,
            extent_lonlat=extent, notes=notes, cloud_mask=None, cloud_pct=None, mosaic=scenes,
            dem_product=dem_product)
    return SceneInputs(
        source=source_name,
        scene_id=item.id,
        acquired=best.acquired,
        acquired_range=None,
        band_paths=first_scene["band_paths"],
        available_bands=available,
        dem_path=dem_path,
        band_nodata=S2_NODATA,
        dem_nodata=dem_nodata,
        offset_dn=first_scene["offset_dn"],
        processing_baseline=first_scene["processing_baseline"],
        extent_lonlat=extent,  # type: ignore[arg-type]
        notes=notes,
        cloud_mask=first_scene["cloud_mask"],
        cloud_pct=best.cloud_pct,
        dem_product=dem_product,
        cloud_detector=first_scene["cloud_detector"],
        cloud_detector_off=first_scene["cloud_detector_off"],
    )


def _fetch_item(item: Any, cand: Candidate, source: StacSource, source_name: str, wanted: tuple[str, ...],
                roi_bounds: tuple[float, float, float, float], cache_dir: Path, notes: list[str],
                sign: Signer | None = None) -> dict:
    """Download the ROI windows of one item's bands (and cloud mask); a ``SceneInputs.mosaic`` entry.

    Cache names and keys use the unsigned href (a token never reaches a file name)."""
    missing = [b for b in wanted if source.assets[b] not in item.assets]
    if missing:
        raise InputError(
            f"item {item.id} of source {source_name!r} has no asset for band(s) "
            f"{', '.join(f'{b} ({source.assets[b]!r})' for b in missing)}; it has assets "
            f"{', '.join(sorted(item.assets))}; fix 'assets:' in data_catalog.yaml or use a model "
            "without those bands")
    band_paths: dict[str, str] = {}
    scene_dir = cache_dir / _safe(item.id)

    def fetch_band(band: str, key: str, why: str = "") -> str:
        href = strip_query(item.assets[key].href)
        name = f"{band}_{_safe(key)}_{cache_key(item.id, href, roi_bounds, MARGIN_PX)}.tif"
        return str(fetch_window(href, roi_bounds, source, scene_dir / name,
                                f"band {band} (asset {key!r}) of {item.id}{why}", sign, source.collection))

    for band in wanted:
        band_paths[band] = fetch_band(band, source.assets[band])
    log.info("stac source %r: %s, %d band(s) in %s", source_name, item.id, len(band_paths), scene_dir)

    cloud_mask = None
    detector, detector_off = None, None
    if not source.cloud_mask_asset:
        detector, detector_off = _detector_for_item(item, cand, source, source_name, band_paths, fetch_band)
        note = (f"cloud mask: s2cloudless on the item's own bands ({detector['b8a']})" if detector else
                f"no cloud mask: source {source_name!r} maps no cloud_mask_asset (Earth Search's "
                f"sentinel-2-l1c has none) and no detector runs ({detector_off}): cloudy pixels are analysed")
        if note not in notes:
            notes.append(note)
    elif source.cloud_mask_asset not in item.assets:
        notes.append(f"no cloud mask: item {item.id} has no asset {source.cloud_mask_asset!r}: cloudy "
                     "pixels are analysed")
    else:
        key = source.cloud_mask_asset
        href = strip_query(item.assets[key].href)
        path = fetch_window(href, roi_bounds, source,
                            scene_dir / f"cloudmask_{_safe(key)}_{cache_key(item.id, href, roi_bounds, MARGIN_PX)}.tif",
                            f"cloud mask (asset {key!r}) of {item.id}", sign, source.collection)
        cloud_mask = {"path": str(path), "cloud_values": list(source.cloud_mask_values),
                      "origin": f"STAC asset {key!r} of {item.id}, cloud = {list(source.cloud_mask_values)}"}
        notes.append(f"cloud mask: asset {key!r} of {item.id}, values {list(source.cloud_mask_values)} are not "
                     "analysed")

    baseline = item.properties.get("s2:processing_baseline")
    baseline = str(baseline) if baseline is not None else None
    offset = harmonization_offset(baseline)
    if offset:
        notes.append(f"{item.id}: processing baseline {baseline} >= 04.00: {offset:g} DN offset removed")
    elif baseline is None:
        notes.append(f"item {item.id} has no s2:processing_baseline: no harmonization offset applied")
    return {"scene_id": item.id, "acquired": cand.acquired, "cloud_pct": cand.cloud_pct,
            "processing_baseline": baseline, "offset_dn": offset, "band_paths": band_paths,
            "band_nodata": S2_NODATA, "cloud_mask": cloud_mask, "cloud_detector": detector,
            "cloud_detector_off": detector_off}


def _detector_for_item(item: Any, cand: Candidate, source: StacSource, source_name: str,
                       band_paths: dict[str, str], fetch_band: Callable[..., str]) -> tuple[dict | None, str | None]:
    """The cloud detector plan of an item without a cloud mask asset (its extra bands fetched over the
    ROI like the others), or why none runs.

    Raises:
        InputError: ``cloud_detector: s2cloudless`` and the item lacks bands it needs (named).
    """
    if source.cloud_detector == "none":
        return None, f"cloud_detector: none for source {source_name!r}"
    have = {b for b, key in source.assets.items() if key in item.assets}
    missing = missing_detector_bands(have)
    if missing:
        reason = missing_bands_reason(missing, item.id) + " (no asset mapped or none on the item)"
        if source.cloud_detector == "s2cloudless":
            raise InputError(f"source {source_name!r}: cloud_detector: s2cloudless, but {reason}; map the "
                             "bands under 'assets:' or set cloud_detector: auto or none")
        return None, reason
    why = " (for the cloud detector)"
    paths = {b: band_paths.get(b) or fetch_band(b, source.assets[b], why)
             for b in (*S2CLOUDLESS_CONTRACT_BANDS, *(("B03",) if "B03" in have else ()))}
    if source.b8a_asset and source.b8a_asset in item.assets:
        paths["B8A"], b8a_note = fetch_band("B8A", source.b8a_asset, why), f"B8A from asset {source.b8a_asset!r}"
    else:
        paths["B8A"], b8a_note = paths["B08"], B8A_STANDIN
    props = item.properties
    sun = None
    if props.get("view:sun_azimuth") is not None and props.get("view:sun_elevation") is not None:
        sun = (float(props["view:sun_azimuth"]), 90.0 - float(props["view:sun_elevation"]),
               "item properties view:sun_azimuth, view:sun_elevation")
    elif props.get("s2:mean_solar_azimuth") is not None and props.get("s2:mean_solar_zenith") is not None:
        sun = (float(props["s2:mean_solar_azimuth"]), float(props["s2:mean_solar_zenith"]),
               "item properties s2:mean_solar_azimuth, s2:mean_solar_zenith")
    return detector_plan(source, paths, b8a_note, cand.acquired, sun, item.id, source_name), None


def dem_record(source: StacSource) -> dict | None:
    """What the manifest says about the DEM product of a source (``SceneInputs.dem_product``)."""
    product = source.dem_product
    if product is None:
        return None
    return {"collection": product.collection, "product": product.name, "asset": source.dem_asset_key,
            "url": source.dem_url or source.url, "units": product.units,
            "vertical_datum": product.vertical_datum, "res_arcsec": product.res_arcsec,
            "signed": source.signs_dem}


def fetch_dem(source: StacSource, roi_lonlat: shapely.Geometry, roi_bounds: tuple[float, ...],
               cache_dir: Path, notes: list[str]) -> tuple[str | None, float | None]:
    """Mosaic of the ROI windows of the DEM items; (None, None) plus a note when there is none.

    The DEM's hrefs are signed when ``source.signs_dem`` (tokens of ``dem_collection``). A file without
    a nodata tag gets the product's (``STAC_DEM_PRODUCTS``: -9999 for AW3D30; none for Copernicus DEM,
    whose sea is 0 m).
    """
    product = source.dem_product
    if product is None:
        notes.append("source has no DEM collection: SLOPE and DEM channels and terrain attributes are nodata")
        return None, None
    url = source.dem_url or source.url
    asset = source.dem_asset_key
    # DEM collections are static products: their search answer is cached like their pixels
    found = search_items(source, url, product.collection, roi_bounds, None,
                         search_cache_path(cache_dir, url, product.collection, roi_bounds, None))
    items = [i for i in found
             if cover_fraction(i.geometry, roi_lonlat) > 0 or i.geometry is None]
    with_asset = [i for i in items if asset in i.assets]
    if not with_asset:
        extra = f" ({len(items)} item(s) without asset {asset!r})" if items else ""
        bbox_text = ",".join(f"{v:.5f}" for v in roi_bounds)
        notes.append(f"no item of DEM collection {product.collection!r} at {url} intersects the ROI "
                     f"(bbox {bbox_text}){extra}: SLOPE and DEM channels and terrain attributes are nodata")
        return None, None
    with_asset.sort(key=lambda i: i.id)
    hrefs = [(i.id, strip_query(i.assets[asset].href)) for i in with_asset]
    sign = (HrefSigner(source.token_api, product.collection, source.timeout_s, source.max_retries)
            if source.signs_dem else None)
    dem_dir = cache_dir / "dem"
    path = dem_dir / f"dem_{cache_key(hrefs, roi_bounds, MARGIN_PX)}.tif"
    if not path.exists():
        parts = [fetch_window(href, roi_bounds, source,
                              dem_dir / "parts" / f"{_safe(item_id)}_{cache_key(item_id, href, roi_bounds, MARGIN_PX)}.tif",
                              f"DEM asset {asset!r} of {item_id}", sign, product.collection)
                 for item_id, href in hrefs]
        mosaic_dem(parts, path)
    with rasterio.open(path) as src:
        nodata = src.nodata if src.nodata is not None else product.nodata
    notes.append(f"DEM: {product.name} ({product.collection!r}, {product.units}, heights above the "
                 f"{product.vertical_datum}{', signed hrefs' if sign else ''}): {len(hrefs)} item(s) mosaicked "
                 f"({', '.join(i for i, _ in hrefs)})")
    return str(path), nodata


def _cloud(item: Any) -> float | None:
    value = item.properties.get("eo:cloud_cover")
    return float(value) if value is not None else None


def _acquired(item: Any) -> str:
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:120]
