"""Vectorize the cleaned mask: one Polygon per landslide with attributes, plus the analysed footprint.

docs/contracts.md section 3 fixes the schema of ``landslides.gpkg``: layer ``landslides`` (Polygon, the
analysis CRS, columns :data:`LANDSLIDE_COLUMNS`) and layer ``footprint`` (MultiPolygon: the area that
was actually analysed; outside it, no polygon means "not looked at", not "no landslide").

A landslide is a 4-connected set of pixels (see tasks.vector.clean): the labelling here and
``rasterio.features.shapes(connectivity=4)`` agree, so each object becomes exactly one valid
Polygon (holes kept) and ``landslide_id`` k is the k-th object in raster order of its first pixel.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Mapping

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer
from rasterio.features import shapes
from shapely.geometry import MultiPolygon, Polygon, shape

from tasks.core import defaults
from tasks.core.errors import InputError
from tasks.core.files import atomic_write
from tasks.core.tiling import iter_blocks
from tasks.raster.terrain import aspect_deg, aspect_deg_at
from tasks.vector.classes import confidence_class
from tasks.vector.clean import CONNECTIVITY, label_objects
from tasks.vector.geometry import GeometryParams, simplify_coverage, smooth_coverage
from tasks.vector.geopackage import GPKG_DATASET_OPTIONS, GPKG_LAYER_OPTIONS, document_layers
from tasks.vector.styles import run_layer_docs

log = logging.getLogger(__name__)

# (name, type) of the landslides layer's attribute columns, in order. Types: "int" -> int64
# (GPKG INTEGER), "real" -> float64, "text" -> str, "datetime" -> timezone-aware UTC datetime.
LANDSLIDE_COLUMNS: list[tuple[str, str]] = [
    ("landslide_id", "int"),
    ("area_m2", "real"),
    ("perimeter_m", "real"),
    ("area_px_m2", "real"),
    ("length_m", "real"),
    ("width_m", "real"),
    ("elongation", "real"),
    ("mean_prob", "real"),
    ("max_prob", "real"),
    ("confidence_class", "text"),
    ("uncertainty", "real"),
    ("mean_slope_deg", "real"),
    ("max_slope_deg", "real"),
    ("aspect_deg", "real"),
    ("mean_elev_m", "real"),
    ("relief_m", "real"),
    ("dem", "text"),
    ("centroid_lon", "real"),
    ("centroid_lat", "real"),
    ("scene_id", "text"),
    ("acquired", "datetime"),
    ("acquired_note", "text"),
    ("model", "text"),
    ("run_id", "text"),
    ("detected_at", "datetime"),
]
LANDSLIDE_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in LANDSLIDE_COLUMNS)
# event mode (--event-date) appends the change evidence to the landslides layer
EVENT_COLUMNS: list[tuple[str, str]] = [
    ("pre_scene_id", "text"),  # the pre-event scene
    ("change_index", "text"),  # which index mean_change is of (e.g. redness, post minus pre)
    ("mean_change", "real"),  # the polygon's mean pre-to-post change of that index
]
EVENT_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in EVENT_COLUMNS)
STATIC_ATTRS: tuple[str, ...] = ("scene_id", "acquired", "model", "run_id", "detected_at")
# optional static attributes (None when not given)
OPTIONAL_STATIC_ATTRS: tuple[str, ...] = ("acquired_note", "dem")
LANDSLIDES_LAYER = "landslides"
FOOTPRINT_LAYER = "footprint"
STATUS_ANALYSED = "analysed"
STATUS_NO_VALID = "no valid data: no pixel of the ROI has data in every input layer"
STATUS_ALL_CLOUD = "no valid data: every pixel with data in all input layers was cloud-masked"

_PANDAS_DTYPES = {"int": "int64", "real": "float64", "text": "object",
                  "datetime": "datetime64[ns, UTC]"}


def _to_utc(value: Any, name: str, allow_none: bool) -> pd.Timestamp:
    """A timezone-aware datetime (or ISO 8601 string with an offset) as a UTC Timestamp."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        if allow_none:
            return pd.NaT
        raise InputError(f"{name} is required (a timezone-aware UTC datetime)")
    if not isinstance(value, (dt.datetime, pd.Timestamp, str, np.datetime64)):
        raise InputError(f"{name} must be a timezone-aware datetime, got {type(value).__name__}")
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{name}={value!r} is not a datetime ({exc})") from None
    if ts.tzinfo is None:
        raise InputError(f"{name}={value!r} has no timezone; pass an aware datetime, e.g. "
                         "datetime(2018, 9, 7, tzinfo=timezone.utc) or '2018-09-07T01:30:00Z'")
    return ts.tz_convert("UTC")


def _check_static_attrs(static_attrs: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(static_attrs, Mapping):
        raise InputError(f"static_attrs must be a dict with keys {', '.join(STATIC_ATTRS)}")
    missing = [k for k in STATIC_ATTRS if k not in static_attrs]
    extra = sorted(set(static_attrs) - set(STATIC_ATTRS) - set(OPTIONAL_STATIC_ATTRS))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(extra)}"] if extra else [])
        raise InputError(f"static_attrs: {'; '.join(parts)}; expected exactly "
                         f"{', '.join(STATIC_ATTRS)}")
    out: dict[str, Any] = {}
    for key in ("scene_id", "model", "run_id", "acquired_note", "dem"):
        v = static_attrs.get(key)
        if v is not None and not isinstance(v, str):
            raise InputError(f"static_attrs[{key!r}] must be text, got {type(v).__name__}")
        out[key] = v
    out["acquired"] = _to_utc(static_attrs["acquired"], "acquired", allow_none=True)
    out["detected_at"] = _to_utc(static_attrs["detected_at"], "detected_at", allow_none=False)
    if out["acquired"] is not pd.NaT:
        out["acquired_note"] = None  # the note only explains a missing date
    return out


