"""A finished run folder as a web map shows it: the run list, polygons and footprint as GeoJSON in
EPSG:4326, the quicklook and a coloured probability layer as PNG images with their corners in
lon/lat, the summary figures, and the view that fits the run on a canvas.

Used by the web app (``webapp/``); no Streamlit here, so every function is testable on its own.
The colours are the ones the GeoPackage's and the COGs' QGIS styles use
(``tasks.vector.styles.PROB_CLASSES``, ``tasks.run.qgis_project.PROBABILITY_RAMP``), so a polygon
looks the same in QGIS, in ``report.html`` and in the app.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import InputError
from tasks.run.qgis_project import PROBABILITY_RAMP
from tasks.vector.styles import PROB_CLASSES, PROB_FIELD, REJECTED_CLASS, Rgba
from tasks.vector.vectorize import FOOTPRINT_LAYER, LANDSLIDES_LAYER

MANIFEST_NAME = "manifest.json"
GPKG_NAME = "landslides.gpkg"
PROBABILITY_NAME = "probability.tif"
QUICKLOOK_NAME = "quicklook.png"
PROBABILITY_VIEW_MAX_PX = 1024  # long side of the probability image sent to the browser
WEB_TILE_PX = 512  # deck.gl's world width in pixels at zoom 0
MAX_FIT_ZOOM = 17.0


@dataclass(frozen=True)
class RunEntry:
    """One finished run folder (it holds a ``manifest.json``)."""

    path: Path
    run_id: str
    created: str  # UTC ISO time the run finished, from the manifest
    where: str  # region or source, and the ROI
    polygons: int
    landslide_area_m2: float
    status: str  # the footprint status: analysed, partly analysed, nothing analysed


def _where(manifest: dict[str, Any]) -> str:
    request = manifest.get("request") or {}
    inputs = manifest.get("inputs") or {}
    name = request.get("region") or inputs.get("source") or request.get("source") or "?"
    bbox = request.get("bbox")
    return f"{name} bbox {','.join(f'{v:g}' for v in bbox)}" if bbox else str(name)


def list_runs(runs_dir: str | Path) -> list[RunEntry]:
    """The finished runs directly under ``runs_dir`` (newest first); a folder without a readable
    manifest (a run in progress, an unrelated folder) is not a run and is left out."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    entries = []
    for manifest_path in root.glob(f"*/{MANIFEST_NAME}"):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        counts = manifest.get("counts") or {}
        entries.append(RunEntry(
            path=manifest_path.parent, run_id=str(manifest.get("run_id", manifest_path.parent.name)),
            created=str(manifest.get("finished_at") or manifest.get("created") or ""),
            where=_where(manifest), polygons=int(counts.get("polygons", 0)),
            landslide_area_m2=float(counts.get("landslide_area_m2", 0.0)),
            status=str(counts.get("footprint_status", ""))))
    return sorted(entries, key=lambda e: (e.created, e.run_id), reverse=True)


# ---------------------------------------------------------------------------------------------
# colours (pure)


def prob_class_colour(mean_prob: float) -> tuple[Rgba, Rgba]:
    """(fill, outline) RGBA of a polygon's mean probability: the class of ``PROB_CLASSES`` it falls
    in (the GeoPackage's default QGIS style)."""
    value = float(mean_prob) if mean_prob is not None and math.isfinite(mean_prob) else 0.0
    for c in PROB_CLASSES:
        if c.lower <= value < c.upper:
            return c.fill, c.outline
    return PROB_CLASSES[-1].fill, PROB_CLASSES[-1].outline


# review states on the map: confirmed green, rejected grey (as the inventory's QGIS style draws
# them), unreviewed by probability class
CONFIRMED_COLOURS: tuple[Rgba, Rgba] = ((49, 163, 84, 150), (0, 104, 55, 255))
REJECTED_COLOURS: tuple[Rgba, Rgba] = (REJECTED_CLASS.fill, REJECTED_CLASS.outline)


def review_colour(review_status: str | None, mean_prob: float | None) -> tuple[Rgba, Rgba]:
    """(fill, outline) of a polygon by its review state (pure)."""
    if review_status == "confirmed":
        return CONFIRMED_COLOURS
    if review_status == "rejected":
        return REJECTED_COLOURS
    return prob_class_colour(mean_prob)


def polygons_geojson(gdf, colour_by: str = "probability") -> dict[str, Any]:
    """A GeoDataFrame (EPSG:4326) as a GeoJSON FeatureCollection with its attributes and ``fill`` /
    ``line`` colours (RGBA lists): by probability class, or by review state (``colour_by="review"``)."""
    features = []
    if len(gdf):
        props = json.loads(gdf.drop(columns=gdf.geometry.name).to_json(date_format="iso", orient="records"))
        for geom, p in zip(gdf.geometry, props):
            if colour_by == "review":
                fill, line = review_colour(p.get("review_status"), p.get(PROB_FIELD))
            else:
                fill, line = prob_class_colour(p.get(PROB_FIELD))
            p["fill"], p["line"] = list(fill), list(line)
            features.append({"type": "Feature", "geometry": geom.__geo_interface__, "properties": p})
    return {"type": "FeatureCollection", "features": features}


