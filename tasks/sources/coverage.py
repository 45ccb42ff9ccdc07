"""Does every input layer cover the ROI? Checked from the rasters' footprints, before any pixel is read.

The ROI is cut to the imagery's extent when it is resolved (``tasks.core.grid.resolve_roi``), but a
scan reads more than the imagery: every spectral band the detector needs (from each scene of a
mosaic), the DEM and each scene's cloud mask. A layer that misses the ROI would give an all-nodata
stack and "0 landslides" that nobody looked for. :func:`check_layer_coverage` measures, for each
layer, the share of the ROI its rasters' footprints cover (in the grid's CRS, the footprints'
edges densified so reprojection does not cut corners):

- a layer that covers none of the ROI is an ``InputError`` naming the layer, its file and both extents;
- so is a layer whose footprint covers the ROI but which holds only nodata there (a decimated read,
  then a full one only if that finds nothing);
- a layer that covers part of it is analysed where it does, with a warning and a note in the
  inputs (the manifest keeps it) that give the covered share.

A cloud mask is measured against the part of the ROI its scene's bands cover: outside its footprint a
mask would silently flag nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import rasterio
import shapely
from pyproj import Transformer
from rasterio.errors import RasterioIOError
from shapely.ops import transform as shp_transform

from tasks.core.errors import InputError
from tasks.sources.local import SceneInputs

log = logging.getLogger(__name__)

# A layer covering at least this share of the ROI counts as complete: a UTM raster never quite fills
# the lon/lat box of its own bounds (about 1.5 % of slivers for a 2 km square), which is not news.
FULL_COVER = 0.98
_EDGE_POINTS = 32  # points per footprint edge when it is reprojected


@dataclass(frozen=True)
class LayerCoverage:
    """One input layer and the share of the ROI its footprint covers."""

    layer: str  # "band B04", "DEM", "cloud mask of scene S2A_..."
    paths: tuple[str, ...]
    covered_fraction: float
    extent_lonlat: tuple[float, float, float, float]  # the layer's rasters' bounds, EPSG:4326


def raster_footprint(path: str, dst_crs: str) -> shapely.Polygon:
    """The raster's bounds as a polygon in ``dst_crs`` (edges densified before reprojection)."""
    try:
        with rasterio.open(path) as src:
            crs, bounds = src.crs, src.bounds
    except RasterioIOError as exc:
        raise InputError(f"{path} is not a raster GDAL can read ({str(exc).splitlines()[0]})") from None
    if crs is None:
        raise InputError(f"{path} has no CRS; set one (e.g. gdal_edit.py -a_srs EPSG:32654 {path})")
    poly = shapely.box(*bounds)
    if rasterio.crs.CRS.from_user_input(dst_crs) == crs:
        return poly
    edge = max(bounds.right - bounds.left, bounds.top - bounds.bottom) / _EDGE_POINTS
    to_dst = Transformer.from_crs(crs, dst_crs, always_xy=True)
    return shp_transform(to_dst.transform, shapely.segmentize(poly, edge))