def acquired_note(acquired_range) -> str:
    """The ``acquired_note`` of a polygon without a scene date: the composite's date range
    (``inputs.acquired_range`` of the plan) when known."""
    if acquired_range and all(acquired_range):
        return f"composite {acquired_range[0]}..{acquired_range[1]}, no scene date"
    return "no scene date"


def _check_layer(arr: np.ndarray | None, name: str, shape2d: tuple[int, int]) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.shape != shape2d:
        raise InputError(f"{name} has shape {arr.shape}; expected the mask's shape {shape2d}")
    return arr.astype(np.float64, copy=False)


def _check_crs(crs: Any) -> CRS:
    if crs is None:
        raise InputError("crs is required (the analysis grid's CRS, e.g. 'EPSG:32654')")
    try:
        return CRS.from_user_input(crs)
    except Exception as exc:  # noqa: BLE001 - pyproj raises CRSError or TypeError
        raise InputError(f"crs {crs!r} is not a CRS pyproj understands ({exc})") from None


def _empty_landslides(crs: CRS) -> gpd.GeoDataFrame:
    data = {name: pd.Series([], dtype=_PANDAS_DTYPES[kind]) for name, kind in LANDSLIDE_COLUMNS}
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def _per_label_mean(values: np.ndarray | None, labels: np.ndarray, n: int) -> np.ndarray:
    """NaN-aware mean of ``values`` over each label 1..n (NaN where a label has no finite value)."""
    if values is None:
        return np.full(n, np.nan)
    sel = labels > 0
    lab, v = labels[sel], values[sel]
    ok = np.isfinite(v)
    sums = np.bincount(lab[ok], weights=v[ok], minlength=n + 1)[1:]
    counts = np.bincount(lab[ok], minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _per_label_min(values: np.ndarray | None, labels: np.ndarray, n: int) -> np.ndarray:
    return -_per_label_max(None if values is None else -values, labels, n)


def _per_label_aspect(aspect: np.ndarray | None, labels: np.ndarray, n: int) -> np.ndarray:
    """Circular mean of ``aspect`` (degrees) over each label (NaN: no finite aspect)."""
    if aspect is None:
        return np.full(n, np.nan)
    rad = np.radians(aspect)
    return _circular_mean_deg(_per_label_sum(np.sin(rad), labels, n),
                              _per_label_sum(np.cos(rad), labels, n))


def _per_label_sum(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    sel = (labels > 0) & np.isfinite(values)
    return np.bincount(labels[sel], weights=values[sel], minlength=n + 1)[1:]


def _circular_mean_deg(sin_sum, cos_sum) -> np.ndarray:
    """The direction (degrees clockwise from north, [0, 360)) of the summed unit vectors; NaN when
    there are none or they cancel out (e.g. the two faces of a ridge in equal parts)."""
    s, c = np.asarray(sin_sum, dtype=np.float64), np.asarray(cos_sum, dtype=np.float64)
    deg = np.degrees(np.arctan2(s, c)) % 360.0
    deg = np.where(deg >= 360.0, 0.0, deg)
    return np.where(np.hypot(s, c) > 1e-9, deg, np.nan)


def _per_label_max(values: np.ndarray | None, labels: np.ndarray, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    sel = labels > 0
    lab, v = labels[sel], values[sel]
    ok = np.isfinite(v)
    out = np.full(n + 1, -np.inf)
    np.maximum.at(out, lab[ok], v[ok])
    out = out[1:]
    out[np.isneginf(out)] = np.nan
    return out


def _one_polygon(parts: list[Polygon], label: int) -> Polygon:
    """The single valid Polygon of a 4-connected object (shapes() gives one part; be defensive)."""
    geom = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    if not geom.is_valid:
        geom = shapely.make_valid(geom, method="structure")
    if geom.geom_type != "Polygon":
        polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon"]
        if len(polys) != 1:
            # Not reachable for 4-connected pixel sets; refuse rather than silently drop area.
            raise RuntimeError(f"object {label} vectorized to {geom.geom_type} with "
                               f"{len(polys)} polygons; expected one Polygon")
        geom = polys[0]
    return geom


def mask_to_polygons(mask: np.ndarray, transform, crs, *, prob: np.ndarray | None,
                     uncertainty: np.ndarray | None, slope_deg: np.ndarray | None,
                     elev_m: np.ndarray | None, static_attrs: Mapping[str, Any],
                     id_offset: int = 0, geometry: GeometryParams = GeometryParams()
                     ) -> gpd.GeoDataFrame:
    """One row per 4-connected object of ``mask``, with the landslides layer's attributes.

    Args:
        mask: (H, W) bool or 0/1 cleaned mask (tasks.vector.clean.clean_mask).
        transform: the grid's affine transform (north-up).
        crs: the analysis CRS (metric: areas and perimeters are in its units).
        prob: (H, W) probability; ``mean_prob``/``max_prob`` over the object's pixels (NaN-aware).
        uncertainty: (H, W) per-pixel uncertainty; ``uncertainty`` is its mean over the object.
        slope_deg: (H, W) slope; ``mean_slope_deg``. None (no DEM) gives NaN.
        elev_m: (H, W) elevation; ``mean_elev_m``, ``relief_m`` and ``aspect_deg`` (from the
            DEM's Horn gradient on this grid, tasks.raster.terrain.aspect_deg). None (no DEM)
            gives NaN.
        static_attrs: ``scene_id``, ``acquired`` (aware datetime or None when unknown), ``model``,
            ``run_id``, ``detected_at`` (aware datetime): the same for every row; stored in UTC.
            Optional: ``acquired_note`` (text, kept only where ``acquired`` is unknown) and
            ``dem`` (text: the elevation model the terrain attributes come from).
        id_offset: ``landslide_id`` is ``id_offset + 1 .. id_offset + n`` in raster order of each
            object's first pixel (row, then column).
        geometry: simplification and smoothing of the outlines (default: exact pixel outlines).

    Returns:
        GeoDataFrame with columns ``LANDSLIDE_COLUMN_NAMES`` + ``geometry`` (valid Polygons, CRS
        ``crs``); empty but fully typed when the mask is empty.

    Raises:
        InputError: shapes differ, missing CRS, or bad ``static_attrs``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be a 2-D (H, W) array, got shape {mask.shape}")
    crs = _check_crs(crs)
    attrs = _check_static_attrs(static_attrs)
    if isinstance(id_offset, bool) or not isinstance(id_offset, (int, np.integer)) or id_offset < 0:
        raise InputError(f"id_offset must be an integer >= 0, got {id_offset!r}")
    layers = {name: _check_layer(arr, name, mask.shape) for name, arr in (
        ("prob", prob), ("uncertainty", uncertainty), ("slope_deg", slope_deg), ("elev_m", elev_m))}

    labels, n = label_objects(mask)
    if n == 0:
        return _empty_landslides(crs)

    parts: dict[int, list[Polygon]] = {}
    for geom, value in shapes(labels, mask=labels > 0, connectivity=CONNECTIVITY,
                              transform=transform):
        parts.setdefault(int(value), []).append(shape(geom))
    if len(parts) != n:
        raise RuntimeError(f"shapes() returned {len(parts)} objects for {n} labels")
    geoms = [_one_polygon(parts[k], k) for k in range(1, n + 1)]
    elev = layers["elev_m"]
    aspect = None if elev is None else aspect_deg(elev, abs(transform.a), abs(transform.e))
    stats = {
        "mean_prob": _per_label_mean(layers["prob"], labels, n),
        "max_prob": _per_label_max(layers["prob"], labels, n),
        "uncertainty": _per_label_mean(layers["uncertainty"], labels, n),
        "mean_slope_deg": _per_label_mean(layers["slope_deg"], labels, n),
        "max_slope_deg": _per_label_max(layers["slope_deg"], labels, n),
        "aspect_deg": _per_label_aspect(aspect, labels, n),
        "mean_elev_m": _per_label_mean(elev, labels, n),
        "relief_m": _per_label_max(elev, labels, n) - _per_label_min(elev, labels, n),
        "px_count": np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64),
    }
    return _assemble_landslides(geoms, stats, crs, attrs, id_offset,
                                px_area_m2=abs(transform.a * transform.e), geometry=geometry)


_STAT_COLUMNS: tuple[str, ...] = ("mean_prob", "max_prob", "uncertainty", "mean_slope_deg",
                                  "max_slope_deg", "aspect_deg", "mean_elev_m", "relief_m")


def draw_polygons(geoms, geometry: GeometryParams) -> np.ndarray:
    """The exact pixel outlines ``geoms`` (the whole run's coverage) simplified and smoothed as
    ``geometry`` says (tasks.vector.geometry)."""
    out = np.asarray(geoms, dtype=object)
    if geometry.simplify_m > 0:
        out = simplify_coverage(out, geometry.simplify_m)
    if geometry.smooth_iterations > 0:
        out = smooth_coverage(out, geometry.smooth_iterations)
    return out


def _rectangle_sides(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Length and width (long and short side) of each polygon's minimum rotated rectangle."""
    if len(geoms) == 0:
        return np.zeros(0), np.zeros(0)
    # about the first polygon's first corner: UTM coordinates (~1e6 m) would cost the rotated
    # rectangle five significant digits
    origin = shapely.get_coordinates(geoms[0])[0]
    local = shapely.transform(geoms, lambda xy: xy - origin)
    coords = shapely.get_coordinates(shapely.oriented_envelope(local)).reshape(len(geoms), 5, 2)
    a = np.hypot(*(coords[:, 1] - coords[:, 0]).T)
    b = np.hypot(*(coords[:, 2] - coords[:, 1]).T)
    return np.maximum(a, b), np.minimum(a, b)


def _shape_columns(drawn: np.ndarray, crs) -> dict[str, np.ndarray]:
    """The columns measured on the written polygons ``drawn``: area, perimeter, minimum rotated
    rectangle and centroid."""
    centroids = shapely.centroid(drawn)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(shapely.get_x(centroids), shapely.get_y(centroids))
    length_m, width_m = _rectangle_sides(drawn)
    return {"area_m2": shapely.area(drawn).astype(np.float64),
            "perimeter_m": shapely.length(drawn).astype(np.float64),
            "length_m": length_m, "width_m": width_m,
            "elongation": np.divide(length_m, width_m, out=np.full(len(drawn), np.nan),
                                    where=width_m > 0),
            "centroid_lon": np.asarray(lon, dtype=np.float64),
            "centroid_lat": np.asarray(lat, dtype=np.float64)}


def draw_landslides(landslides_gdf: gpd.GeoDataFrame, geometry: GeometryParams) -> gpd.GeoDataFrame:
    """The landslides (exact pixel outlines, e.g. from :func:`vectorize_raster` with its default
    ``geometry``) with their outlines drawn as ``geometry`` says and the shape columns (area,
    perimeter, rectangle, centroid) measured again on them; every other column as it was.

    The scan draws last, so the statistics taken under each polygon after vectorizing (the
    mosaic's scene, event mode's ``mean_change``) still count exactly the mask's pixels.
    """
    if (geometry.simplify_m == 0 and geometry.smooth_iterations == 0) or not len(landslides_gdf):
        return landslides_gdf
    drawn = draw_polygons(landslides_gdf.geometry.values, geometry)
    out = landslides_gdf.copy()
    for name, values in _shape_columns(drawn, landslides_gdf.crs).items():
        out[name] = values
    out[out.geometry.name] = gpd.GeoSeries(drawn, index=out.index, crs=landslides_gdf.crs)
    log.info("drew %d landslides (%.0f m2 in total, %.0f m2 in pixels; %d vertices)", len(out),
             float(out["area_m2"].sum()), float(out["area_px_m2"].sum()),
             int(shapely.get_num_coordinates(drawn).sum()))
    return out


def _assemble_landslides(geoms: list[Polygon], stats: Mapping[str, np.ndarray], crs, attrs,
                         id_offset: int, *, px_area_m2: float,
                         geometry: GeometryParams = GeometryParams()) -> gpd.GeoDataFrame:
    """The typed landslides frame from the exact pixel outlines (in id order) and their per-object
    statistics (``px_count``: pixels of each object); the outlines are drawn as ``geometry``
    says, and areas, perimeters and rectangles measured on what is written."""
    n = len(geoms)
    drawn = draw_polygons(geoms, geometry)
    mean_prob = np.asarray(stats["mean_prob"], dtype=np.float64)
    data = {
        "landslide_id": np.arange(id_offset + 1, id_offset + n + 1, dtype=np.int64),
        "area_px_m2": np.asarray(stats["px_count"], dtype=np.float64) * px_area_m2,
        "confidence_class": confidence_class(mean_prob),
        **{k: np.asarray(stats[k], dtype=np.float64) for k in _STAT_COLUMNS},
        **_shape_columns(drawn, crs),
    }
    for key in STATIC_ATTRS + OPTIONAL_STATIC_ATTRS:
        data[key] = [attrs.get(key)] * n
    df = pd.DataFrame(data)
    for name, kind in LANDSLIDE_COLUMNS:
        if kind == "datetime":  # an all-NaT column (unknown acquisition date) is tz-naive
            df[name] = pd.to_datetime(df[name], utc=True).astype(_PANDAS_DTYPES[kind])
        else:
            df[name] = df[name].astype(_PANDAS_DTYPES[kind])
    gdf = gpd.GeoDataFrame(df[list(LANDSLIDE_COLUMN_NAMES)], geometry=drawn, crs=crs)
    log.info("vectorized %d landslides (%.0f m2 in total, %.0f m2 in pixels; %d vertices)", n,
             float(gdf["area_m2"].sum()), float(gdf["area_px_m2"].sum()),
             int(shapely.get_num_coordinates(drawn).sum()) if n else 0)
    return gdf


def valid_to_footprint(valid: np.ndarray, transform, crs, *,
                       attrs: Mapping[str, Any]) -> gpd.GeoDataFrame:
    """The analysed area as a one-row GeoDataFrame (the ``footprint`` layer).

    Args:
        valid: (H, W) bool or 0/1, True where pixels were analysed (valid, cloud-free).
        transform: the grid's affine transform.
        crs: the analysis CRS.
        attrs: extra columns copied onto the row (``scene_id``, ``run_id``, ...); datetimes must be
            timezone-aware and are stored in UTC.

    Returns:
        One row: ``area_m2``, ``status`` (``"analysed"`` or ``no_valid_status``), the ``attrs`` columns, and a MultiPolygon geometry (empty when nothing
        is valid).

    Raises:
        InputError: ``valid`` not 2-D, missing CRS, or ``attrs`` reusing a reserved column name.
    """
    valid = np.asarray(valid)
    if valid.ndim != 2:
        raise InputError(f"valid must be a 2-D (H, W) array, got shape {valid.shape}")
    crs = _check_crs(crs)
    if not isinstance(attrs, Mapping):
        raise InputError("attrs must be a dict of column name -> value")
    reserved = {"area_m2", "status", "geometry"} & set(attrs)
    if reserved:
        raise InputError(f"attrs may not set {', '.join(sorted(reserved))}: they are computed")
    valid = valid.astype(bool, copy=False)
    polys: list[Polygon] = []
    if valid.any():
        polys = [shape(g) for g, _ in shapes(valid.astype(np.uint8), mask=valid,
                                             connectivity=CONNECTIVITY, transform=transform)]
    # Parts from shapes() never overlap and touch at most at corners: a valid MultiPolygon as is.
    geom = MultiPolygon(polys)
    if not geom.is_valid:
        geom = shapely.make_valid(shapely.union_all(polys))
        geom = MultiPolygon([p for g in getattr(geom, "geoms", [geom]) for p in
                             getattr(g, "geoms", [g]) if p.geom_type == "Polygon"])
    row: dict[str, Any] = {"area_m2": float(geom.area),
                           "status": STATUS_ANALYSED if polys else STATUS_NO_VALID}
    for key, value in attrs.items():
        if isinstance(value, (dt.datetime, pd.Timestamp)):
            value = _to_utc(value, key, allow_none=False)
        row[key] = value
    gdf = gpd.GeoDataFrame({k: [v] for k, v in row.items()}, geometry=[geom], crs=crs)
    return gdf


def write_geopackage(landslides_gdf: gpd.GeoDataFrame, footprint_gdf: gpd.GeoDataFrame,
                     path: str | Path) -> Path:
    """Write the ``landslides`` (Polygon) and ``footprint`` (MultiPolygon) layers to one GeoPackage.

    Written to a temporary name in the same folder and renamed to ``path`` when both layers are
    complete, so a reader never sees half a file. An empty landslides layer keeps its full schema and
    its Polygon geometry type. The file is GeoPackage 1.2 with millisecond datetimes, and carries
    the layers' descriptions, field aliases/descriptions and default QGIS styles
    (:mod:`tasks.vector.geopackage`).

    Args:
        landslides_gdf: from :func:`mask_to_polygons` (columns ``LANDSLIDE_COLUMN_NAMES``).
        footprint_gdf: from :func:`valid_to_footprint`.
        path: the ``.gpkg`` to write (replaced if it exists).

    Returns:
        ``path`` as a Path.

    Raises:
        InputError: wrong columns, CRS missing or different between layers, non-Polygon geometry.
    """
    path = Path(path)
    for name, gdf in (("landslides_gdf", landslides_gdf), ("footprint_gdf", footprint_gdf)):
        if not isinstance(gdf, gpd.GeoDataFrame):
            raise InputError(f"{name} must be a GeoDataFrame, got {type(gdf).__name__}")
        if gdf.crs is None:
            raise InputError(f"{name} has no CRS; build it with tasks.vector.vectorize functions")
    if landslides_gdf.crs != footprint_gdf.crs:
        raise InputError(f"landslides CRS {landslides_gdf.crs} differs from footprint CRS "
                         f"{footprint_gdf.crs}")
    cols = [c for c in landslides_gdf.columns if c != landslides_gdf.geometry.name]
    if tuple(cols) not in (LANDSLIDE_COLUMN_NAMES, LANDSLIDE_COLUMN_NAMES + EVENT_COLUMN_NAMES):
        raise InputError(f"landslides columns {cols} differ from the schema "
                         f"{list(LANDSLIDE_COLUMN_NAMES)} (event mode: then "
                         f"{list(EVENT_COLUMN_NAMES)}; docs/outputs)")
    types = set(landslides_gdf.geom_type.dropna())
    if types - {"Polygon"}:
        raise InputError(f"the landslides layer holds Polygons only, got {sorted(types)}")
    if set(footprint_gdf.geom_type.dropna()) - {"MultiPolygon"}:
        raise InputError("the footprint layer holds MultiPolygons only")

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, unique=True) as tmp:  # .NAME.PID-RANDOM.tmp.gpkg: a fresh GeoPackage
        try:
            landslides_gdf.to_file(tmp, layer=LANDSLIDES_LAYER, driver="GPKG", engine="pyogrio",
                                   geometry_type="Polygon", dataset_options=GPKG_DATASET_OPTIONS,
                                   layer_options=GPKG_LAYER_OPTIONS)
            footprint_gdf.to_file(tmp, layer=FOOTPRINT_LAYER, driver="GPKG", engine="pyogrio",
                                  geometry_type="MultiPolygon", layer_options=GPKG_LAYER_OPTIONS)
            document_layers(tmp, run_layer_docs())
        finally:  # SQLite's side files (the temporary GeoPackage itself goes with atomic_write)
            for leftover in (tmp.with_name(tmp.name + "-journal"), tmp.with_name(tmp.name + "-wal"),
                             tmp.with_name(tmp.name + "-shm")):
                if leftover.exists():
                    leftover.unlink()
    log.info("wrote %s: %d landslides", path, len(landslides_gdf))
    return path


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _block_stats(v: np.ndarray | None, lab: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per-label finite sum, finite count and max (index 0 = background, unused), from the values
    ``v`` (float64) of the labelled pixels and their labels ``lab``, both in raster order."""
    if v is None:
        return {"sum": np.zeros(n + 1), "count": np.zeros(n + 1), "max": np.full(n + 1, -np.inf),
                "min": np.full(n + 1, np.inf)}
    ok = np.isfinite(v)
    mx = np.full(n + 1, -np.inf)
    np.maximum.at(mx, lab[ok], v[ok])
    mn = np.full(n + 1, np.inf)
    np.minimum.at(mn, lab[ok], v[ok])
    return {"sum": np.bincount(lab[ok], weights=v[ok], minlength=n + 1).astype(np.float64),
            "count": np.bincount(lab[ok], minlength=n + 1).astype(np.float64), "max": mx, "min": mn}


def _block_aspect_sums(aspect: np.ndarray | None, lab: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per-label sums of the sine and cosine of the finite aspects (degrees) ``aspect``."""
    if aspect is None:
        return {"sin": np.zeros(n + 1), "cos": np.zeros(n + 1)}
    ok = np.isfinite(aspect)
    rad = np.radians(aspect[ok])
    return {"sin": np.bincount(lab[ok], weights=np.sin(rad), minlength=n + 1),
            "cos": np.bincount(lab[ok], weights=np.cos(rad), minlength=n + 1)}


# the value layers vectorize_raster reduces per object, in the order of their statistics
_VALUE_LAYERS: tuple[str, ...] = ("prob", "uncertainty", "slope_deg", "elev_m")


def vectorize_raster(mask_path, layers: Mapping[str, tuple[str, int] | None], *,
                     static_attrs: Mapping[str, Any], block_px: int = defaults.BLOCK_PX,
                     id_offset: int = 0, geometry: GeometryParams = GeometryParams()
                     ) -> gpd.GeoDataFrame:
    """Block-wise :func:`mask_to_polygons` over rasters, with bounded memory.

    Each block's 4-connected objects are polygonized with partial statistics (finite sums, counts,
    maxima, first pixel); objects that touch across a block seam (4-adjacent pixels on both sides)
    are joined with union-find, their polygons unioned and their statistics combined. The result
    has the same objects, ids (raster order of each object's first pixel), geometries and
    attributes as vectorizing the whole mask at once (means may differ in the last float bits).
    The aspect is computed per block from the DEM read with a one-pixel halo, so it equals the
    whole-raster aspect. The joined pixel outlines are then simplified and smoothed together, as
    one coverage (``geometry``; memory: the run's polygons, which are held anyway).

    Args:
        mask_path: cleaned uint8 mask (1 = landslide) on the analysis grid.
        layers: ``prob``, ``uncertainty``, ``slope_deg``, ``elev_m`` -> (raster path, 1-based band)
            on the same grid, or None for a layer that does not exist (NaN attributes).
        static_attrs: as for :func:`mask_to_polygons`.
        block_px: block side in pixels.
        geometry: simplification and smoothing of the outlines (default: exact pixel outlines).
    """
    import rasterio

    attrs = _check_static_attrs(static_attrs)
    sources = {k: (rasterio.open(layers[k][0]), layers[k][1]) if layers.get(k) else None
               for k in _VALUE_LAYERS}
    try:
        with rasterio.open(mask_path) as src:
            crs = _check_crs(src.crs)
            px_area_m2 = abs(src.transform.a * src.transform.e)
            edges, polys, stats = _read_block_objects(src, sources, block_px)
    finally:
        for item in sources.values():
            if item is not None:
                item[0].close()
    groups = _join_across_seams(edges, list(stats))
    if not groups:
        return _empty_landslides(crs)
    geoms, object_stats = _merged_attributes(_merge_groups(groups, polys, stats))
    return _assemble_landslides(geoms, object_stats, crs, attrs, id_offset, px_area_m2=px_area_m2,
                                geometry=geometry)


def _read_block_objects(src, sources: Mapping[str, tuple[Any, int] | None],
                        block_px: int) -> tuple[dict[tuple[int, int], dict[str, np.ndarray]],
                                                dict[tuple, list[Polygon]], dict[tuple, dict]]:
    """Read the open mask ``src`` block by block, and the value layers ``sources`` (name -> (open
    dataset, band) or None) at its labelled pixels.

    Returns each block's border labels (by (block row, block col)), and each block object's
    polygon parts and partial statistics (by (block row, block col, label), in raster order)."""
    edges: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    polys: dict[tuple, list[Polygon]] = {}
    stats: dict[tuple, dict] = {}
    for win in iter_blocks(src.height, src.width, block_px):
        r, c = int(win.row_off), int(win.col_off)
        bi, bj = r // block_px, c // block_px
        labels, n = label_objects(src.read(1, window=win))
        edges[(bi, bj)] = _border_labels(labels)
        if n == 0:
            continue
        for lab, parts in _label_polygons(labels, src.window_transform(win)).items():
            polys[(bi, bj, lab)] = parts
        idx, lab_px = _labelled_pixels(labels)
        values = _read_values_at(sources, win, idx)
        values["aspect_deg"] = _read_aspect_at(sources.get("elev_m"), src, win, idx)
        for lab, object_stats in _partial_stats(idx, lab_px, n, labels.shape[1], (r, c), values).items():
            stats[(bi, bj, lab)] = object_stats
    return edges, polys, stats


def _border_labels(labels: np.ndarray) -> dict[str, np.ndarray]:
    """A block's labels along its four borders: ``top``, ``bottom``, ``left``, ``right`` (copies)."""
    return {"top": labels[0].copy(), "bottom": labels[-1].copy(),
            "left": labels[:, 0].copy(), "right": labels[:, -1].copy()}


def _label_polygons(labels: np.ndarray, transform) -> dict[int, list[Polygon]]:
    """Label -> the polygon parts of that 4-connected object of a block (``transform``: the block's)."""
    parts: dict[int, list[Polygon]] = {}
    for geom, value in shapes(labels, mask=labels > 0, connectivity=CONNECTIVITY, transform=transform):
        parts.setdefault(int(value), []).append(shape(geom))
    return parts


def _labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of a block's labelled pixels, in raster order, and their labels."""
    # Only the labelled pixels are converted to float64 and reduced: a block is mostly
    # background. idx is in raster order, as a boolean selection would be.
    idx = np.flatnonzero(labels)
    return idx, labels.ravel()[idx]


def _read_values_at(sources: Mapping[str, tuple[Any, int] | None], win,
                    idx: np.ndarray) -> dict[str, np.ndarray | None]:
    """Each value layer's float64 values at the flat pixel indices ``idx`` of window ``win`` (None
    for a layer that does not exist)."""
    values: dict[str, np.ndarray | None] = {}
    for k in _VALUE_LAYERS:
        v = None
        if sources[k] is not None:
            ds, band = sources[k]
            v = ds.read(band, window=win).ravel()[idx].astype(np.float64)
        values[k] = v
    return values


def _read_aspect_at(elev, src, win, idx: np.ndarray) -> np.ndarray | None:
    """The aspect (degrees) at the flat pixel indices ``idx`` of window ``win``, from the DEM
    ``elev`` ((open dataset, band) or None) read with a one-pixel halo (NaN outside the raster),
    so a block's border pixels see their real neighbours."""
    if elev is None:
        return None
    from rasterio.windows import Window

    ds, band = elev
    r0, c0 = int(win.row_off) - 1, int(win.col_off) - 1
    h, w = int(win.height) + 2, int(win.width) + 2
    dem = np.full((h, w), np.nan)
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + h, src.height), min(c0 + w, src.width)
    dem[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = ds.read(
        band, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0)).astype(np.float64)
    rows, cols = np.divmod(idx, int(win.width))
    return aspect_deg_at(dem, rows, cols, abs(src.transform.a), abs(src.transform.e)).astype(np.float64)


def _partial_stats(idx: np.ndarray, lab_px: np.ndarray, n: int, width_px: int, origin: tuple[int, int],
                   values: Mapping[str, np.ndarray | None]) -> dict[int, dict]:
    """Label 1..n of a block -> ``first`` (grid row, col of its first pixel, the block's top-left
    being ``origin``) and ``<layer>_sum``/``_count``/``_max`` of each value layer's finite values."""
    first = np.empty(n + 1, dtype=np.int64)
    _, first_pos = np.unique(lab_px, return_index=True)  # labels 1..n all occur
    first[1:] = idx[first_pos]
    per_layer = {k: _block_stats(values[k], lab_px, n) for k in _VALUE_LAYERS}
    aspect = _block_aspect_sums(values.get("aspect_deg"), lab_px, n)
    px = np.bincount(lab_px, minlength=n + 1).astype(np.float64)
    out = {}
    for lab in range(1, n + 1):
        fr, fc = divmod(int(first[lab]), width_px)
        out[lab] = {"first": (origin[0] + fr, origin[1] + fc), "px_sum": px[lab],
                    "aspect_sin_sum": aspect["sin"][lab], "aspect_cos_sum": aspect["cos"][lab],
                    **{f"{k}_{m}": per_layer[k][m][lab] for k in _VALUE_LAYERS
                       for m in ("sum", "count", "max", "min")}}
    return out


def _join_across_seams(edges: Mapping[tuple[int, int], Mapping[str, np.ndarray]],
                       keys: list[tuple]) -> dict[tuple, list[tuple]]:
    """Block objects ``keys`` (block row, block col, label) grouped into whole objects: two join where
    they have 4-adjacent pixels on the two sides of a block border. Root -> members, in ``keys`` order."""
    uf = _UnionFind()
    for (bi, bj), e in edges.items():
        right = edges.get((bi, bj + 1))
        if right is not None:
            for a, b in set(zip(e["right"].tolist(), right["left"].tolist())):
                if a and b:
                    uf.union((bi, bj, a), (bi, bj + 1, b))
        below = edges.get((bi + 1, bj))
        if below is not None:
            for a, b in set(zip(e["bottom"].tolist(), below["top"].tolist())):
                if a and b:
                    uf.union((bi, bj, a), (bi + 1, bj, b))
    groups: dict[tuple, list[tuple]] = {}
    for key in keys:
        groups.setdefault(uf.find(key), []).append(key)
    return groups


def _merge_groups(groups: Mapping[tuple, list[tuple]], polys: Mapping[tuple, list[Polygon]],
                  stats: Mapping[tuple, dict]) -> list[tuple]:
    """One ``(first pixel, Polygon, sums and counts, maxima)`` per group, its parts' polygons unioned
    and statistics combined; sorted by first pixel (raster order)."""
    merged = []
    for members in groups.values():
        parts = [p for m in members for p in polys[m]]
        geom = _one_polygon(parts if len(parts) == 1 else [shapely.union_all(parts)], 0)
        s = {k: sum(stats[m][k] for m in members) for k in stats[members[0]]
             if k.endswith(("_sum", "_count"))}
        mx = {k: max(stats[m][k] for m in members) for k in stats[members[0]] if k.endswith("_max")}
        mx.update({k: min(stats[m][k] for m in members) for k in stats[members[0]]
                   if k.endswith("_min")})
        first = min(stats[m]["first"] for m in members)
        merged.append((first, geom, s, mx))
    merged.sort(key=lambda item: item[0])
    return merged


def _merged_attributes(merged: list[tuple]) -> tuple[list[Polygon], dict[str, np.ndarray]]:
    """The polygons of :func:`_merge_groups`' objects and their statistics columns (means and maxima;
    NaN where an object has no finite value)."""
    def mean(s, k):
        return s[f"{k}_sum"] / s[f"{k}_count"] if s[f"{k}_count"] > 0 else np.nan

    def maximum(mx, k):
        return mx[f"{k}_max"] if np.isfinite(mx[f"{k}_max"]) else np.nan

    def value_range(mx, k):
        return mx[f"{k}_max"] - mx[f"{k}_min"] if np.isfinite(mx[f"{k}_max"]) else np.nan

    geoms = [g for _, g, _, _ in merged]
    out_stats = {
        "mean_prob": np.array([mean(s, "prob") for _, _, s, _ in merged]),
        "max_prob": np.array([maximum(mx, "prob") for _, _, _, mx in merged]),
        "uncertainty": np.array([mean(s, "uncertainty") for _, _, s, _ in merged]),
        "mean_slope_deg": np.array([mean(s, "slope_deg") for _, _, s, _ in merged]),
        "max_slope_deg": np.array([maximum(mx, "slope_deg") for _, _, _, mx in merged]),
        "aspect_deg": _circular_mean_deg([s["aspect_sin_sum"] for _, _, s, _ in merged],
                                         [s["aspect_cos_sum"] for _, _, s, _ in merged]),
        "mean_elev_m": np.array([mean(s, "elev_m") for _, _, s, _ in merged]),
        "relief_m": np.array([value_range(mx, "elev_m") for _, _, _, mx in merged]),
        "px_count": np.array([s["px_sum"] for _, _, s, _ in merged]),
    }
    return geoms, out_stats


def add_event_attributes(landslides_gdf: gpd.GeoDataFrame, pre_scene_id: str,
                         change_path: str | None, change_index: str | None, grid,
                         block_px: int = defaults.BLOCK_PX) -> gpd.GeoDataFrame:
    """The landslides with the event-mode columns (``EVENT_COLUMNS``) appended.

    ``mean_change`` is the mean of ``change_path`` (per-pixel post-minus-pre change of the index
    ``change_index`` on the analysis ``grid``) over each polygon's pixels (pixel centres, which
    are exactly the mask's pixels the polygon was traced from: call it before
    :func:`draw_landslides`); NaN without a change raster.
    """
    from tasks.vector.zonal import zonal_mean

    out = landslides_gdf.copy()
    out["pre_scene_id"] = pd.Series([pre_scene_id] * len(out), index=out.index, dtype="object")
    out["change_index"] = pd.Series([change_index or "none: the scenes share no index bands"]
                                    * len(out), index=out.index, dtype="object")
    if change_path and len(out):
        means = zonal_mean(out.geometry, out["landslide_id"].to_numpy(), change_path, grid,
                           block_px=block_px)
    else:
        means = np.full(len(out), np.nan)
    out["mean_change"] = np.asarray(means, dtype=np.float64)
    cols = list(LANDSLIDE_COLUMN_NAMES + EVENT_COLUMN_NAMES)
    return gpd.GeoDataFrame(out[cols], geometry=out.geometry.values, crs=out.crs)


def _block_seams(win, height: int, width: int, transform) -> tuple[float | None, ...]:
    """The block's (left, right, top, bottom) edges in map units where another block lies beyond
    (None at the grid's own edges)."""
    (x0, y0), (x1, y1) = transform * (0, 0), transform * (int(win.width), int(win.height))
    return (x0 if win.col_off > 0 else None, x1 if win.col_off + win.width < width else None,
            y0 if win.row_off > 0 else None, y1 if win.row_off + win.height < height else None)


def _reaches_seam(part: Polygon, seams: tuple[float | None, ...]) -> bool:
    """Whether ``part`` (of a block with :func:`_block_seams` ``seams``) touches one of them."""
    minx, miny, maxx, maxy = part.bounds
    left, right, top, bottom = seams
    # the polygon's corners are the block's pixel corners: the same numbers as the seams
    return ((left is not None and minx <= left) or (right is not None and maxx >= right)
            or (top is not None and maxy >= top) or (bottom is not None and miny <= bottom))


def _joined_with_holes(shells: list[Polygon], holes: list) -> list[Polygon]:
    """The union of ``shells`` (outer rings of block polygons at seams), as polygons, with each of
    ``holes`` (those polygons' holes) put back into the polygon that holds it."""
    if not shells:
        return []
    union = shapely.union_all(shells)
    joined = [g for g in getattr(union, "geoms", [union]) if g.geom_type == "Polygon"]
    if not holes:
        return joined
    # a point inside a hole lies inside the outer ring of the joined polygon it belongs to, off
    # that polygon's own holes (areas no block polygon covered). It also lies inside the outer ring
    # of any polygon around that one (an island in another's hole): the hole goes to the
    # innermost, the one with the smallest area inside its outer ring.
    inner_points = shapely.point_on_surface(shapely.polygons(np.asarray(holes, dtype=object)))
    filled = shapely.polygons(shapely.get_exterior_ring(joined))
    hole_idx, poly_idx = shapely.STRtree(filled).query(inner_points, predicate="within")
    order = np.lexsort((shapely.area(filled)[poly_idx], hole_idx))
    first = order[np.r_[True, hole_idx[order][1:] != hole_idx[order][:-1]]] if len(order) else order
    if len(first) != len(holes):
        raise RuntimeError(f"{len(holes)} holes but {len(first)} placed in the joined footprint")
    extra: dict[int, list] = {}
    for k in first[np.argsort(poly_idx[first], kind="stable")]:
        extra.setdefault(int(poly_idx[k]), []).append(holes[int(hole_idx[k])])
    return [Polygon(p.exterior, [*p.interiors, *extra[i]]) if i in extra else p for i, p in enumerate(joined)]


def _block_rectangle(transform, height: int, width: int) -> Polygon:
    """The polygon ``rasterio.features.shapes`` traces around a block valid everywhere, vertex for
    vertex: from the top-left corner down, then right, up and back (tests/tasks/test_vectorize.py)."""
    (x0, y0), (x1, y1) = transform * (0, 0), transform * (width, height)
    return Polygon([(x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0)])


def footprint_raster(valid_path, *, attrs: Mapping[str, Any], block_px: int = defaults.BLOCK_PX,
                     no_valid_status: str = STATUS_NO_VALID) -> gpd.GeoDataFrame:
    """Block-wise :func:`valid_to_footprint`: each block's valid-area polygons, those that reach a
    seam between blocks joined across it. ``no_valid_status`` is the row's status when nothing was
    analysed (say why).

    Only the outer rings of the polygons at seams go through GEOS's union: a polygon's holes lie
    inside its block, so they are put back into the joined polygon that holds them afterwards. A
    union of the whole polygons took 26 of the footprint's 31 s on a full tile with 47,000 holes
    (clouds) and now takes a fraction of a second (benchmarks/README.md).
    """
    import rasterio

    inside: list[Polygon] = []  # polygons that reach no seam: as traced
    shells: list[Polygon] = []  # the outer rings of those that do
    holes: list = []  # and their holes
    with rasterio.open(valid_path) as src:
        crs = _check_crs(src.crs)
        h, w = src.height, src.width
        for win in iter_blocks(h, w, block_px):
            valid = src.read(1, window=win).astype(bool)
            if not valid.any():
                continue
            transform = src.window_transform(win)
            if valid.all():  # no need to trace it
                parts = [_block_rectangle(transform, *valid.shape)]
            else:
                parts = [shape(g) for g, _ in shapes(valid.astype(np.uint8), mask=valid,
                                                     connectivity=CONNECTIVITY, transform=transform)]
            seams = _block_seams(win, h, w, transform)
            for part in parts:
                if _reaches_seam(part, seams):
                    shells.append(Polygon(part.exterior))
                    holes += part.interiors
                else:
                    inside.append(part)
    if not inside and not shells:
        gdf = valid_to_footprint(np.zeros((1, 1), bool), rasterio.Affine.identity(), crs, attrs=attrs)
        gdf["status"] = no_valid_status
        return gdf
    polys = inside + _joined_with_holes(shells, holes)
    geom = MultiPolygon(polys)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
        geom = MultiPolygon([p for p in getattr(geom, "geoms", [geom]) if p.geom_type == "Polygon"])
    gdf = valid_to_footprint(np.zeros((1, 1), bool), rasterio.Affine.identity(), crs, attrs=attrs)
    gdf = gdf.set_geometry([geom], crs=crs)
    gdf["area_m2"] = float(geom.area)
    gdf["status"] = STATUS_ANALYSED
    return gdf
