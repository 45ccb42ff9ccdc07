"""A DEM for an area on its own (``landslide dem``): the bbox's window of a stac source's DEM collection.

The pixels come through the scan's path (:func:`tasks.sources.stac.fetch_dem`: search, signed window
reads, mosaic of the intersecting items, the download cache); this module checks the request before
any request is made and writes the mosaic as a Cloud-Optimized GeoTIFF in the DEM's own CRS and
posting (no resampling), nodata and units (metres) set on the band.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import rasterio
import rasterio.shutil
import shapely
from rasterio.io import MemoryFile

from tasks.core.errors import InputError
from tasks.core.files import atomic_write
from tasks.core.grid import check_bbox
from tasks.sources.catalog import Catalog, LocalSource, StacSource, load_catalog
from tasks.sources.stac import dem_record, fetch_dem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemRequest:
    """A checked ``landslide dem`` request: nothing has been fetched yet."""

    source_name: str  # the stac source whose dem_collection is read
    source: StacSource
    bbox: tuple[float, float, float, float]  # EPSG:4326
    out: Path


@dataclass(frozen=True)
class DemResult:
    """What was written: the product record (``tasks.sources.stac.dem_record``) and the raster's facts."""

    path: Path
    product: dict
    width: int
    height: int
    crs: str
    dtype: str
    nodata: float | None
    notes: list[str]


def dem_source_of(catalog: Catalog, name: str) -> tuple[str, StacSource]:
    """The stac source whose DEM collection ``name`` stands for: itself, or a local source's ``dem_source``.

    Raises:
        InputError: unknown source (the catalog's sources listed), a source of another kind, or a stac
            source without ``dem_collection``.
    """
    source = catalog.source(name)
    if isinstance(source, LocalSource) and source.dem_source is not None:
        name, source = source.dem_source, catalog.source(source.dem_source)
    choices = ", ".join(catalog.dem_stac_sources()) or "none in this catalog"
    if not isinstance(source, StacSource):
        raise InputError(f"--source {name!r} is a {source.kind!r} source; a DEM comes from a stac source's "
                         f"dem_collection ({choices})")
    if source.dem_collection is None:
        raise InputError(f"--source {name!r} has no dem_collection; set one in data_catalog.yaml or "
                         f"choose another source ({choices})")
    return name, source


def check_dem_request(catalog_path: str | Path | None, source_name: str, bbox: list[float] | tuple[float, ...],
                      out: str | Path, overwrite: bool = False) -> DemRequest:
    """Check a ``landslide dem`` request without any HTTP request.

    Raises:
        InputError: a bad bbox, an unreadable catalog, an unknown source or one without a DEM
            collection, an ``out`` that exists (without ``overwrite``) or is a folder.
    """
    box = check_bbox(bbox)
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give the GeoTIFF's file name, e.g. {out / 'dem.tif'}")
    if out.exists() and not overwrite:
        raise InputError(f"--out {out} exists; choose another file or pass --overwrite")
    name, source = dem_source_of(load_catalog(catalog_path), source_name)
    return DemRequest(name, source, box, out)  # type: ignore[arg-type]


def write_area_dem(request: DemRequest, cache_dir: Path) -> DemResult:
    """Fetch the DEM over ``request.bbox`` (cached under ``<cache_dir>/stac/dem/``) and write it as a COG.

    Raises:
        InputError: the DEM collection has no item over the bbox (collection and bbox named).
        SourceError: the STAC API or the DEM storage refuses or keeps failing.
    """
    roi = shapely.box(*request.bbox)
    notes: list[str] = []
    path, nodata = fetch_dem(request.source, roi, request.bbox, Path(cache_dir) / "stac", notes)
    if path is None:
        bbox = ",".join(f"{v:.5f}" for v in request.bbox)
        raise InputError(f"DEM collection {request.source.dem_collection!r} of source {request.source_name!r} "
                         f"at {request.source.dem_url or request.source.url} has no item over bbox {bbox}; "
                         "choose another --bbox or --source")
    product = dem_record(request.source) or {}
    request.out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path) as src:
        data = src.read(1)
        profile = {"driver": "GTiff", "height": src.height, "width": src.width, "count": 1,
                   "dtype": src.dtypes[0], "crs": src.crs, "transform": src.transform, "nodata": nodata}
    with MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(data, 1)
            tmp.set_band_description(1, f"elevation ({product.get('product', 'DEM')})")
            tmp.set_band_unit(1, "metre")  # all three products are in metres (STAC_DEM_PRODUCTS)
            tmp.update_tags(dem_collection=product.get("collection", ""),
                            vertical_datum=product.get("vertical_datum", ""))
        with mem.open() as src, atomic_write(request.out, unique=True, suffix=".part") as tmp_path:
            rasterio.shutil.copy(src, tmp_path, driver="COG", compress="DEFLATE", blocksize=256,
                                 overview_resampling="bilinear")
    log.info("DEM %s over %s -> %s", product.get("collection"), request.bbox, request.out)
    return DemResult(request.out, product, profile["width"], profile["height"], str(profile["crs"]),
                     profile["dtype"], nodata, notes)
