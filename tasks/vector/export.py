"""Extra exports of the ``landslides`` layer beside ``landslides.gpkg`` (``landslide scan --format``).

- ``landslides.geojson``: EPSG:4326 lon/lat per RFC 7946 (GDAL's ``RFC7946=YES``: right-hand
  winding, 7 decimals, a ``bbox``), every attribute;
- ``landslides.csv``: one row a polygon, every attribute, the polygon as WKT in EPSG:4326 (column
  ``WKT``, which GDAL and QGIS read back as the geometry) beside ``centroid_lon``/``centroid_lat``;
- ``landslides.parquet``: GeoParquet (geopandas ``to_parquet``, needs pyarrow) in the layer's own
  CRS (UTM), recorded in the GeoParquet metadata.

The GeoPackage stays the reference; ``gpkg`` asks for nothing extra.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from tasks.core.defaults import EXPORT_FILES, EXPORT_FORMATS
from tasks.core.errors import InputError
from tasks.core.files import atomic_write

log = logging.getLogger(__name__)

LANDSLIDES_LAYER = "landslides"
LONLAT_CRS = "EPSG:4326"


def check_formats(formats) -> tuple[str, ...]:
    """The requested formats, validated and without repeats (order kept).

    Raises:
        InputError: an unknown format, or ``parquet`` without pyarrow installed.
    """
    out: list[str] = []
    for fmt in formats or ():
        fmt = str(fmt).strip().lower()
        if fmt not in EXPORT_FORMATS:
            raise InputError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
        if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
            raise InputError("--format parquet needs pyarrow (GeoParquet): pip install pyarrow, "
                             "or choose gpkg, geojson or csv")
        if fmt not in out:
            out.append(fmt)
    return tuple(out)


def export_landslides(gpkg_path: str | Path, formats, out_dir: str | Path | None = None) -> list[Path]:
    """Write the ``landslides`` layer of ``gpkg_path`` in each of ``formats`` (``gpkg``: nothing).

    Args:
        gpkg_path: a run's ``landslides.gpkg``.
        formats: names from :data:`tasks.core.defaults.EXPORT_FORMATS`.
        out_dir: where the files go (default: beside the GeoPackage).

    Returns:
        The files written, each renamed into place when complete.

    Raises:
        InputError: see :func:`check_formats`.
    """
    formats = [f for f in check_formats(formats) if f != "gpkg"]
    if not formats:
        return []
    out_dir = Path(out_dir) if out_dir is not None else Path(gpkg_path).parent
    import geopandas as gpd  # here, not at the top: the CLI validates --format with this module

    gdf = gpd.read_file(gpkg_path, layer=LANDSLIDES_LAYER, engine="pyogrio")
    written = []
    for fmt in formats:
        path = out_dir / EXPORT_FILES[fmt]
        with atomic_write(path, suffix=f".tmp{path.suffix}") as tmp:
            if fmt == "geojson":
                gdf.to_crs(LONLAT_CRS).to_file(tmp, layer=LANDSLIDES_LAYER, driver="GeoJSON",
                                               engine="pyogrio", layer_options={"RFC7946": "YES"})
            elif fmt == "csv":
                gdf.to_crs(LONLAT_CRS).to_file(tmp, layer=LANDSLIDES_LAYER, driver="CSV",
                                               engine="pyogrio", layer_options={"GEOMETRY": "AS_WKT"})
            else:
                gdf.to_parquet(tmp, index=False)
        written.append(path)
    log.info("exported %d landslides as %s", len(gdf), ", ".join(p.name for p in written))
    return written
