"""Vector labels onto the analysis grid: read polygon layers of an inventory (any CRS, any OGR
format), repair what can be repaired, and burn them into rasters on an ``AnalysisGrid``.

Used to build training datasets from a landslide inventory (``tasks.datasets``) and to score runs
against a reference inventory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from rasterio.features import rasterize

from tasks.core.errors import InputError
from tasks.core.grid import AnalysisGrid


@dataclass(frozen=True)
class PolygonLayer:
    """Polygons of one layer, in the file's CRS, with what reading them took."""

    frame: gpd.GeoDataFrame
    path: str
    layer: str
    repaired: int  # invalid geometries made valid
    dropped: int  # empty or non-polygon geometries left out


def list_layers(path: str | Path) -> list[str]:
    """The layer names of a vector file.

    Raises:
        InputError: the file is missing or OGR cannot open it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    try:
        return [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise InputError(f"{path} is not a vector file OGR can read ({exc})") from None


def read_polygons(path: str | Path, layer: str | None = None) -> PolygonLayer:
    """The (Multi)Polygons of ``layer`` (default: the file's only layer), invalid ones repaired.

    Raises:
        InputError: missing/unreadable file, unknown layer (the message lists the layers), a layer
            without a CRS, or without any polygon.
    """
    layers = list_layers(path)
    if layer is None:
        if len(layers) != 1:
            raise InputError(f"{path} has {len(layers)} layers ({', '.join(layers)}); name one")
        layer = layers[0]
    elif layer not in layers:
        raise InputError(f"{path} has no layer {layer!r}; its layers: {', '.join(layers)}")
    frame = gpd.read_file(path, layer=layer, engine="pyogrio")
    if frame.crs is None:
        raise InputError(f"{path} layer {layer!r} declares no CRS; set one (e.g. ogr2ogr -a_srs)")
    geoms = frame.geometry
    keep = geoms.notna() & ~geoms.is_empty
    keep &= geoms.geom_type.isin(["Polygon", "MultiPolygon"])
    dropped = int((~keep).sum())
    frame = frame[keep].copy()
    invalid = ~frame.geometry.is_valid
    repaired = int(invalid.sum())
    if repaired:
        fixed = shapely.make_valid(frame.geometry[invalid].values)
        # make_valid may return collections: keep their polygonal part
        frame.loc[invalid, frame.geometry.name] = [_polygonal(g) for g in fixed]
    if frame.empty:
        raise InputError(f"{path} layer {layer!r} holds no polygon")
    return PolygonLayer(frame=frame, path=str(path), layer=layer, repaired=repaired, dropped=dropped)


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def to_grid_crs(geoms: gpd.GeoSeries, grid: AnalysisGrid) -> gpd.GeoSeries:
    """``geoms`` reprojected to the grid's CRS."""
    return geoms.to_crs(grid.crs)


def rasterize_polygons(geoms: gpd.GeoSeries, grid: AnalysisGrid, *, value: int = 1, fill: int = 0,
                       all_touched: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Burn ``geoms`` (any CRS) into a uint8 raster on ``grid``.

    ``all_touched`` False: a pixel is burnt when its centre falls inside a polygon (GDAL's
    default); True: when the polygon touches it at all. ``out``: burn into this array instead of a
    new one filled with ``fill`` (later calls overwrite earlier ones where they overlap).
    """
    shapes = [(g, value) for g in to_grid_crs(geoms, grid) if g is not None and not g.is_empty]
    if out is None:
        out = np.full(grid.shape, fill, dtype=np.uint8)
    if shapes:
        rasterize(shapes, out_shape=grid.shape, transform=grid.transform, out=out,
                  all_touched=all_touched, dtype="uint8")
    return out