def layer_has_data(path: str, roi_grid_crs: shapely.Geometry, grid_crs: str,
                   nodata: float | None = None, sample_px: int = 256) -> bool:
    """Whether the raster has any pixel with data (not nodata, not NaN) inside the ROI's bounds.

    A decimated read (at most ``sample_px`` a side, overviews when the file has them) answers
    almost always; only when it finds no data is the window read in full, block by block, so a
    layer with data in a few pixels is never refused.
    """
    import numpy as np
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    with rasterio.open(path) as src:
        left, bottom, right, top = transform_bounds(grid_crs, src.crs, *roi_grid_crs.bounds,
                                                    densify_pts=21)
        exact = from_bounds(left, bottom, right, top, transform=src.transform)
        col0, row0 = max(0, math.floor(exact.col_off)), max(0, math.floor(exact.row_off))
        col1 = min(src.width, math.ceil(exact.col_off + exact.width))
        row1 = min(src.height, math.ceil(exact.row_off + exact.height))
        if col1 <= col0 or row1 <= row0:
            return False
        win = rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0)
        nodata = nodata if nodata is not None else src.nodata

        def any_data(values: np.ndarray) -> bool:
            ok = np.isfinite(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
            if nodata is not None and not np.isnan(nodata):
                ok &= values != nodata
            return bool(ok.any())

        h, w = int(win.height), int(win.width)
        scale = max(1.0, max(h, w) / sample_px)
        small = (max(1, int(h / scale)), max(1, int(w / scale)))
        if any_data(src.read(1, window=win, out_shape=small)):
            return True
        step = 1024
        return any(any_data(src.read(1, window=rasterio.windows.Window(
                       win.col_off + c, win.row_off + r, min(step, w - c), min(step, h - r))))
                   for r in range(0, h, step) for c in range(0, w, step))


def _lonlat_bounds(geom: shapely.Geometry, crs: str) -> tuple[float, float, float, float]:
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return tuple(shp_transform(to_lonlat.transform, geom).bounds)  # type: ignore[return-value]


def _fmt_extent(b: tuple[float, float, float, float]) -> str:
    return f"lon {b[0]:.4f}..{b[2]:.4f}, lat {b[1]:.4f}..{b[3]:.4f}"


def scene_layers(inputs: SceneInputs) -> dict[str, list[str]]:
    """The layers of ``inputs`` a scan reads: layer name -> its raster paths (one per scene that has
    it). Cloud masks are listed per scene (``cloud mask of scene ID``)."""
    layers: dict[str, list[str]] = {}
    for scene in inputs.scenes():
        for band, path in scene["band_paths"].items():
            layers.setdefault(f"band {band}", []).append(path)
    if inputs.dem_path:
        layers["DEM"] = [inputs.dem_path]
    for scene in inputs.scenes():
        mask = scene.get("cloud_mask")
        if mask and mask.get("path"):
            layers[f"cloud mask of scene {scene['scene_id']}"] = [mask["path"]]
    return layers


def measure_coverage(inputs: SceneInputs, roi_grid_crs: shapely.Geometry, grid_crs: str) -> list[LayerCoverage]:
    """The share of the ROI each layer of ``inputs`` covers (reads headers only)."""
    if roi_grid_crs.is_empty or roi_grid_crs.area <= 0:
        raise InputError("the ROI is empty")
    layers = scene_layers(inputs)
    footprints = {path: raster_footprint(path, grid_crs) for paths in layers.values() for path in paths}
    scenes = {s["scene_id"]: s for s in inputs.scenes()}
    out = []
    for layer, paths in layers.items():
        covered = shapely.union_all([footprints[p] for p in paths])
        target = roi_grid_crs
        if layer.startswith("cloud mask of scene "):  # judged where its scene's bands are
            scene = scenes[layer.removeprefix("cloud mask of scene ")]
            bands = shapely.intersection_all([footprints[p] for p in scene["band_paths"].values()])
            target = roi_grid_crs.intersection(bands)
            if target.area <= 0:
                continue
        fraction = min(1.0, covered.intersection(target).area / target.area)
        out.append(LayerCoverage(layer, tuple(paths), fraction, _lonlat_bounds(covered, grid_crs)))
    return out


def _has_data(layer: str, path: str, roi_grid_crs: shapely.Geometry, grid_crs: str,
              nodata: float | None) -> bool:
    """:func:`layer_has_data`, a read failure named as a damaged file."""
    try:
        return layer_has_data(path, roi_grid_crs, grid_crs, nodata)
    except RasterioIOError as exc:
        raise InputError(f"{layer} ({path}): reading it over the ROI failed "
                         f"({str(exc).splitlines()[0]}): the file is damaged; check it with "
                         "`gdalinfo -checksum` and download or copy it again") from None


def _nodata(inputs: SceneInputs, layer: str, path: str) -> float | None:
    """The nodata value the scan applies to ``path`` (the catalog's, else the file's)."""
    if layer == "DEM":
        return inputs.dem_nodata
    return next((s.get("band_nodata") for s in inputs.scenes() if path in s["band_paths"].values()), None)


def check_layer_coverage(inputs: SceneInputs, roi_grid_crs: shapely.Geometry, grid_crs: str,
                         role: str = "") -> SceneInputs:
    """Refuse a layer that misses the ROI; warn about (and note in the inputs) one that covers part.

    Args:
        inputs: the scene(s), DEM and cloud masks the scan will read.
        roi_grid_crs: the ROI in the grid's CRS.
        grid_crs: the analysis grid's CRS.
        role: ``"pre-event"`` / ``"post-event"`` in event mode (named in the messages).

    Returns:
        ``inputs`` with a note per partly covering layer.

    Raises:
        InputError: a layer covers none of the ROI (the layer, its file(s) and both extents named).
    """
    roi_extent = _lonlat_bounds(roi_grid_crs, grid_crs)
    prefix = f"{role} " if role else ""
    partial: dict[tuple[str, str], list[str]] = {}  # (share, what happens outside) -> layers
    for cov in measure_coverage(inputs, roi_grid_crs, grid_crs):
        files = ", ".join(cov.paths[:3]) + (f" and {len(cov.paths) - 3} more" if len(cov.paths) > 3 else "")
        if cov.covered_fraction <= 0:
            raise InputError(
                f"{prefix}{cov.layer} ({files}) does not cover the ROI: it spans "
                f"{_fmt_extent(cov.extent_lonlat)}, the ROI {_fmt_extent(roi_extent)}; fix the "
                "layer's path in data_catalog.yaml or choose an ROI inside it")
        if not cov.layer.startswith("cloud mask") and not any(
                _has_data(cov.layer, p, roi_grid_crs, grid_crs, _nodata(inputs, cov.layer, p))
                for p in cov.paths):
            raise InputError(
                f"{prefix}{cov.layer} ({files}) has no data in the ROI: its file covers the ROI "
                "but every pixel there is nodata; nothing could be analysed")
        if cov.covered_fraction < FULL_COVER:
            outside = ("are not cloud-masked" if cov.layer.startswith("cloud mask")
                       else "are not analysed")
            partial.setdefault((f"{100 * cov.covered_fraction:.1f}", outside), []).append(cov.layer)
    notes = []
    for (share, outside), layers in partial.items():
        verb = "covers" if len(layers) == 1 else "cover"
        note = f"{prefix}{', '.join(layers)} {verb} {share} % of the ROI; pixels outside it {outside}"
        log.warning(note)
        notes.append(note)
    return dataclasses.replace(inputs, notes=[*inputs.notes, *notes]) if notes else inputs
