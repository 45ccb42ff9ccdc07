"""Remote sources behind one call: search, choose the scene, download the ROI, return paths.

``fetch_remote_inputs`` returns the same ``SceneInputs`` as the local source, with band and DEM
paths pointing at GeoTIFFs in the download cache, so every later stage is source-agnostic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import shapely

from tasks.core.errors import InputError
from tasks.sources.catalog import Catalog, LocalSource, SentinelHubSource, StacSource
from tasks.sources.local import SceneInputs
from tasks.sources.sentinelhub import fetch_sentinelhub_inputs
from tasks.sources.stac import dem_record, fetch_dem, fetch_stac_inputs


def fetch_remote_inputs(source: StacSource | SentinelHubSource, source_name: str,
                        spectral_bands: tuple[str, ...], roi_lonlat: shapely.Geometry,
                        start: dt.date | None, end: dt.date | None, cache_dir: Path) -> SceneInputs:
    """Dispatch on the source kind (``stac`` or ``sentinelhub``)."""
    if isinstance(source, StacSource):
        return fetch_stac_inputs(source, source_name, spectral_bands, roi_lonlat, start, end,
                                 cache_dir / "stac")
    return fetch_sentinelhub_inputs(source, source_name, spectral_bands, roi_lonlat, start, end,
                                    cache_dir / "sentinelhub")


def cache_root(cache_dir: str | None) -> Path:
    """Download cache: ``--cache-dir``, ``$LANDSLIDE_CACHE``, or ``~/.cache/landslide-pipeline``."""
    root = cache_dir or os.environ.get("LANDSLIDE_CACHE") or "~/.cache/landslide-pipeline"
    return Path(root).expanduser()


def attach_dem_source(catalog: Catalog, inputs: SceneInputs, roi_lonlat: shapely.Geometry,
                      cache_dir: Path, terrain_needed: tuple[str, ...] = ()) -> SceneInputs:
    """A local source's DEM from the ``dem_source`` it names: the ROI window of that stac source's
    ``dem_collection``, fetched (and cached) as a remote scan's DEM is; ``inputs`` unchanged otherwise.

    Args:
        catalog: the loaded catalog (``inputs.source`` is a local source of it).
        inputs: the local scene's inputs (:func:`tasks.sources.local.resolve_local_inputs`).
        roi_lonlat: the ROI in EPSG:4326.
        cache_dir: download cache root (the DEM goes under ``<cache_dir>/stac/dem/``).
        terrain_needed: the detector's terrain channels (SLOPE, DEM); with any, a collection with no
            item over the ROI is refused.

    Raises:
        InputError: the detector needs terrain and the collection has no item over the ROI (one line
            naming the collection, its API and the bbox).
        SourceError: the STAC API or the DEM storage refuses or keeps failing.
    """
    source = catalog.source(inputs.source)
    if not isinstance(source, LocalSource) or source.dem_source is None:
        return inputs
    dem_source = catalog.source(source.dem_source)
    if not isinstance(dem_source, StacSource):  # Catalog validation refuses it; kept for type checkers
        raise InputError(f"dem_source {source.dem_source!r} of source {inputs.source!r} is not a stac source")
    notes = list(inputs.notes)
    bounds = tuple(float(v) for v in roi_lonlat.bounds)
    dem_path, dem_nodata = fetch_dem(dem_source, roi_lonlat, bounds, Path(cache_dir) / "stac", notes)
    if dem_path is None:
        if terrain_needed:
            bbox = ",".join(f"{v:.5f}" for v in bounds)
            raise InputError(
                f"source {inputs.source!r} takes its DEM from dem_source {source.dem_source!r}, but DEM "
                f"collection {dem_source.dem_collection!r} at {dem_source.dem_url or dem_source.url} has no "
                f"item over bbox {bbox}; the detector needs {', '.join(terrain_needed)}: name another "
                "dem_source, give 'dem:' a file, or choose a detector without terrain channels")
        return dataclasses.replace(inputs, notes=notes)
    notes[-1] = f"{notes[-1]}; from dem_source {source.dem_source!r}"
    if source.dem_nodata is not None:  # the catalog's override, as for a 'dem' file
        dem_nodata = source.dem_nodata
    return dataclasses.replace(inputs, dem_path=dem_path, dem_nodata=dem_nodata,
                               dem_product=dem_record(dem_source), notes=notes)
