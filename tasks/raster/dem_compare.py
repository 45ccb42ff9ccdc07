"""Compare DEM B against DEM A over an ROI, on the grid and with the slope a scan would use.

Both DEMs go through the scan's own terrain path (``tasks.raster.align.build_stack``): impossible
elevations become nodata (``tasks.raster.terrain.plausible_dem``), slope is Horn's, computed in the
grid's UTM zone at the DEM's native ground resolution (``compute_slope_raster``), and DEM and slope
are warped onto the analysis grid (``tasks.core.grid.make_grid``) with the band contract's resampling
(``tasks.raster.align.warped_layer``). Then, over the ROI's pixels where both DEMs have data:

- the elevation difference ``B - A`` (metres) and the slope difference ``B - A`` (degrees);
- for each: count, bias (mean), MAE, RMSE, median, p95 of ``|d|``; overall and by the slope class of
  A (the classes are passed in: the CLI gives ``tasks.vector.classes.SLOPE_CLASSES_DEG``);
- the ROI's pixels where A, B or either has no data (they are left out, and counted).

Vertical datums are recorded where the product is known (``STAC_DEM_PRODUCTS``) and **not
corrected**: AW3D30 heights are over EGM96, Copernicus DEM heights over EGM2008, so an AW3D30 vs
GLO-30 elevation bias includes the EGM2008 - EGM96 geoid difference at the site, which is not
measured here (no geoid grid is installed). Slope is unaffected by a constant offset. Both AW3D30 and
the Copernicus DEM are surface models (canopy and buildings included), so neither is bare earth.

The statistics (:func:`difference_stats`, :func:`compare_terrain`) are pure numpy;
:func:`compare_dem_files` does the I/O. ``docs/dem_comparison.md`` has the commands.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
import rasterio.warp
import shapely
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from tasks.core.bands import get_band
from tasks.core.errors import InputError
from tasks.core.grid import AnalysisGrid, check_bbox, make_grid, roi_in_grid_crs
from tasks.raster.align import DEFAULT_CHUNK_PX, roi_mask, warped_layer
from tasks.raster.terrain import compute_slope_raster, plausible_dem
from tasks.sources.catalog import STAC_DEM_PRODUCTS
from tasks.sources.coverage import FULL_COVER, raster_footprint

log = logging.getLogger(__name__)

STAT_KEYS = ("count", "bias", "mae", "rmse", "median", "p95_abs")
DATUM_NOTE = ("vertical datums are not converted: an elevation bias between DEMs on different geoids "
              "(AW3D30: EGM96, Copernicus DEM: EGM2008) includes the geoid difference at the site, "
              "which this tool does not measure; slope is unaffected by a constant offset")
SURFACE_NOTE = ("AW3D30 and the Copernicus DEM are both surface models (DSM: canopy and buildings "
                "included), not bare earth")


class SlopeClass(Protocol):
    """A class of slope values, ``lower <= value < upper`` (``upper`` None: no bound), such as
    ``tasks.vector.classes.ValueClass``."""

    name: str
    lower: float
    upper: float | None


# ------------------------------------------------------------------------------------------------
# pure statistics


def difference_stats(d: np.ndarray) -> dict[str, float | int | None]:
    """Error statistics of differences ``d`` (any shape; NaN values are left out).

    Returns:
        ``count``; ``bias`` (mean of d), ``mae`` (mean of |d|), ``rmse``, ``median`` (of d) and
        ``p95_abs`` (95th percentile of |d|, linear interpolation); None for all but ``count``
        when there is no value.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"count": 0, **{k: None for k in STAT_KEYS[1:]}}
    ad = np.abs(d)
    return {"count": int(d.size), "bias": float(d.mean()), "mae": float(ad.mean()),
            "rmse": float(math.sqrt(float(np.mean(d * d)))), "median": float(np.median(d)),
            "p95_abs": float(np.percentile(ad, 95))}


def class_mask(values: np.ndarray, cls: SlopeClass) -> np.ndarray:
    """``lower <= values < upper`` (NaN is in no class)."""
    with np.errstate(invalid="ignore"):
        inside = values >= cls.lower
        if cls.upper is not None:
            inside &= values < cls.upper
    return inside


