"""Per-polygon statistics of a raster on the analysis grid, block by block (bounded memory)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.windows import bounds as window_bounds
from shapely.geometry import box

from tasks.core import defaults
from tasks.core.tiling import iter_blocks


def zonal_mean(geoms: gpd.GeoSeries, ids: np.ndarray, raster_path: str, grid,
               band: int = 1, block_px: int = defaults.BLOCK_PX) -> np.ndarray:
    """The mean of the finite values of ``raster_path`` band ``band`` under each geometry (pixel
    centres inside it), in the order of ``geoms``; NaN where none is finite.

    ``geoms`` are in the grid's CRS and must not overlap (a pixel counts for one of them); ``ids``
    are their distinct positive integer ids.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return np.zeros(0)
    position = {int(i): k for k, i in enumerate(ids)}
    sums, counts = np.zeros(len(ids)), np.zeros(len(ids))
    sindex = geoms.sindex
    geom_values = geoms.values
    with rasterio.open(raster_path) as src:
        for win in iter_blocks(grid.height, grid.width, block_px):
            hits = sindex.query(box(*window_bounds(win, grid.transform)), predicate="intersects")
            if len(hits) == 0:
                continue
            shape = (int(win.height), int(win.width))
            labels = rasterize(((geom_values[k], int(ids[k])) for k in hits), out_shape=shape,
                               transform=rasterio.windows.transform(win, grid.transform),
                               fill=0, dtype="int32")
            values = src.read(band, window=win).astype(np.float64)
            ok = (labels > 0) & np.isfinite(values)
            if not ok.any():
                continue
            lab, val = labels[ok], values[ok]
            uniq, inverse = np.unique(lab, return_inverse=True)
            pos = np.array([position[int(u)] for u in uniq])
            np.add.at(sums, pos, np.bincount(inverse, weights=val))
            np.add.at(counts, pos, np.bincount(inverse))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)
