"""The analysis grid: 10 m pixels in the UTM zone of the ROI centroid, origin snapped to the pixel size.

docs/contracts.md section 2: ROI bounds are snapped outward to multiples of ``res_m``; every layer is resampled
onto this one grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

from tasks.core import defaults
from tasks.core.errors import InputError


def check_bbox(bbox: tuple[float, float, float, float] | list[float]) -> tuple[float, ...]:
    """Validate an EPSG:4326 bbox ``(minx, miny, maxx, maxy)``."""
    if len(bbox) != 4:
        raise InputError(f"bbox needs 4 numbers minx,miny,maxx,maxy (EPSG:4326), got {bbox!r}")
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    if not (-180 <= minx < maxx <= 180 and -90 <= miny < maxy <= 90):
        raise InputError(
            f"bbox {minx},{miny},{maxx},{maxy} is not minx,miny,maxx,maxy in degrees "
            "(EPSG:4326) with min < max; example: --bbox 141.89,42.68,142.02,42.77")
    return minx, miny, maxx, maxy


@dataclass(frozen=True)
class AnalysisGrid:
    """A north-up grid: CRS, pixel size, origin and shape."""

    crs: str  # "EPSG:326xx" / "EPSG:327xx"
    res_m: float
    xmin: float
    ymax: float
    width: int
    height: int

    @property
    def transform(self) -> Affine:
        return Affine(self.res_m, 0.0, self.xmin, 0.0, -self.res_m, self.ymax)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.xmin, self.ymax - self.height * self.res_m,
                self.xmin + self.width * self.res_m, self.ymax)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def area_km2(self) -> float:
        return self.width * self.height * self.res_m**2 / 1e6

    def to_dict(self) -> dict:
        return {"crs": self.crs, "res_m": self.res_m, "xmin": self.xmin, "ymax": self.ymax,
                "width": self.width, "height": self.height, "bounds": list(self.bounds),
                "transform": list(self.transform)[:6]}

    @classmethod
    def from_dict(cls, data: dict) -> "AnalysisGrid":
        return cls(crs=data["crs"], res_m=float(data["res_m"]), xmin=float(data["xmin"]),
                   ymax=float(data["ymax"]), width=int(data["width"]), height=int(data["height"]))


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the UTM zone containing (lon, lat): 326zz north, 327zz south."""
    zone = int(math.floor((lon + 180.0) / 6.0)) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def _aoi_path_and_layer(spec: str | Path) -> tuple[Path, str | None]:
    """``file.gpkg:layer`` -> (file.gpkg, layer); a path that exists as given has no layer part."""
    path = Path(spec)
    if path.exists() or ":" not in str(spec):
        return path, None
    name, _, layer = str(spec).rpartition(":")
    return Path(name), layer or None


def read_aoi(spec: str | Path) -> shapely.Geometry:
    """Union of the (Multi)Polygons of a vector file, in EPSG:4326.

    Any format GDAL reads (GeoJSON, GeoPackage, shapefile, ...) in any CRS it declares; it is
    reprojected to lon/lat. ``file.gpkg:layer`` picks a layer (the first one otherwise). A GeoJSON
    without a ``crs`` member is EPSG:4326, as RFC 7946 says.

    Raises:
        InputError: missing file or layer, not a vector file, no polygon, no CRS (a shapefile
            without its .prj), a ring across the antimeridian, or parts on both sides of it.
    """
    import pyogrio

    path, layer = _aoi_path_and_layer(spec)
    if not path.exists():
        raise InputError(f"--aoi {path} does not exist")
    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises DataSourceError and friends for non-vector files
        raise InputError(f"--aoi {path} is not a vector file GDAL can read (GeoJSON, GeoPackage, "
                         f"shapefile, ...): {str(exc).splitlines()[0]}") from None
    if layer is not None and layer not in layers:
        raise InputError(f"--aoi {path} has no layer {layer!r}; its layers: {', '.join(layers)}")
    try:
        frame = pyogrio.read_dataframe(path, layer=layer or (layers[0] if layers else None))
    except Exception as exc:
        raise InputError(f"--aoi {path} cannot be read: {str(exc).splitlines()[0]}") from None
    polys = [g for g in frame.geometry if g is not None and g.geom_type in ("Polygon", "MultiPolygon")]
    if not polys:
        raise InputError(f"--aoi {path} holds no Polygon or MultiPolygon")
    if frame.crs is None:
        raise InputError(f"--aoi {path} declares no CRS (a shapefile without its .prj?); add it, or "
                         "write the AOI as GeoJSON in lon/lat")
    if not frame.crs.equals("EPSG:4326") and not frame.crs.equals("OGC:CRS84"):
        to_lonlat = Transformer.from_crs(frame.crs, "EPSG:4326", always_xy=True)
        polys = [shp_transform(to_lonlat.transform, shapely.segmentize(g, _segment_length(g)))
                 for g in polys]
    _check_antimeridian(polys, path)
    geom = shapely.make_valid(shapely.union_all(polys))
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise InputError(f"--aoi {path} coordinates are not lon/lat degrees (bounds {geom.bounds}); "
                         "if it is in a projected CRS, declare it in the file")
    if maxx - minx > 180:
        raise InputError(f"--aoi {path} spans lon {minx:g}..{maxx:g}: its parts lie on both sides of "
                         "the antimeridian (180 degrees), which one UTM grid cannot hold; scan each "
                         "side with its own --aoi")
    return geom