def read_polygons_lonlat(gpkg_path: str | Path):
    """The ``landslides`` layer of a run's or an inventory's GeoPackage in EPSG:4326, and the lon/lat
    bounds of it (or of the footprint / scans when it is empty)."""
    import geopandas as gpd
    import pyogrio

    layers = {name for name, _ in pyogrio.list_layers(gpkg_path)}
    polygons = gpd.read_file(gpkg_path, layer=LANDSLIDES_LAYER, engine="pyogrio").to_crs("EPSG:4326")
    extent = polygons
    if not len(polygons):
        for name in (FOOTPRINT_LAYER, "scans"):
            if name in layers:
                extent = gpd.read_file(gpkg_path, layer=name, engine="pyogrio").to_crs("EPSG:4326")
                break
    bounds = tuple(float(v) for v in extent.total_bounds) if len(extent) else None
    return polygons, bounds


def probability_rgba(probability_u8: np.ndarray, ramp=PROBABILITY_RAMP) -> np.ndarray:
    """RGBA image (H, W, 4) uint8 of a probability COG's values (p = value / 254, 255 = not
    analysed -> transparent), linearly interpolated between the ramp's stops."""
    values = np.asarray(probability_u8)
    p = values.astype(np.float32) / 254.0
    stops = np.array([s.value for s in ramp], dtype=np.float32)
    colours = np.array([s.colour for s in ramp], dtype=np.float32)
    out = np.stack([np.interp(p, stops, colours[:, k]) for k in range(4)], axis=-1)
    out = np.rint(out).astype(np.uint8)
    out[values == 255] = 0
    return out


def fit_view(bounds_lonlat: tuple[float, float, float, float], width_px: int, height_px: int,
             margin: float = 0.05) -> dict[str, float]:
    """``{longitude, latitude, zoom}`` of a Web Mercator view (deck.gl's, 512 px world at zoom 0)
    that shows ``bounds_lonlat`` (west, south, east, north) whole on a ``width_px`` x ``height_px``
    canvas, with ``margin`` of the canvas left free on each side."""
    west, south, east, north = bounds_lonlat

    def merc_y(lat: float) -> float:  # 0..1 from the north edge of the world
        s = math.sin(math.radians(lat))
        return 0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)

    dx = max((east - west) / 360.0, 1e-9)
    dy = max(merc_y(south) - merc_y(north), 1e-9)
    usable = 1.0 - 2 * margin
    zoom = math.log2(min(width_px * usable / (WEB_TILE_PX * dx), height_px * usable / (WEB_TILE_PX * dy)))
    centre_y = (merc_y(south) + merc_y(north)) / 2
    centre_lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * centre_y))))
    return {"longitude": (west + east) / 2, "latitude": centre_lat, "zoom": min(zoom, MAX_FIT_ZOOM)}


def canvas_to_lonlat(x_px: np.ndarray, y_px: np.ndarray, view: dict[str, float], width_px: int,
                     height_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of canvas pixels (x right, y down, pixel centres at +0.5) under ``view``: the inverse
    of what deck.gl draws, for checking a screenshot against the run's rasters."""
    scale = WEB_TILE_PX * 2.0 ** view["zoom"]
    s = math.sin(math.radians(view["latitude"]))
    cy = (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * scale
    cx = (view["longitude"] / 360.0 + 0.5) * scale
    wx = cx + (np.asarray(x_px, dtype=float) - width_px / 2)
    wy = cy + (np.asarray(y_px, dtype=float) - height_px / 2)
    lon = wx / scale * 360.0 - 180.0
    lat = np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * wy / scale))))
    return lon, lat