def compare_terrain(dem_a: np.ndarray, dem_b: np.ndarray, slope_a: np.ndarray, slope_b: np.ndarray,
                    slope_classes: Sequence[SlopeClass], inside: np.ndarray | None = None) -> dict[str, Any]:
    """Elevation and slope differences (B - A) over the pixels where both have data.

    Args:
        dem_a, dem_b: (H, W) elevations in metres on one grid; NaN = no data.
        slope_a, slope_b: (H, W) slopes in degrees on the same grid; NaN = no data.
        slope_classes: classes of A's slope for the per-class statistics.
        inside: (H, W) bool, the ROI's pixels (default: all).

    Returns:
        ``pixels``: ``in_roi``, ``compared``, ``no_data_a``, ``no_data_b`` (pixels of the ROI where A,
        respectively B, lacks elevation or slope) and ``excluded`` (either lacks them);
        ``elevation_m`` and ``slope_deg``: the :func:`difference_stats` of B - A, ``overall`` and
        ``by_slope_class_of_a`` (class name -> stats, in the classes' order).

    Raises:
        InputError: the arrays differ in shape.
    """
    shapes = {np.shape(x) for x in (dem_a, dem_b, slope_a, slope_b)}
    if inside is not None:
        shapes.add(np.shape(inside))
    if len(shapes) != 1:
        raise InputError(f"DEM comparison needs arrays of one shape, got {sorted(shapes)}")
    inside = np.ones(np.shape(dem_a), bool) if inside is None else np.asarray(inside, bool)
    ok_a = np.isfinite(dem_a) & np.isfinite(slope_a)
    ok_b = np.isfinite(dem_b) & np.isfinite(slope_b)
    both = inside & ok_a & ok_b
    pixels = {"in_roi": int(inside.sum()), "compared": int(both.sum()),
              "no_data_a": int((inside & ~ok_a).sum()), "no_data_b": int((inside & ~ok_b).sum()),
              "excluded": int((inside & ~(ok_a & ok_b)).sum())}
    sa = np.where(both, slope_a, np.nan)
    out: dict[str, Any] = {"pixels": pixels}
    for key, a, b in (("elevation_m", dem_a, dem_b), ("slope_deg", slope_a, slope_b)):
        d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
        out[key] = {"overall": difference_stats(d[both]),
                    "by_slope_class_of_a": {c.name: difference_stats(d[both & class_mask(sa, c)])
                                            for c in slope_classes}}
    return out


# ------------------------------------------------------------------------------------------------
# I/O


@dataclass(frozen=True)
class DemComparison:
    """The report (JSON-ready) and the arrays it was computed from, (H, W) on ``grid``."""

    report: dict[str, Any]
    grid: AnalysisGrid
    dem_a: np.ndarray
    dem_b: np.ndarray
    slope_a: np.ndarray
    slope_b: np.ndarray
    inside: np.ndarray


def dem_product(path: str | Path) -> dict[str, Any]:
    """Which DEM product a file holds, and its vertical datum, from the file's own metadata.

    ``landslide dem`` tags its output with ``dem_collection``; otherwise the product's file naming
    is used (``AW3D30`` for ALOS World 3D; ``Copernicus_DSM_COG_10``/``_30`` for GLO-30/GLO-90).

    Returns:
        ``collection``, ``product``, ``vertical_datum`` and ``identified_from`` (``file tag``,
        ``file name`` or ``unknown``; then the datum is ``unknown``).
    """
    with rasterio.open(path) as src:
        tagged = src.tags().get("dem_collection") or None
    name = Path(path).name
    collection, how = (tagged, "file tag") if tagged in STAC_DEM_PRODUCTS else (None, "unknown")
    if collection is None:
        for pattern, coll in (("AW3D30", "alos-dem"), ("Copernicus_DSM_COG_10", "cop-dem-glo-30"),
                              ("Copernicus_DSM_COG_30", "cop-dem-glo-90")):
            if pattern.lower() in name.lower():
                collection, how = coll, "file name"
                break
    if collection is None:
        return {"collection": None, "product": None, "vertical_datum": "unknown",
                "identified_from": "unknown"}
    prod = STAC_DEM_PRODUCTS[collection]
    return {"collection": collection, "product": prod.name, "vertical_datum": prod.vertical_datum,
            "identified_from": how}


