"""Terrain: slope (and aspect) in degrees from a DEM, computed in a metric CRS (docs/contracts.md section 1, band SLOPE).

Slope uses Horn's (1981) method, the 3x3 weighted finite differences of ``gdaldem slope`` (its
default ``-alg Horn``). For a cell ``e`` with neighbours::

    a b c
    d e f
    g h i

    dz/dx = ((c + 2f + i) - (a + 2d + g)) / (8 * res_x)
    dz/dy = ((g + 2h + i) - (a + 2b + c)) / (8 * res_y)
    slope = atan(sqrt(dz/dx^2 + dz/dy^2))

SAGA's "Slope, Aspect, Curvature" defaults to Zevenbergen & Thorne (1987), which uses only the four
edge neighbours; ``method="zevenbergen_thorne"`` reproduces it exactly, and Horn differs from it by
about 1 degree on average on a rough 10 m DEM (docs/slope_check.md has the numbers).

A DEM in a geographic CRS (GLO-30, AW3D30: EPSG:4326) is first reprojected (bilinear) to a metric
CRS at about its native ground resolution, because a degree of longitude is not a degree of latitude
and neither is a metre. tasks.raster.align then warps the slope onto the 10 m analysis grid.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

from tasks.core.errors import InputError
from tasks.core.files import atomic_write

log = logging.getLogger(__name__)

# Metres per degree of latitude (and of longitude at the equator) on the WGS84 ellipsoid, to ~0.5 %;
# only used to pick a target pixel size, never to compute slope.
_M_PER_DEG = 111_320.0
# Rows of the DEM processed at once by slope_deg: bounds the temporaries (~10 float64 copies) to
# about 10 * 1024 * width * 8 bytes.
_BLOCK_ROWS = 1024


def slope_deg(dem: np.ndarray, res_x_m: float, res_y_m: float, *,
              method: str = "horn") -> np.ndarray:
    """Slope in degrees (0..90) of a DEM on a metric grid, Horn's (1981) method by default.

    Missing neighbours (NaN, or outside the array) are filled the way SAGA does: by linear
    extrapolation through the centre cell from the opposite neighbour (``2 * centre - opposite``),
    or, when the opposite neighbour is missing too, with the centre cell's value (edge neighbours)
    or the plane through the filled edge neighbours (corner neighbours). So slope is defined next to
    holes and on the array border (no NaN ring), and a plane keeps its exact slope there (plain edge
    replication, or GDAL's ``-compute_edges``, would halve the across-border gradient on the outer
    ring). A cell with no valid neighbour at all gets slope 0.

    Args:
        dem: (H, W) elevations in metres; NaN marks nodata.
        res_x_m: pixel width in metres (> 0).
        res_y_m: pixel height in metres (> 0; give its absolute value: slope does not depend on the
            sign of the transform's y step).
        method: ``"horn"`` (the pipeline's SLOPE band, as ``gdaldem slope``) or
            ``"zevenbergen_thorne"`` (4 neighbours, the default of SAGA's Slope, Aspect, Curvature;
            kept to check against SAGA-made references, see docs/slope_check.md).

    Returns:
        (H, W) float32 slope in degrees, NaN exactly where ``dem`` is NaN.

    Raises:
        InputError: ``dem`` is not 2-D, a resolution is not a positive finite number, or the method
            is unknown.
    """
    if method not in _GRADIENTS:
        raise InputError(f"unknown slope method {method!r}; use one of {', '.join(_GRADIENTS)}")

    def slope(win: "_Window3x3", dzdx: np.ndarray, dzdy: np.ndarray) -> np.ndarray:
        s = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
        s[np.isnan(win.centre)] = np.nan
        return s

    return _per_cell_from_gradient("slope_deg", dem, res_x_m, res_y_m, _GRADIENTS[method], slope)


def _per_cell_from_gradient(what: str, dem: np.ndarray, res_x_m: float, res_y_m: float, gradient,
                            value) -> np.ndarray:
    """``value(window, dzdx, dzdy)`` for every cell of ``dem``, row block by row block (bounded
    memory): the DEM and resolutions checked, the DEM NaN-padded by one cell, each block's 3 x 3
    windows filled as :class:`_Window3x3` does and its gradient taken with ``gradient``.

    Raises:
        InputError: ``dem`` is not 2-D or a resolution is not a positive finite number (``what``
            names the caller in the message).
    """
    dem = _checked_dem(what, dem, res_x_m, res_y_m)
    h, w = dem.shape
    out = np.full((h, w), np.nan, dtype=np.float32)
    if h == 0 or w == 0:
        return out
    zp = np.pad(dem.astype(np.float64, copy=False), 1, mode="constant", constant_values=np.nan)
    for r0 in range(0, h, _BLOCK_ROWS):
        r1 = min(r0 + _BLOCK_ROWS, h)
        win = _Window3x3(zp[r0:r1 + 2])
        dzdx, dzdy = gradient(win, float(res_x_m), float(res_y_m))
        out[r0:r1] = value(win, dzdx, dzdy)
    return out


def _checked_dem(what: str, dem: np.ndarray, res_x_m: float, res_y_m: float) -> np.ndarray:
    """``dem`` as an array, once it is 2-D and both resolutions are positive finite numbers.

    Raises:
        InputError: it is not, ``what`` naming the caller.
    """
    dem = np.asarray(dem)
    if dem.ndim != 2:
        raise InputError(f"{what} needs a 2-D (H, W) DEM, got shape {dem.shape}")
    for name, res in (("res_x_m", res_x_m), ("res_y_m", res_y_m)):
        if not (math.isfinite(res) and res > 0):
            raise InputError(f"{name} must be a positive number of metres, got {res}")
    return dem


def aspect_deg(dem: np.ndarray, res_x_m: float, res_y_m: float) -> np.ndarray:
    """Aspect in degrees clockwise from grid north (0..360): the direction the slope faces, i.e.
    of steepest descent, from Horn's gradient as in :func:`slope_deg` (same neighbour filling).

    The rows of ``dem`` must run north to south (a north-up grid); in a UTM grid, grid north
    differs from true north by the meridian convergence (under about 2 degrees in Japan's zones).

    Args:
        dem: (H, W) elevations in metres on a metric grid; NaN marks nodata.
        res_x_m: pixel width in metres (> 0).
        res_y_m: pixel height in metres (> 0, its absolute value).

    Returns:
        (H, W) float32 aspect in [0, 360); NaN where ``dem`` is NaN and where the cell is flat
        (gradient below :data:`FLAT_GRADIENT`, where no direction is defined).

    Raises:
        InputError: ``dem`` is not 2-D or a resolution is not a positive finite number.
    """
    out = _per_cell_from_gradient("aspect_deg", dem, res_x_m, res_y_m, _horn, _aspect)
    return _aspect_float32(out)


def aspect_deg_at(dem_halo: np.ndarray, rows: np.ndarray, cols: np.ndarray, res_x_m: float,
                  res_y_m: float) -> np.ndarray:
    """:func:`aspect_deg` at chosen cells only, with the same bits: cell ``k`` is ``(rows[k],
    cols[k])`` of the (H, W) area whose one-cell halo ``dem_halo`` ((H + 2, W + 2), NaN where there
    is no DEM) holds, so every neighbour a cell's window reads is there. For the polygons' aspect,
    where the cells under the landslides are a small share of a block.

    Returns:
        (N,) float32 aspect in [0, 360), NaN as :func:`aspect_deg` gives it.

    Raises:
        InputError: ``dem_halo`` is not 2-D or a resolution is not a positive finite number.
    """
    dem_halo = np.ascontiguousarray(_checked_dem("aspect_deg_at", dem_halo, res_x_m, res_y_m),
                                    dtype=np.float64)
    win = _CellWindows(dem_halo, np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp))
    dzdx, dzdy = _horn(win, float(res_x_m), float(res_y_m))
    return _aspect_float32(_aspect(win, dzdx, dzdy).astype(np.float32))


def _aspect(win: "_Window3x3", dzdx: np.ndarray, dzdy: np.ndarray) -> np.ndarray:
    """Aspect (float64 degrees, [0, 360]) from the gradient; NaN where flat or without a DEM."""
    # dzdy is per metre southward (rows run south): steepest descent is (-dzdx east, +dzdy north)
    a = np.degrees(np.arctan2(-dzdx, dzdy)) % 360.0
    a[(np.hypot(dzdx, dzdy) < FLAT_GRADIENT) | np.isnan(win.centre)] = np.nan
    return a


def _aspect_float32(out: np.ndarray) -> np.ndarray:
    return np.where(out >= 360.0, 0.0, out).astype(np.float32)  # float32 rounding of 359.99999


# a cell whose gradient is below this (m per m, i.e. 0.00006 degrees of slope) is flat: no aspect
FLAT_GRADIENT = 1e-6


class _Window3x3:
    """The 8 neighbours of every cell of a NaN-padded block, missing ones filled (see slope_deg).

    A missing neighbour takes ``2 * centre - opposite``. When the opposite is missing too, an edge
    neighbour takes the centre value, and a corner neighbour ``(dr, dc)`` completes the plane
    through the (filled) edge neighbours ``(dr, 0)`` and ``(0, dc)``: ``z(dr, 0) + z(0, dc) -
    centre``; so a plane keeps its exact slope in the array corners too.
    """

    def __init__(self, zp: np.ndarray):
        self.zp = zp
        self.h, self.w = zp.shape[0] - 2, zp.shape[1] - 2
        self.centre = zp[1:-1, 1:-1]
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def _raw(self, dr: int, dc: int) -> np.ndarray:
        return self.zp[1 + dr:1 + dr + self.h, 1 + dc:1 + dc + self.w]

    def __call__(self, dr: int, dc: int) -> np.ndarray:
        key = (dr, dc)
        if key not in self._cache:
            v, opposite = self._raw(dr, dc), self._raw(-dr, -dc)
            if dr and dc:
                last_resort = self(dr, 0) + self(0, dc) - self.centre
            else:
                last_resort = self.centre
            fill = np.where(np.isnan(opposite), last_resort, 2.0 * self.centre - opposite)
            self._cache[key] = np.where(np.isnan(v), fill, v)
        return self._cache[key]


class _CellWindows(_Window3x3):
    """:class:`_Window3x3` at chosen cells only: each neighbour is a (N,) array of the cells
    ``(rows, cols)`` of the interior of the NaN-padded ``zp`` (C-contiguous), filled the same way."""

    def __init__(self, zp: np.ndarray, rows: np.ndarray, cols: np.ndarray):
        self._flat, self._stride = zp.ravel(), zp.shape[1]
        self._at = (rows + 1) * self._stride + (cols + 1)
        self.centre = self._raw(0, 0)
        self._cache = {}

    def _raw(self, dr: int, dc: int) -> np.ndarray:
        return self._flat[self._at + (dr * self._stride + dc)]


def _horn(z: _Window3x3, res_x: float, res_y: float) -> tuple[np.ndarray, np.ndarray]:
    a, b, c = z(-1, -1), z(-1, 0), z(-1, 1)
    d, f = z(0, -1), z(0, 1)
    g, h, i = z(1, -1), z(1, 0), z(1, 1)
    dzdx = ((c + 2.0 * f + i) - (a + 2.0 * d + g)) / (8.0 * res_x)
    dzdy = ((g + 2.0 * h + i) - (a + 2.0 * b + c)) / (8.0 * res_y)
    return dzdx, dzdy


def _zevenbergen_thorne(z: _Window3x3, res_x: float, res_y: float) -> tuple[np.ndarray, np.ndarray]:
    return (z(0, 1) - z(0, -1)) / (2.0 * res_x), (z(1, 0) - z(-1, 0)) / (2.0 * res_y)


_GRADIENTS = {"horn": _horn, "zevenbergen_thorne": _zevenbergen_thorne}


def utm_crs_for_lonlat(lon: float, lat: float) -> CRS:
    """The WGS84 UTM zone CRS containing (lon, lat): EPSG:326zz north of the equator, 327zz south.

    Raises:
        InputError: lon/lat outside -180..180 / -90..90.
    """
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise InputError(f"({lon}, {lat}) is not a lon/lat position in degrees")
    zone = min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)  # lon = 180 is zone 60's east edge
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _linear_unit_m(crs: CRS) -> float:
    """Metres per unit of a projected CRS (1.0 for UTM; 0.3048 for foot-based state planes)."""
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - rasterio raises CRSError for odd WKT; assume metres like GDAL
        return 1.0


def _round_sig(x: float, digits: int = 2) -> float:
    if x <= 0:
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(x))))


def dem_metric_grid(src_crs: CRS | str, bounds: tuple[float, float, float, float], width: int,
                    height: int, dst_crs: CRS | str, res_m: float | None = None
                    ) -> tuple[Affine, int, int, float]:
    """The metric grid a geographic DEM is reprojected to before its slope is computed.

    Args:
        src_crs: the DEM's (geographic) CRS.
        bounds: the DEM's (left, bottom, right, top) in ``src_crs``.
        width, height: the DEM's size in pixels.
        dst_crs: a projected CRS in metres (a UTM zone).
        res_m: target pixel size; default: the DEM's native ground resolution, the finer of the
            north-south and east-west spacings at the DEM's centre latitude, rounded to two
            significant digits (1 arcsec GLO-30: 30.9 m -> 31 m; AW3D30 exported at 0.000269 deg
            around 42.7 N: 22.0 m east-west, 30.0 m north-south -> 22 m). The finer spacing keeps
            every source sample; bilinear interpolation in the coarser direction adds none.

    Returns:
        ``(transform, width, height, res_m)`` of a north-up grid in ``dst_crs`` covering the DEM,
        its bounds snapped outward to multiples of ``res_m``.

    Raises:
        InputError: ``dst_crs`` is not a projected CRS in metres, or the sizes/resolution are not
            positive.
    """
    src_crs, dst_crs = CRS.from_user_input(src_crs), CRS.from_user_input(dst_crs)
    if not dst_crs.is_projected or abs(_linear_unit_m(dst_crs) - 1.0) > 1e-9:
        raise InputError(f"dst_crs {dst_crs} is not a projected CRS in metres; use a UTM zone "
                         "such as EPSG:326zz/327zz (tasks.raster.terrain.utm_crs_for_lonlat)")
    if width <= 0 or height <= 0:
        raise InputError(f"DEM size must be positive, got {width} x {height}")
    left, bottom, right, top = bounds
    if res_m is None:
        if src_crs.is_geographic:
            lat = math.radians((bottom + top) / 2.0)
            ns = abs(top - bottom) / height * _M_PER_DEG
            ew = abs(right - left) / width * _M_PER_DEG * max(math.cos(lat), 1e-6)
            res_m = _round_sig(min(ns, ew))
        else:
            unit = _linear_unit_m(src_crs)
            res_m = _round_sig(min(abs(right - left) / width, abs(top - bottom) / height) * unit)
    if not (math.isfinite(res_m) and res_m > 0):
        raise InputError(f"res_m must be a positive number of metres, got {res_m}")
    res_m = float(res_m)
    _, _, _, (dl, db, dr, dt) = _default_bounds(src_crs, dst_crs, width, height, bounds)
    xmin = math.floor(dl / res_m) * res_m
    ymin = math.floor(db / res_m) * res_m
    xmax = math.ceil(dr / res_m) * res_m
    ymax = math.ceil(dt / res_m) * res_m
    w = max(int(round((xmax - xmin) / res_m)), 1)
    h = max(int(round((ymax - ymin) / res_m)), 1)
    return Affine(res_m, 0.0, xmin, 0.0, -res_m, ymax), w, h, res_m


def _default_bounds(src_crs: CRS, dst_crs: CRS, width: int, height: int,
                    bounds: tuple[float, float, float, float]):
    """GDAL's suggested warp output (densified edges) and its bounds in ``dst_crs``."""
    transform, w, h = calculate_default_transform(src_crs, dst_crs, width, height, *bounds)
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * w, top + transform.e * h
    return transform, w, h, (left, bottom, right, top)


# Elevations outside this range do not exist on Earth (Dead Sea shore -430 m, Everest 8,849 m): in a
# DEM they are holes written as numbers (-9999, -32768, 3.4e38) without a nodata tag.
MIN_ELEV_M = -500.0
MAX_ELEV_M = 9000.0


def plausible_dem(dem_path: str | Path, nodata: float | None, work_dir: str | Path) -> tuple[str, float | None]:
    """The DEM to use: ``dem_path`` itself when every value is a plausible elevation (or nodata),
    else a float32 copy in ``work_dir`` (``dem_plausible.tif``, NaN nodata) where the impossible
    values (below ``MIN_ELEV_M`` or above ``MAX_ELEV_M``) are nodata too, with a warning that
    counts them. Read and written block by block.

    Returns:
        (path, nodata) to read the DEM with: the inputs, or the copy's path and NaN.
    """
    dem_path, work_dir = Path(dem_path), Path(work_dir)
    out = work_dir / "dem_plausible.tif"
    with rasterio.open(dem_path) as src:
        nodata = nodata if nodata is not None else src.nodata
        n_bad, examples = 0, set()
        for _, win in src.block_windows(1):
            values = src.read(1, window=win, out_dtype="float64")
            bad = _implausible(values, nodata)
            if bad.any():
                n_bad += int(bad.sum())
                examples.update(np.unique(values[bad])[:3].tolist())
        if n_bad == 0:
            return str(dem_path), nodata
        log.warning("DEM %s: %d pixels hold impossible elevations (below %g m or above %g m; values "
                    "such as %s) without a nodata tag: treated as nodata", dem_path, n_bad, MIN_ELEV_M,
                    MAX_ELEV_M, ", ".join(f"{v:g}" for v in sorted(examples)[:3]))
        if out.exists():
            return str(out), float("nan")
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="float32",
                       crs=src.crs, transform=src.transform, nodata=float("nan"), compress="deflate",
                       predictor=3, tiled=True, blockxsize=256, blockysize=256)
        work_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, suffix=".tmp.tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for _, win in src.block_windows(1):
                values = src.read(1, window=win, out_dtype="float32")
                values[_implausible(values, nodata)] = np.nan
                if nodata is not None and not np.isnan(nodata):
                    values[values == np.float32(nodata)] = np.nan
                dst.write(values, 1, window=win)
    return str(out), float("nan")


def _implausible(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """Finite values outside the plausible elevation range that are not the nodata value."""
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(values) & ((values < MIN_ELEV_M) | (values > MAX_ELEV_M))
    if nodata is not None and not np.isnan(nodata):
        bad &= values != nodata
    return bad


def compute_slope_raster(dem_path: str | Path, out_path: str | Path, dst_crs: CRS | str | None = None,
                         res_m: float | None = None, nodata: float | None = None) -> Path:
    """Read a DEM, bring it to a metric CRS if needed, and write its slope (degrees) as a GeoTIFF.

    A DEM in a projected CRS is used on its own grid (``dst_crs`` is ignored; tasks.raster.align warps the
    slope onto the analysis grid). A geographic DEM (EPSG:4326) is reprojected with bilinear
    resampling to ``dst_crs`` on the grid of :func:`dem_metric_grid` first.

    Args:
        dem_path: any single-band GDAL raster of elevations in metres. Nodata: ``nodata`` (the
            catalog's), else the file's nodata value, and NaN.
        out_path: the slope GeoTIFF to write (float32, NaN nodata, tiled, deflate). Written under a
            temporary name in the same folder and renamed when complete.
        dst_crs: metric CRS for a geographic DEM (required then), e.g. ``utm_crs_for_lonlat(...)``.
        res_m: pixel size of the reprojected DEM (default: about its native ground resolution).

    Returns:
        ``out_path`` as a Path.

    Raises:
        InputError: missing/unreadable DEM, a DEM without a CRS, or a geographic DEM without a
            projected ``dst_crs``.
    """
    dem_path, out_path = Path(dem_path), Path(out_path)
    if not dem_path.exists():
        raise InputError(f"DEM {dem_path} does not exist")
    try:
        src = rasterio.open(dem_path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"DEM {dem_path} is not a raster GDAL can read ({exc})") from None
    with src:
        if src.crs is None:
            raise InputError(
                f"DEM {dem_path} has no CRS; set one, e.g. `gdal_edit.py -a_srs EPSG:4326 {dem_path}` "
                "(or the CRS it was produced in)")
        dem = src.read(1, out_dtype="float32")  # float32 holds DEM precision; halves memory
        nodata = nodata if nodata is not None else src.nodata
        if nodata is not None and not np.isnan(nodata):
            dem[dem == np.float32(nodata)] = np.nan
        src_crs, src_transform = src.crs, src.transform
        bounds, width, height = tuple(src.bounds), src.width, src.height

    if src_crs.is_geographic:
        if dst_crs is None:
            cx, cy = (bounds[0] + bounds[2]) / 2.0, (bounds[1] + bounds[3]) / 2.0
            raise InputError(
                f"DEM {dem_path} is in a geographic CRS ({src_crs}); slope needs metres: pass "
                f"dst_crs, e.g. {utm_crs_for_lonlat(cx, cy).to_string()} (its UTM zone)")
        dst_crs = CRS.from_user_input(dst_crs)
        transform, w, h, res = dem_metric_grid(src_crs, bounds, width, height, dst_crs, res_m)
        metric = np.full((h, w), np.nan, dtype=np.float32)
        reproject(dem, metric, src_transform=src_transform, src_crs=src_crs, src_nodata=np.nan,
                  dst_transform=transform, dst_crs=dst_crs, dst_nodata=np.nan,
                  resampling=Resampling.bilinear)
        dem, out_crs, res_x, res_y = metric, dst_crs, res, res
        log.info("reprojected DEM %s (%s, %dx%d) to %s at %.1f m (%dx%d)", dem_path.name, src_crs,
                 width, height, dst_crs, res, w, h)
    else:
        if src_transform.b != 0 or src_transform.d != 0:
            raise InputError(f"DEM {dem_path} has a rotated geotransform; warp it to a north-up grid "
                             "first (gdalwarp)")
        unit = _linear_unit_m(src_crs)
        transform, out_crs = src_transform, src_crs
        res_x, res_y = abs(src_transform.a) * unit, abs(src_transform.e) * unit

    slope = slope_deg(dem, res_x, res_y)
    del dem
    h, w = slope.shape
    profile = dict(driver="GTiff", height=h, width=w, count=1, dtype="float32", crs=out_crs,
                   transform=transform, nodata=np.nan, compress="deflate", predictor=3,
                   tiled=True, blockxsize=256, blockysize=256)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_path, unique=True) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(slope, 1)
        dst.set_band_description(1, "slope (deg, Horn 1981)")
        dst.update_tags(1, units="degrees", method="Horn (1981), 3x3")
    n_valid = int(np.isfinite(slope).sum())
    log.info("slope %s: %dx%d, %d valid px, median %.1f deg", out_path.name, w, h, n_valid,
             float(np.nanmedian(slope)) if n_valid else float("nan"))
    return out_path
