"""GDAL settings every step and block job runs under.

GDAL's raster block cache defaults to 5 % of RAM, which was most of a full tile's peak memory;
each step reads a window or a patch strip once, so the cache has little to reuse. Every step and
every block job (also in Dask workers) runs under ``GDAL_CACHE_MB`` (default 64 MB;
``$LANDSLIDE_GDAL_CACHE_MB`` overrides it). Measurements: ``benchmarks/README.md``.
"""

from __future__ import annotations

import functools
import os

import rasterio

GDAL_CACHE_MB = int(os.environ.get("LANDSLIDE_GDAL_CACHE_MB", "64"))


def gdal_env() -> rasterio.Env:
    """A ``rasterio.Env`` with the raster block cache bounded to ``GDAL_CACHE_MB``."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20)


def gdal_bounded(fn):
    """Run ``fn`` under :func:`gdal_env` (keeps the signature, e.g. for Prefect's task wrapper)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with gdal_env():
            return fn(*args, **kwargs)

    return wrapper