def lonlat_to_canvas(lon: np.ndarray, lat: np.ndarray, view: dict[str, float], width_px: int,
                     height_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvas pixel coordinates (x right, y down) of lon/lat under ``view``: what deck.gl draws
    (the inverse of :func:`canvas_to_lonlat`)."""
    scale = WEB_TILE_PX * 2.0 ** view["zoom"]

    def world(lo, la):
        s = np.sin(np.radians(la))
        return (np.asarray(lo, dtype=float) / 360.0 + 0.5) * scale, \
            (0.5 - np.log((1 + s) / (1 - s)) / (4 * np.pi)) * scale

    cx, cy = world(view["longitude"], view["latitude"])
    wx, wy = world(lon, lat)
    return wx - cx + width_px / 2, wy - cy + height_px / 2


# ---------------------------------------------------------------------------------------------
# reading a run


@dataclass
class RunView:
    """What the map and the table of one run need."""

    path: Path
    manifest: dict[str, Any]
    polygons: Any  # GeoDataFrame in EPSG:4326 (the GeoPackage's landslides layer)
    footprint_geojson: dict[str, Any]
    corners_lonlat: list[list[float]]  # the grid's corners: bottom-left, top-left, top-right, bottom-right
    bounds_lonlat: tuple[float, float, float, float]
    quicklook_png: bytes | None
    probability_png: bytes | None
    summary: dict[str, Any] = field(default_factory=dict)

    def polygons_geojson(self) -> dict[str, Any]:
        """The polygons as a GeoJSON FeatureCollection with their attributes and ``fill``/``line``
        colours (RGBA lists) from the probability class."""
        return polygons_geojson(self.polygons)


def _png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _read_probability(path: Path) -> tuple[np.ndarray, Any, Any, tuple[int, int]]:
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        scale = max(src.width, src.height) / PROBABILITY_VIEW_MAX_PX
        shape = (src.height, src.width) if scale <= 1 else (max(1, round(src.height / scale)),
                                                            max(1, round(src.width / scale)))
        values = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        return values, src.crs, src.transform, (src.height, src.width)


def read_run_view(run_dir: str | Path) -> RunView:
    """Read a finished run folder for display.

    Raises:
        InputError: the folder holds no finished run (no manifest or GeoPackage).
    """
    import geopandas as gpd
    from pyproj import Transformer

    from tasks.run.report import summarize

    root = Path(run_dir)
    manifest_path, gpkg = root / MANIFEST_NAME, root / GPKG_NAME
    if not manifest_path.is_file() or not gpkg.is_file():
        raise InputError(f"{root} holds no finished run (no {MANIFEST_NAME} or {GPKG_NAME})")
    manifest = json.loads(manifest_path.read_text())
    landslides = gpd.read_file(gpkg, layer=LANDSLIDES_LAYER, engine="pyogrio")
    footprint = gpd.read_file(gpkg, layer=FOOTPRINT_LAYER, engine="pyogrio")
    summary = summarize(landslides)
    probability_png = None
    prob_path = root / PROBABILITY_NAME
    if prob_path.is_file():
        values, crs, transform, (height, width) = _read_probability(prob_path)
        probability_png = _png(probability_rgba(values))
    else:  # a run always writes it; keep the map usable if someone removed it
        crs, transform = landslides.crs, None
    if transform is not None:
        xs = [transform.c, transform.c, transform.c + transform.a * width, transform.c + transform.a * width]
        ys = [transform.f + transform.e * height, transform.f, transform.f, transform.f + transform.e * height]
    else:
        minx, miny, maxx, maxy = footprint.total_bounds
        xs, ys = [minx, minx, maxx, maxx], [miny, maxy, maxy, miny]
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lons, lats = to_lonlat.transform(xs, ys)
    corners = [[float(lo), float(la)] for lo, la in zip(lons, lats)]
    bounds = (min(lons), min(lats), max(lons), max(lats))
    quicklook = root / QUICKLOOK_NAME
    return RunView(
        path=root, manifest=manifest, polygons=landslides.to_crs("EPSG:4326"),
        footprint_geojson=json.loads(footprint.to_crs("EPSG:4326").to_json()),
        corners_lonlat=corners, bounds_lonlat=tuple(float(v) for v in bounds),
        quicklook_png=quicklook.read_bytes() if quicklook.is_file() else None,
        probability_png=probability_png, summary=summary)


def zip_run(run_dir: str | Path) -> bytes:
    """The run folder's published files as one zip (the staging and work folders left out)."""
    root = Path(run_dir)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                zf.write(path, arcname=f"{root.name}/{rel.as_posix()}")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# picking a bbox on the map: two clicks on a grid of cells


def pick_grid(bounds_lonlat: tuple[float, float, float, float], cells_across: int = 24) -> dict[str, Any]:
    """A GeoJSON grid of square-ish cells over ``bounds_lonlat`` (about ``cells_across`` cells along
    the longer side), each with its ``cell`` id and ``bbox``; clicking two cells picks the bbox that
    spans them (:func:`span_bbox`). Pure."""
    west, south, east, north = bounds_lonlat
    mid_lat = math.radians((south + north) / 2)
    width_m = (east - west) * 111_320 * math.cos(mid_lat)
    height_m = (north - south) * 110_574
    cell_m = max(width_m, height_m) / cells_across
    nx, ny = max(1, round(width_m / cell_m)), max(1, round(height_m / cell_m))
    dx, dy = (east - west) / nx, (north - south) / ny
    features = []
    for j in range(ny):
        for i in range(nx):
            w, s = west + i * dx, north - (j + 1) * dy
            e, n = w + dx, s + dy
            ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
            features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                             "properties": {"cell": j * nx + i, "bbox": [round(v, 6) for v in (w, s, e, n)]}})
    return {"type": "FeatureCollection", "features": features}


def span_bbox(first: list[float], second: list[float]) -> tuple[float, float, float, float]:
    """The bbox spanning two cells' bboxes (west, south, east, north). Pure."""
    return (min(first[0], second[0]), min(first[1], second[1]), max(first[2], second[2]),
            max(first[3], second[3]))


def bbox_text(bbox: tuple[float, float, float, float] | list[float]) -> str:
    """``west,south,east,north`` as the CLI's ``--bbox`` takes it (6 decimals, about 0.1 m)."""
    return ",".join(f"{v:.6f}".rstrip("0").rstrip(".") for v in bbox)