def roi_from(region_bbox: Sequence[float] | None, bbox: Sequence[float] | None,
             region_name: str | None = None) -> shapely.Geometry:
    """The ROI (EPSG:4326): the region's bbox, cut to ``bbox`` when both are given.

    Raises:
        InputError: neither is given, or they do not intersect.
    """
    parts = [shapely.box(*check_bbox(b)) for b in (region_bbox, bbox) if b is not None]
    if not parts:
        raise InputError("give the area to compare: --region NAME (with a bbox in the catalog) or --bbox W,S,E,N")
    roi = parts[0] if len(parts) == 1 else parts[0].intersection(parts[1])
    if roi.is_empty or roi.area == 0:
        raise InputError(f"--bbox {','.join(f'{v:g}' for v in bbox)} does not intersect region "
                         f"{region_name!r} (bbox {','.join(f'{v:g}' for v in region_bbox)})")
    return roi


def _fmt_extent(b: Sequence[float]) -> str:
    return f"lon {b[0]:.4f}..{b[2]:.4f}, lat {b[1]:.4f}..{b[3]:.4f}"


def _check_dem(label: str, path: Path, roi_grid: shapely.Geometry, grid: AnalysisGrid,
               roi_lonlat: shapely.Geometry) -> dict[str, Any]:
    """Readable, georeferenced, and covering some of the ROI: its record for the report."""
    if not path.exists():
        raise InputError(f"DEM {label} {path} does not exist")
    try:
        with rasterio.open(path) as src:
            crs, count = src.crs, src.count
            extent = tuple(rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds,
                                                          densify_pts=21)) if src.crs else None
    except RasterioIOError as exc:
        raise InputError(f"DEM {label} {path} is not a raster GDAL can read "
                         f"({str(exc).splitlines()[0]})") from None
    if crs is None:
        raise InputError(f"DEM {label} {path} has no CRS; set one, e.g. "
                         f"`gdal_edit.py -a_srs EPSG:4326 {path}`")
    if count < 1:
        raise InputError(f"DEM {label} {path} has no band")
    covered = raster_footprint(str(path), grid.crs).intersection(roi_grid).area / roi_grid.area
    if covered <= 0:
        raise InputError(f"DEM {label} ({path}) does not cover the ROI: it spans {_fmt_extent(extent)}, "
                         f"the ROI {_fmt_extent(roi_lonlat.bounds)}; choose a --bbox inside it")
    if covered < FULL_COVER:
        log.warning("DEM %s (%s) covers %.1f %% of the ROI; the rest is left out and counted as no data",
                    label, path, 100 * covered)
    return {"path": str(path), **dem_product(path), "extent_lonlat": [round(v, 6) for v in extent],
            "covered_fraction": round(covered, 4)}