def _segment_length(geom: shapely.Geometry) -> float:
    """Densify step before reprojection: 1/50 of the geometry's larger side (edges stay curved)."""
    minx, miny, maxx, maxy = geom.bounds
    return max(maxx - minx, maxy - miny, 1e-9) / 50


def _check_antimeridian(polys: list[shapely.Geometry], path: Path) -> None:
    """Refuse a ring that jumps across 180 degrees: read as lon/lat it would wrap the other way round
    the globe (a 359-degree strip) instead of crossing the antimeridian."""
    for poly in polys:
        for part in getattr(poly, "geoms", [poly]):
            for ring in [part.exterior, *part.interiors]:
                lon = np.asarray(ring.coords)[:, 0]
                jumps = np.flatnonzero(np.abs(np.diff(lon)) > 180)
                if jumps.size:
                    i = int(jumps[0])
                    raise InputError(
                        f"--aoi {path} crosses the antimeridian (a ring goes from lon {lon[i]:g} to "
                        f"{lon[i + 1]:g}), which would be read as a strip round the globe; split it "
                        "at 180 degrees (RFC 7946 section 3.1.9) and scan each side with its own --aoi")


def resolve_roi(region_bbox: tuple[float, ...] | None, region_aoi: shapely.Geometry | None,
                bbox: tuple[float, ...] | None, aoi: shapely.Geometry | None,
                data_extent: tuple[float, float, float, float], *,
                data_label: str = "the source") -> shapely.Geometry:
    """Intersect the region's area, the user's ``--bbox``/``--aoi`` and the data's extent (EPSG:4326).

    Args:
        data_label: what the data is, in the message (``the source``, ``the image FILE``).

    Raises:
        InputError: the ROI does not intersect the data (the message gives both extents).
    """
    asked = None
    for part in (box(*check_bbox(region_bbox)) if region_bbox else None, region_aoi,
                 box(*check_bbox(bbox)) if bbox else None, aoi):
        if part is not None:
            asked = part if asked is None else asked.intersection(part)
    roi = box(*data_extent) if asked is None else box(*data_extent).intersection(asked)
    if roi.is_empty or roi.area == 0:
        e = data_extent
        where = ""
        if asked is not None and not asked.is_empty:
            a = asked.bounds
            where = f", the ROI lon {a[0]:.4f}..{a[2]:.4f}, lat {a[1]:.4f}..{a[3]:.4f}"
        raise InputError(
            f"the ROI does not intersect the data: {data_label} covers lon "
            f"{e[0]:.4f}..{e[2]:.4f}, lat {e[1]:.4f}..{e[3]:.4f}{where}; choose a --bbox/--aoi inside it")
    return roi


def make_grid(roi_lonlat: shapely.Geometry, res_m: float = defaults.RES_M, crs: str | None = None) -> AnalysisGrid:
    """Snap the ROI's bounds (projected to UTM) outward to ``res_m`` multiples.

    Args:
        roi_lonlat: ROI geometry in EPSG:4326.
        res_m: pixel size in metres.
        crs: override the UTM zone (otherwise that of the ROI centroid).
    """
    if res_m <= 0:
        raise InputError(f"res_m must be positive, got {res_m}")
    c = roi_lonlat.centroid
    crs = crs or f"EPSG:{utm_epsg(c.x, c.y)}"
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    roi_utm = shp_transform(to_utm.transform, shapely.segmentize(roi_lonlat, 0.001))
    minx, miny, maxx, maxy = roi_utm.bounds
    xmin = math.floor(minx / res_m) * res_m
    ymin = math.floor(miny / res_m) * res_m
    xmax = math.ceil(maxx / res_m) * res_m
    ymax = math.ceil(maxy / res_m) * res_m
    width, height = int(round((xmax - xmin) / res_m)), int(round((ymax - ymin) / res_m))
    return AnalysisGrid(crs=crs, res_m=float(res_m), xmin=float(xmin), ymax=float(ymax),
                        width=max(width, 1), height=max(height, 1))


def roi_in_grid_crs(roi_lonlat: shapely.Geometry, grid: AnalysisGrid) -> shapely.Geometry:
    """The ROI polygon projected to the grid's CRS (for the valid mask)."""
    to_grid = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    return shp_transform(to_grid.transform, shapely.segmentize(roi_lonlat, 0.001))


def geometry_to_geojson(geom: shapely.Geometry) -> dict:
    return mapping(geom)


def crs_is_utm(crs: str) -> bool:
    return CRS.from_user_input(crs).utm_zone is not None
