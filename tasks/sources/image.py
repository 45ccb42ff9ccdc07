"""``landslide scan --image FILE``: one multi-band raster scanned without a catalog entry.

The file becomes a catalog of one ``local`` source (:data:`IMAGE_SOURCE`) whose one scene names
each of its bands by band number (``LocalScene.band_indexes``), so the scan plans, aligns, predicts
and publishes exactly as for any local source: there is no second pipeline.

Band names come from ``--bands`` when given, else from the file's band descriptions (any spelling
``tasks.core.bands.normalize_band_name`` accepts: ``B2``, ``b02``, ``B02``). The acquisition time
comes from ``--acquired``, else from a standard metadata item (:data:`ACQUISITION_TAGS`), else it
is recorded as unknown; none is ever invented. Only metadata is read here, no pixel.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import rasterio
from rasterio.errors import RasterioIOError

from tasks.core.bands import SPECTRAL_BAND_NAMES, TERRAIN_BAND_NAMES, normalize_band_name
from tasks.core.errors import InputError
from tasks.sources.catalog import Catalog, LocalScene, LocalSource

log = logging.getLogger(__name__)

IMAGE_SOURCE = "image"  # the source name of an --image scan (manifest, polygons' lineage)
BANDS_FROM_OPTION = "--bands"
BANDS_FROM_DESCRIPTIONS = "band descriptions"

# Metadata items that hold the acquisition time, most specific first: (GDAL metadata domain, key).
# IMAGERY/ACQUISITIONDATETIME is what GDAL's drivers report for satellite products (DigitalGlobe,
# Pleiades, ...); DATATAKE_1_DATATAKE_SENSING_START and PRODUCT_START_TIME are GDAL's SENTINEL2
# driver's; SENSING_TIME is a Sentinel-2 granule's; DATE_ACQUIRED is a Landsat MTL's. Not
# TIFFTAG_DATETIME: the TIFF specification defines it as the file's creation time, which for any
# processed export is the day it was written, not the day it was seen.
ACQUISITION_TAGS: tuple[tuple[str | None, str], ...] = (
    ("IMAGERY", "ACQUISITIONDATETIME"),
    (None, "ACQUISITION_DATETIME"),
    (None, "ACQUISITION_DATE"),
    (None, "DATATAKE_1_DATATAKE_SENSING_START"),
    (None, "PRODUCT_START_TIME"),
    (None, "SENSING_TIME"),
    (None, "DATE_ACQUIRED"),
)
BASELINE_TAG = "PROCESSING_BASELINE"  # GDAL's SENTINEL2 driver; >= 04.00 means a +1000 DN offset


@dataclass(frozen=True)
class ImageInputs:
    """What a scan of one raster file records (the plan's and the manifest's ``image``).

    Attributes:
        path: the file (absolute).
        driver: GDAL driver that opened it.
        band_count: bands in the file.
        bands: contract band name of each band, in band order.
        bands_from: ``--bands`` or ``band descriptions``.
        acquired: ISO 8601 UTC, None when unknown.
        acquired_from: ``--acquired``, ``metadata ITEM`` or ``unknown``.
        dem: the ``--dem`` raster (absolute), None without one.
        processing_baseline: the file's PROCESSING_BASELINE item, when it has one.
    """

    path: str
    driver: str
    band_count: int
    bands: tuple[str, ...]
    bands_from: str
    acquired: str | None
    acquired_from: str
    dem: str | None
    processing_baseline: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def scene_id(self) -> str:
        return Path(self.path).stem

    def catalog(self) -> Catalog:
        """A catalog of one local source, :data:`IMAGE_SOURCE`, whose one scene is this file."""
        acquired = dt.datetime.fromisoformat(self.acquired) if self.acquired else None
        scene = LocalScene(scene_id=self.scene_id, acquired=acquired, acquired_unknown=acquired is None,
                           bands={b: self.path for b in self.bands},
                           band_indexes={b: i + 1 for i, b in enumerate(self.bands)},
                           processing_baseline=self.processing_baseline)
        source = LocalSource(kind="local", description=f"the raster file {self.path} (--image)",
                             scenes=(scene,), dem=self.dem)
        return Catalog(sources={IMAGE_SOURCE: source}, root=Path(self.path).parent)


def parse_acquired(value: str | dt.datetime | dt.date | None) -> dt.datetime | None:
    """``YYYY-MM-DD[THH:MM[:SS]]`` (optionally with a UTC offset or ``Z``) -> an aware UTC datetime;
    a naive time is taken as UTC, a date alone as 00:00 UTC.

    Raises:
        ValueError: not such a date-time.
    """
    if value is None or isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime.combine(value, dt.time())
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise ValueError(f"expected YYYY-MM-DD[THH:MM[:SS]] (UTC), got {value!r}") from None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def acquisition_from_tags(tags: dict[tuple[str | None, str], str]) -> tuple[dt.datetime | None, str]:
    """The acquisition time of the first :data:`ACQUISITION_TAGS` item present and readable, and
    where it came from (``metadata ITEM``); ``(None, "unknown")`` when none is (pure).

    ``tags`` maps (domain, key) to the item's text (domain None = the default one).
    """
    for domain, key in ACQUISITION_TAGS:
        text = tags.get((domain, key))
        if not text:
            continue
        try:
            value = parse_acquired(text)
        except ValueError:
            log.warning("metadata item %s=%r is not a date-time; acquisition time left unknown", key, text)
            continue
        return value, f"metadata {key}" if domain is None else f"metadata {domain}/{key}"
    return None, "unknown"


def name_image_bands(path: str, descriptions: Sequence[str | None],
                     given: Sequence[str] | None) -> tuple[tuple[str, ...], str]:
    """Contract names of a file's bands, in band order, and where they came from (pure).

    Args:
        path: the file (named in messages).
        descriptions: the file's band descriptions (None or "" where a band has none).
        given: ``--bands`` (wins over the descriptions), or None.

    Raises:
        InputError: ``--bands`` names another number of bands than the file has; no ``--bands`` and
            a band without a description; a name that is no Sentinel-2 band; a band named twice.
    """
    count = len(descriptions)
    if given is not None:
        names, origin = [str(n).strip() for n in given], BANDS_FROM_OPTION
        if len(names) != count:
            raise InputError(f"--bands names {len(names)} band(s) ({','.join(names)}) but --image "
                             f"{path} has {count}: give one name per band, in band order")
    else:
        missing = [str(i + 1) for i, d in enumerate(descriptions) if not (d or "").strip()]
        if missing:
            example = ",".join(SPECTRAL_BAND_NAMES[1:1 + count]) if count <= 11 else "B01,B02,..."
            raise InputError(f"--image {path} has no band description for band(s) {', '.join(missing)} "
                             f"of {count}: name its bands in band order with --bands (e.g. --bands "
                             f"{example})")
        names, origin = [str(d).strip() for d in descriptions], BANDS_FROM_DESCRIPTIONS
    fix = "" if origin == BANDS_FROM_OPTION else "; name the bands with --bands instead"
    canon = []
    for i, name in enumerate(names):
        try:
            band = normalize_band_name(name)
        except InputError:
            band = None
        if band in TERRAIN_BAND_NAMES:
            raise InputError(f"band {i + 1} of --image {path} is {name!r} ({origin}): {band} is derived "
                             "from a DEM, not read from the image; pass the elevation as --dem FILE "
                             "and name only the Sentinel-2 bands")
        if band not in SPECTRAL_BAND_NAMES:
            raise InputError(f"band {i + 1} of --image {path} is {name!r} ({origin}): not a Sentinel-2 "
                             f"band; valid names: {', '.join(SPECTRAL_BAND_NAMES)} (B2 for B02 "
                             f"is fine){fix}")
        canon.append(band)
    twice = sorted({b for b in canon if canon.count(b) > 1})
    if twice:
        raise InputError(f"--image {path}: band(s) {', '.join(twice)} named twice ({origin}); each "
                         f"band of the file needs its own name{fix}")
    return tuple(canon), origin


def _metadata(src) -> dict[tuple[str | None, str], str]:
    tags: dict[tuple[str | None, str], str] = {(None, k): v for k, v in src.tags().items()}
    for domain in {d for d, _ in ACQUISITION_TAGS if d}:
        tags.update({(domain, k): v for k, v in src.tags(ns=domain).items()})
    return tags


def open_image(image: str, bands: Sequence[str] | None = None, dem: str | None = None,
               acquired: dt.datetime | None = None) -> ImageInputs:
    """Read the metadata of ``--image`` (band count, descriptions, tags) and name its bands.

    Args:
        image: a raster file GDAL can open (GeoTIFF is the main case).
        bands: ``--bands``: one contract name per band of the file, in band order; None = the
            file's band descriptions.
        dem: ``--dem``: a DEM raster in metres (checked like a catalog's DEM when the scan is
            planned: readable, georeferenced, covering the ROI).
        acquired: ``--acquired`` (UTC); None = a standard metadata item's, else unknown.

    Raises:
        InputError: a missing file, a file GDAL cannot open as a raster, a file with no raster
            band, or bands that cannot be named (see :func:`name_image_bands`).
    """
    path = Path(image).expanduser().resolve()
    if not path.exists():
        raise InputError(f"--image {image} does not exist")
    try:
        with rasterio.open(path) as src:
            count, driver = src.count, src.driver
            descriptions = list(src.descriptions)
            tags = _metadata(src)
            subdatasets = list(src.subdatasets)
    except RasterioIOError as exc:
        raise InputError(f"--image {image} is not a raster GDAL can read "
                         f"({str(exc).splitlines()[0]}); pass a GeoTIFF or another raster file") from None
    if count == 0:
        hint = f" (it holds {len(subdatasets)} subdatasets: pass one of them, e.g. {subdatasets[0]})" \
            if subdatasets else ""
        raise InputError(f"--image {image} has no raster band{hint}")
    names, origin = name_image_bands(str(path), descriptions, bands)
    if acquired is not None:
        when, acquired_from = parse_acquired(acquired), "--acquired"
    else:
        when, acquired_from = acquisition_from_tags(tags)
    dem_path = None
    if dem is not None:
        dem_path = Path(dem).expanduser().resolve()
        if not dem_path.exists():
            raise InputError(f"--dem {dem} does not exist")
    return ImageInputs(path=str(path), driver=driver, band_count=count, bands=names, bands_from=origin,
                       acquired=when.isoformat() if when else None, acquired_from=acquired_from,
                       dem=str(dem_path) if dem_path else None,
                       processing_baseline=tags.get((None, BASELINE_TAG)) or None)
