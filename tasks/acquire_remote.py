"""Remote sources behind one call: search, choose the scene, download the ROI, return paths.

``fetch_remote_inputs`` returns the same ``SceneInputs`` as the local source, with band and DEM
paths pointing at GeoTIFFs in the download cache, so every later stage is source-agnostic.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import shapely

from tasks.acquire_local import SceneInputs
from tasks.catalog import SentinelHubSource, StacSource


def fetch_remote_inputs(source: StacSource | SentinelHubSource, source_name: str,
                        spectral_bands: tuple[str, ...], roi_lonlat: shapely.Geometry,
                        start: dt.date | None, end: dt.date | None, cache_dir: Path) -> SceneInputs:
    """Dispatch on the source kind (``stac`` or ``sentinelhub``)."""
    if isinstance(source, StacSource):
        from tasks.acquire_stac import fetch_stac_inputs

        return fetch_stac_inputs(source, source_name, spectral_bands, roi_lonlat, start, end,
                                 cache_dir / "stac")
    from tasks.acquire_sentinelhub import fetch_sentinelhub_inputs

    return fetch_sentinelhub_inputs(source, source_name, spectral_bands, roi_lonlat, start, end,
                                    cache_dir / "sentinelhub")