def warp_terrain(path: str | Path, grid: AnalysisGrid, work_dir: str | Path,
                 nodata: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(DEM, slope) of a DEM file on ``grid``, as a scan computes its DEM and SLOPE channels.

    Returns:
        two (H, W) float32 arrays, metres and degrees, NaN = no data.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    dem_path, nodata = plausible_dem(path, nodata, work_dir)
    slope_path = compute_slope_raster(dem_path, work_dir / "slope_metric.tif", dst_crs=grid.crs,
                                      nodata=nodata)
    chunk = max(DEFAULT_CHUNK_PX, grid.width, grid.height)
    dem = warped_layer(dem_path, grid, Resampling[get_band("DEM").resampling], nodata, chunk)
    slope = warped_layer(str(slope_path), grid, Resampling[get_band("SLOPE").resampling], None, chunk)
    return (np.asarray(dem.values[0], np.float32), np.asarray(slope.values[0], np.float32))


def compare_dem_files(path_a: str | Path, path_b: str | Path, roi_lonlat: shapely.Geometry,
                      slope_classes: Sequence[SlopeClass], res_m: float = 10.0,
                      work_dir: str | Path | None = None) -> DemComparison:
    """Compare DEM B against DEM A over ``roi_lonlat`` on the analysis grid at ``res_m``.

    Args:
        path_a, path_b: single-band elevation rasters in metres (any CRS GDAL knows; nodata: the
            file's, NaN, and impossible elevations as in a scan).
        roi_lonlat: the ROI in EPSG:4326.
        slope_classes: classes of A's slope for the per-class statistics.
        res_m: the analysis grid's pixel size.
        work_dir: where the metric slope rasters go (default: a temporary folder, removed).

    Returns:
        the report (``a``, ``b``, ``roi_lonlat``, ``grid``, ``pixels``, ``elevation_m``,
        ``slope_deg``, ``notes``) and the arrays.

    Raises:
        InputError: a DEM is missing, unreadable or without a CRS; a DEM covers none of the ROI
            (its extent named); no pixel of the ROI has data in both.
    """
    if not (math.isfinite(res_m) and res_m > 0):
        raise InputError(f"--res-m must be a positive number of metres, got {res_m}")
    grid = make_grid(roi_lonlat, res_m)
    roi_grid = roi_in_grid_crs(roi_lonlat, grid)
    rec_a = _check_dem("A", Path(path_a), roi_grid, grid, roi_lonlat)
    rec_b = _check_dem("B", Path(path_b), roi_grid, grid, roi_lonlat)
    with tempfile.TemporaryDirectory(prefix="dem_compare_") as tmp:
        base = Path(work_dir) if work_dir is not None else Path(tmp)
        dem_a, slope_a = warp_terrain(path_a, grid, base / "a")
        dem_b, slope_b = warp_terrain(path_b, grid, base / "b")
    inside = roi_mask(roi_grid, grid).astype(bool)
    stats = compare_terrain(dem_a, dem_b, slope_a, slope_b, slope_classes, inside)
    px = stats["pixels"]
    if px["compared"] == 0:
        raise InputError(f"no common valid pixels: of the ROI's {px['in_roi']} pixels, DEM A ({path_a}) "
                         f"has no data in {px['no_data_a']} and DEM B ({path_b}) in {px['no_data_b']}")
    notes = [SURFACE_NOTE]
    datums = {k: r["vertical_datum"] for k, r in (("A", rec_a), ("B", rec_b))}
    unknown = [k for k, v in datums.items() if v == "unknown"]
    if unknown:
        notes.insert(0, f"the vertical datum of {' and '.join(unknown)} is not known from the file "
                        f"(no dem_collection tag, no product file name); " + DATUM_NOTE)
    elif datums["A"] != datums["B"]:
        notes.insert(0, f"A is over {datums['A']}, B over {datums['B']}: " + DATUM_NOTE)
    report = {"a": rec_a, "b": rec_b, "roi_lonlat": [round(v, 6) for v in roi_lonlat.bounds],
              "grid": grid.to_dict(),
              "method": ("both DEMs on the scan's analysis grid: plausible elevations, Horn slope in the "
                         "grid's UTM zone at the DEM's native resolution, bilinear warp; d = B - A"),
              "slope_classes_deg": [{"name": c.name, "lower": c.lower, "upper": c.upper}
                                    for c in slope_classes],
              **stats, "notes": notes}
    log.info("DEM comparison over %d px: elevation bias %.2f m, RMSE %.2f m; slope bias %.2f deg",
             px["compared"], stats["elevation_m"]["overall"]["bias"],
             stats["elevation_m"]["overall"]["rmse"], stats["slope_deg"]["overall"]["bias"])
    return DemComparison(report, grid, dem_a, dem_b, slope_a, slope_b, inside)


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the inputs, the pixel counts and one table per quantity."""
    def fmt(v: Any) -> str:
        return "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.3f}")

    lines = ["# DEM comparison (B - A)", ""]
    for key in ("a", "b"):
        r = report[key]
        lines.append(f"- **{key.upper()}**: `{r['path']}`: {r['product'] or 'product unknown'}, vertical "
                     f"datum {r['vertical_datum']} (from {r['identified_from']}), covers "
                     f"{100 * r['covered_fraction']:.1f} % of the ROI")
    g = report["grid"]
    px = report["pixels"]
    lines += [f"- ROI {_fmt_extent(report['roi_lonlat'])}; grid {g['crs']} {g['res_m']:g} m, "
              f"{g['width']} x {g['height']} px",
              f"- pixels in the ROI {px['in_roi']}, compared {px['compared']}, excluded {px['excluded']} "
              f"(no data in A {px['no_data_a']}, in B {px['no_data_b']})", ""]
    for key, title in (("elevation_m", "Elevation difference (m)"), ("slope_deg", "Slope difference (deg)")):
        lines += [f"## {title}", "", "| slope class of A | " + " | ".join(STAT_KEYS) + " |",
                  "|---" * (len(STAT_KEYS) + 1) + "|"]
        rows = [("all", report[key]["overall"]), *report[key]["by_slope_class_of_a"].items()]
        for name, s in rows:
            lines.append(f"| {name} | " + " | ".join(fmt(s[k]) for k in STAT_KEYS) + " |")
        lines.append("")
    lines += [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"
