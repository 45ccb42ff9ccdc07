"""Remote sources behind one call: search, choose the scene, download the ROI, return paths.

``fetch_remote_inputs`` returns the same ``SceneInputs`` as the local source, with band and DEM
paths pointing at GeoTIFFs in the download cache, so every later stage is source-agnostic.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import shapely

from tasks.sources.catalog import SentinelHubSource, StacSource
from tasks.sources.local import SceneInputs
from tasks.sources.sentinelhub import fetch_sentinelhub_inputs
from tasks.sources.stac import fetch_stac_inputs


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
