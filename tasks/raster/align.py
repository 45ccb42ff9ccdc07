"""Bring every layer onto the analysis grid and write the 14-channel stack, lazily and in chunks.

Each band is opened through a GDAL ``WarpedVRT`` onto the analysis grid and read window by window as a
dask array (a band whose pixels already are the grid's is read as it is), so the stack is computed
chunk by chunk and streamed to a tiled GeoTIFF: memory depends on the chunk size, not the scene
size. Bands may come in any CRS and resolution (10/20/60 m): GDAL resamples each onto the grid
(bilinear for reflectance and terrain, docs/contracts.md section 2). Slope is
computed on the DEM in a metric CRS at the DEM's own resolution first, then resampled.

Output: ``stack.tif`` (float32, 14 bands in contract order, physical units, NaN = nodata; channels the
source does not provide are all-NaN) and ``valid.tif`` (uint8 1 = analysed). Where the source gives a
cloud mask (``inputs.cloud_mask``, see ``tasks.sources.cloud``) cloud pixels are not valid; ``cloud_mask.json``
records how many were masked. ``scene_index.tif`` (uint8, 0 = no scene, k = entry k of ``scenes.json``)
says which scene every analysed pixel comes from: with a per-pixel mosaic (``inputs.mosaic``, see
``tasks.sources.mosaic``) the first-ranked scene with data and no cloud there; with one scene, that scene.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import dask
import dask.array as da
import dask.threaded
import numpy as np
import rasterio
import rioxarray
import shapely
import xarray as xr
from dask.optimization import cull
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.features import geometry_mask
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from tqdm.auto import tqdm

from tasks.core.bands import BAND_NAMES, SPECTRAL_BAND_NAMES, band_index, get_band
from tasks.core.errors import InputError
from tasks.core.files import atomic_write, uncompressed, work_raster_profile
from tasks.core.grid import AnalysisGrid
from tasks.core.moments import BandMoments
from tasks.raster.clouds import detect_clouds
from tasks.raster.on_grid import aligned_offset_px, on_grid_offset_px, read_on_grid
from tasks.raster.terrain import compute_slope_raster, plausible_dem
from tasks.sources.cloud import check_cloud_mask, cloud_pixels
from tasks.sources.cloud import write_records as write_cloud_records
from tasks.sources.coverage import FULL_COVER
from tasks.sources.local import SceneInputs
from tasks.sources.mosaic import MAX_SCENES, SCENE_INDEX_NAME, SCENES_NAME, scene_entry, write_scenes
from tasks.sources.mosaic import RULE as MOSAIC_RULE

log = logging.getLogger(__name__)

DEFAULT_CHUNK_PX = 1024


@dataclass(frozen=True)
class StackResult:
    stack_path: str
    valid_path: str
    band_stats: dict  # band -> {"finite_fraction", "nan_pixels_in_source"; required: "mean", "std"}
    valid_fraction: float
    cloud_masked_px: int = 0  # pixels otherwise analysed that the source's cloud mask removed
    # per required layer, the share of the ROI's pixels where it has data (1.0 = everywhere)
    layer_data_fraction: dict = field(default_factory=dict)
    # the required bands' mean vector and covariance over the valid pixels (tasks.core.moments)
    band_moments: dict = field(default_factory=dict)


def warped_layer(path: str, grid: AnalysisGrid, resampling: Resampling, src_nodata: float | None,
                  chunk_px: int) -> xr.DataArray:
    """A lazy (1, H, W) float32 view of ``path`` on ``grid`` with NaN for nodata.

    A raster whose pixels already are the grid's (same CRS and pixel size, origin a whole number of
    pixels away: Sentinel-2's 10 m bands in the ROI's UTM zone) is read window by window as it is;
    anything else goes through GDAL's warper. Both give the same values (tests/tasks/test_on_grid.py).
    """
    src = rasterio.open(path)
    if src.crs is None:
        raise InputError(f"{path} has no CRS; set one with gdal_edit.py -a_srs EPSG:XXXX")
    nodata = src_nodata if src_nodata is not None else src.nodata
    has_nodata = nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata))
    offset_px = on_grid_offset_px(src, grid)
    if offset_px is not None:
        src.close()
        arr = _on_grid_layer(path, offset_px, grid, nodata if has_nodata else None, chunk_px)
    else:
        arr = _warped_vrt_layer(src, grid, resampling, nodata if has_nodata else None, chunk_px)
    if has_nodata:
        arr = arr.where(arr != np.float32(nodata))
    # a file may also hold NaN (float rasters): NaN is nodata either way
    return arr


def _warped_vrt_layer(src, grid: AnalysisGrid, resampling: Resampling, nodata: float | None,
                      chunk_px: int) -> xr.DataArray:
    """(1, H, W) float32 through a GDAL ``WarpedVRT``; ``nodata`` (not NaN) where there is none.

    warped_layer then sets NaN where the value is ``nodata``: the same pixels as GDAL's nodata mask
    band, which would warp every window twice. A 20 m band on a 10 m grid takes GDAL's unmasked
    kernel in windows with no nodata within reach (:class:`_TwinWarp`): the same values at about
    2.5x less CPU.
    """
    vrt_kwargs = dict(crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                      resampling=resampling)
    if nodata is not None:
        vrt_kwargs.update(src_nodata=nodata, nodata=nodata)
    vrt = WarpedVRT(src, **vrt_kwargs)
    twin = _TwinWarp.for_source(src, grid, resampling, nodata)
    lock = threading.Lock()  # a dataset is not safe across threads: its windows are read one by one

    def read_chunk(block_info=None) -> np.ndarray:
        (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
        win = Window(c0, r0, c1 - c0, r1 - r0)
        with lock:
            data = twin.read(win) if twin is not None and twin.reaches_only_data(win) else vrt.read(1, window=win)
        return data[None].astype("float32")

    token = dask.base.tokenize(src.name, grid.to_dict(), resampling.name, nodata, chunk_px)
    return _grid_layer(read_chunk, f"warped-{token}", grid, chunk_px)


class _TwinWarp:
    """The same warp without the source's nodata, for windows where no nodata pixel is within reach.

    With a nodata value, GDAL's warper runs its masked bilinear kernel: 37-43 ns per output pixel
    here against 15-17 ns for its unmasked one. The two give the same values where all four source
    pixels are data, but only where the arithmetic is exact: they add in different orders, and a sum
    off a half by rounding error rounds one way in one and the other way in the other (1-DN
    differences in 0.02 % of the pixels of a 60 m band, whose weights are twelfths). Here it is
    exact: a source pixel is exactly two grid pixels, pixel edges on grid edges, same CRS, unsigned
    8/16-bit values, so every weight is 1/4 or 3/4 and every product and sum is exact in float32 and
    float64 alike (Sentinel-2's 20 m bands on a 10 m grid). The twin reads the file through a VRT that
    declares no nodata (a WarpedVRT cannot drop the source's own), on the same grid, so GDAL computes
    the same source coordinates. tests/tasks/test_on_grid.py compares both on real bands.
    """

    _GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16"}

    def __init__(self, src, grid: AnalysisGrid, resampling: Resampling, offset_px: tuple[int, int]):
        self.plain = rasterio.open(_plain_vrt_xml(src, self._GDAL_TYPES[src.dtypes[0]]))
        self.vrt = WarpedVRT(self.plain, crs=grid.crs, transform=grid.transform, width=grid.width,
                             height=grid.height, resampling=resampling)
        self.offset_px = offset_px  # (row, col) of the grid's origin from the file's, in grid pixels
        self.src_shape = (src.height, src.width)

    @classmethod
    def for_source(cls, src, grid: AnalysisGrid, resampling: Resampling, nodata: float | None) -> _TwinWarp | None:
        """A twin where the exactness above holds (bilinear, 2x, aligned, unsigned integers with
        nodata 0, which is also what GDAL fills beyond the file without one), else None."""
        if nodata != 0 or resampling != Resampling.bilinear or src.dtypes[0] not in cls._GDAL_TYPES:
            return None
        offset_px = aligned_offset_px(src, grid, 2)  # exactly: no tolerance
        return None if offset_px is None else cls(src, grid, resampling, offset_px)

    def reaches_only_data(self, win: Window) -> bool:
        """Whether every pixel of the file that the window's bilinear weights can touch (with a pixel
        to spare) is data. Pixels beyond the file's edge are missing to both kernels alike, and both
        fill grid pixels beyond it with 0, the nodata value. Reads a quarter of the window's count."""
        spans = []
        for start, size, offset, length in ((win.row_off, win.height, self.offset_px[0], self.src_shape[0]),
                                            (win.col_off, win.width, self.offset_px[1], self.src_shape[1])):
            # grid pixel k's centre is at source coordinate (offset + k + 0.5) / 2
            first, stop = max((offset + start) // 2 - 1, 0), min((offset + start + size) // 2 + 2, length)
            if first >= stop:
                return True  # the window lies beyond the file
            spans.append((first, stop))
        (r0, r1), (c0, c1) = spans
        return bool(self.plain.read(1, window=Window(c0, r0, c1 - c0, r1 - r0)).all())

    def read(self, win: Window) -> np.ndarray:
        return self.vrt.read(1, window=win)


def _plain_vrt_xml(src, gdal_type: str) -> str:
    """A one-band VRT (XML text) of ``src``'s first band with its CRS and transform and no nodata."""
    t = src.transform
    return (f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
            f"<SRS>{escape(src.crs.to_wkt())}</SRS>"
            f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
            f'<VRTRasterBand dataType="{gdal_type}" band="1"><SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{escape(src.name)}</SourceFilename>'
            "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>")


def _grid_layer(read_chunk, name: str, grid: AnalysisGrid, chunk_px: int) -> xr.DataArray:
    """(1, H, W) float32 on ``grid`` whose chunk_px windows ``read_chunk(block_info)`` reads."""
    rows, cols = _chunk_sizes(grid, chunk_px)
    data = da.map_blocks(read_chunk, chunks=((1,), rows, cols), dtype="float32",
                         meta=np.empty((0, 0, 0), dtype="float32"), name=name)
    x = grid.xmin + (np.arange(grid.width) + 0.5) * grid.res_m
    y = grid.ymax - (np.arange(grid.height) + 0.5) * grid.res_m
    return xr.DataArray(data, dims=("band", "y", "x"), coords={"band": [1], "y": y, "x": x})


def _on_grid_layer(path: str, offset_px: tuple[int, int], grid: AnalysisGrid, nodata: float | None,
                   chunk_px: int) -> xr.DataArray:
    """(1, H, W) float32 read straight from ``path`` (its pixels are the grid's): what GDAL's warper
    gives there without resampling, at a fraction of its cost. Outside the file, ``nodata`` (0
    without one, as the warper fills)."""
    fill = 0 if nodata is None else nodata

    def read_chunk(block_info=None) -> np.ndarray:
        (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
        with rasterio.open(path) as src:  # one handle per read: chunks may be read in parallel
            return read_on_grid(src, offset_px, Window(c0, r0, c1 - c0, r1 - r0), fill)[None]

    return _grid_layer(read_chunk, "on-grid-" + dask.base.tokenize(path, offset_px, grid.to_dict(), fill, chunk_px),
                       grid, chunk_px)


def _empty_layer(grid: AnalysisGrid, chunk_px: int) -> da.Array:
    return da.full((1, grid.height, grid.width), np.nan, dtype="float32",
                   chunks=(1, chunk_px, chunk_px))


def roi_mask(roi_grid_crs: shapely.Geometry | None, grid: AnalysisGrid,
             window: Window | None = None) -> np.ndarray:
    """uint8: 1 inside the ROI polygon (pixel centres), 0 outside; the whole grid (H, W), or ``window``."""
    window = window or Window(0, 0, grid.width, grid.height)
    shape = (int(window.height), int(window.width))
    if roi_grid_crs is None:
        return np.ones(shape, dtype=np.uint8)
    transform = window_transform(window, grid.transform)
    inside = geometry_mask([roi_grid_crs], out_shape=shape, transform=transform, invert=True,
                           all_touched=False)
    return inside.astype(np.uint8)


def _lazy_roi_inside(roi_grid_crs: shapely.Geometry | None, grid: AnalysisGrid, chunk_px: int) -> da.Array:
    """bool (H, W), rasterized chunk by chunk: a whole-grid mask would be 120 MB for one S2 tile."""
    def chunk(template: np.ndarray, block_info=None) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[0]["array-location"]
        return roi_mask(roi_grid_crs, grid, Window(c0, r0, c1 - c0, r1 - r0)) > 0

    return da.zeros(grid.shape, dtype=bool, chunks=(chunk_px, chunk_px)).map_blocks(chunk, dtype=bool)


def _scene_layers(scene: dict, grid: AnalysisGrid, chunk_px: int) -> dict[str, da.Array]:
    """Lazy (H, W) views of one scene's spectral bands on ``grid``, harmonized, NaN = nodata."""
    layers = {}
    for name, path in scene["band_paths"].items():
        data = warped_layer(path, grid, Resampling[get_band(name).resampling], scene.get("band_nodata"),
                             chunk_px).data[0]
        if scene.get("offset_dn"):
            data = da.maximum(data - scene["offset_dn"], 0.0)
        layers[name] = data.rechunk((chunk_px, chunk_px))
    return layers


@dataclass(frozen=True)
class _StackPlan:
    """The lazy (dask) layers of one stack; nothing is read until a window is computed."""

    stack: da.Array  # (14, H, W) float32 in BAND_NAMES order, physical units, NaN where not valid
    index: da.Array  # (H, W) uint8: 0 no scene, k = scene k (best first)
    cloudy: da.Array  # (H, W) bool: would be analysed but for the cloud masks
    cloud_lost: list[da.Array]  # per scene, (H, W) bool: pixels it would give that its cloud mask removed
    cloud_specs: list[dict | None]  # per scene, its checked cloud mask spec (None = no mask)
    inside: da.Array  # (H, W) bool: the ROI
    layer_data: dict[str, da.Array]  # per required layer, (H, W) bool: in the ROI with data (any scene)
    sources: tuple[str, ...] = ()  # every raster file the plan reads (named when a read fails)


@dataclass
class _WindowCounts:
    """Pixel counts summed over the windows as they are written."""

    taken_px: np.ndarray  # (n_scenes + 1,) int64: pixels per scene index (0 = no scene)
    cloud_lost_px: np.ndarray  # (n_scenes,) int64: pixels each scene lost to its own cloud mask
    finite_px: np.ndarray  # (14,) int64: finite pixels per band of stack.tif
    moments: BandMoments  # mean and covariance of the required bands over the valid pixels
    layer_data_px: np.ndarray  # (n required layers,) int64: ROI pixels where each layer has data
    cloudy_px: int = 0  # pixels not analysed only because of the cloud masks
    roi_px: int = 0  # pixels inside the ROI


def build_stack(inputs: SceneInputs, grid: AnalysisGrid, work_dir: str | Path,
                required_bands: tuple[str, ...], roi_grid_crs: shapely.Geometry | None = None,
                chunk_px: int = DEFAULT_CHUNK_PX, progress: bool = False) -> StackResult:
    """Warp the scenes' bands and the terrain layers onto ``grid``; write stack.tif, valid.tif,
    scene_index.tif and scenes.json.

    With several scenes (``inputs.mosaic``, best first) every pixel takes its spectral bands from the
    first scene that has data in every required spectral band there and is not cloud in its own mask
    (``tasks.sources.mosaic``); a single scene is the same rule with one scene.

    Args:
        inputs: the scene(s) (band paths, DEM path, nodata, harmonization offset, cloud mask).
        grid: the analysis grid.
        work_dir: folder for the stack, the valid mask and the metric-CRS slope.
        required_bands: channels the detector consumes: a pixel is valid only where all are finite.
        roi_grid_crs: ROI polygon in the grid CRS; pixels outside it are not analysed.
        chunk_px: dask chunk side (bounded memory: a few chunks of 14 bands a scene at a time).
        progress: show a progress bar (stderr) while the stack is computed and written.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    scenes = inputs.scenes()
    if len(scenes) > MAX_SCENES:
        raise InputError(f"a mosaic of {len(scenes)} scenes exceeds {MAX_SCENES} (scene_index.tif is uint8)")
    scenes, detector_off = _computed_cloud_masks(scenes, grid, work_dir)
    nan_in_source = _source_nan_counts(scenes)
    dem_path, dem_nodata = inputs.dem_path, inputs.dem_nodata
    if dem_path:  # holes written as numbers without a nodata tag become nodata
        dem_path, dem_nodata = plausible_dem(dem_path, dem_nodata, work_dir)
    slope_path = _metric_slope(dem_path, dem_nodata, grid, work_dir)
    plan = _plan_stack(scenes, dem_path, dem_nodata, slope_path, grid, required_bands,
                       roi_grid_crs, chunk_px)
    grid_px = grid.width * grid.height
    # the records are built before the rasters are renamed into place: a failure leaves no stack
    with _writing_stack(plan, grid, work_dir, chunk_px, progress) as counts:
        stats = _stack_stats(counts, grid_px, nan_in_source)
        valid_px = int(counts.taken_px[1:].sum())
        valid_fraction = valid_px / grid_px
        entries = _scene_entries(scenes, counts)
        layer_fraction = _layer_data_fractions(plan, counts, scenes, inputs.dem_path, valid_px)
    _write_stack_records(work_dir, scenes, plan.cloud_specs, entries, stats, counts, grid_px, valid_px,
                         detector_off)
    log.info("stack: %dx%d px on %s from %d scene(s) (%s px), %.1f%% valid, %d px cloud-masked", grid.width,
             grid.height, grid.crs, len(scenes), "/".join(str(int(t)) for t in counts.taken_px[1:]),
             100 * valid_fraction, counts.cloudy_px)
    return StackResult(str(work_dir / "stack.tif"), str(work_dir / "valid.tif"), stats, valid_fraction,
                       counts.cloudy_px, layer_fraction, counts.moments.to_json())


def _computed_cloud_masks(scenes: list[dict], grid: AnalysisGrid,
                          work_dir: Path) -> tuple[list[dict], dict[str, str]]:
    """Scenes whose source gave no cloud mask but a ``cloud_detector`` plan get the mask it computes
    (``tasks.raster.clouds``); also, per scene left without a mask, why no detector ran."""
    out, off = [], {}
    for scene in scenes:
        if scene.get("cloud_mask") is None and scene.get("cloud_detector"):
            scene = {**scene, "cloud_mask": detect_clouds(scene, grid, work_dir)}
        elif scene.get("cloud_mask") is None:
            off[scene["scene_id"]] = scene.get("cloud_detector_off") or (
                "no cloud detector for this source kind yet (it runs on local sources)")
        out.append(scene)
    return out, off


def _layer_paths(name: str, scenes: list[dict], dem_path: str | None) -> str:
    if name in SPECTRAL_BAND_NAMES:
        paths = [s["band_paths"][name] for s in scenes if name in s["band_paths"]]
        return ", ".join(paths) or "no file"
    return f"from {dem_path}" if name == "SLOPE" else str(dem_path)


def _layer_data_fractions(plan: _StackPlan, counts: _WindowCounts, scenes: list[dict],
                          dem_path: str | None, valid_px: int) -> dict[str, float]:
    """Per required layer, the share of the ROI where it has data; a warning for each that has data
    in part of it.

    Raises:
        InputError: nothing in the ROI can be analysed, and not because of clouds: a layer has no
            data anywhere in it (its files' footprints cover the ROI, but every pixel there is
            nodata), or the layers have data in no common pixel. An all-cloud ROI is not an error:
            the footprint's status says so.
    """
    roi_px = max(counts.roi_px, 1)
    fractions = {name: round(int(n) / roi_px, 6) for name, n in zip(plan.layer_data, counts.layer_data_px)}
    empty = [name for name, f in fractions.items() if f == 0]
    if valid_px == 0 and empty:
        raise InputError(
            f"layer {empty[0]} ({_layer_paths(empty[0], scenes, dem_path)}) has no data in the ROI: "
            "its file covers the ROI but every pixel there is nodata" +
            (f" (also without data: {', '.join(empty[1:])})" if len(empty) > 1 else "") +
            "; nothing could be analysed")
    if valid_px == 0 and counts.cloudy_px == 0 and counts.roi_px > 0:
        shares = ", ".join(f"{name} {100 * f:.1f} %" for name, f in fractions.items())
        raise InputError(f"no pixel of the ROI has data in every layer the detector needs (each "
                         f"layer's share of the ROI with data: {shares}); nothing could be analysed")
    partial = [f"{name} {100 * f:.1f} %" for name, f in fractions.items() if f < FULL_COVER]
    if partial:
        log.warning("layers with data in part of the ROI only (pixels without are not analysed): %s",
                    ", ".join(partial))
    return fractions


def _source_nan_counts(scenes: list[dict]) -> dict[str, int]:
    """Band name -> NaN pixels in its source rasters, summed over the scenes (reads every band file)."""
    nan_in_source: dict[str, int] = {}
    for scene in scenes:
        for name, path in scene["band_paths"].items():
            nan_in_source[name] = nan_in_source.get(name, 0) + _count_source_nan(path)
    return nan_in_source


def _metric_slope(dem_path: str | None, dem_nodata: float | None, grid: AnalysisGrid,
                  work_dir: Path) -> Path | None:
    """``work_dir/slope_metric.tif``, the DEM's slope in the grid CRS, computed unless it exists;
    None without a DEM."""
    if not dem_path:
        return None
    slope_path = work_dir / "slope_metric.tif"
    if not slope_path.exists():
        compute_slope_raster(dem_path, slope_path, dst_crs=grid.crs, nodata=dem_nodata)
    return slope_path


def _plan_stack(scenes: list[dict], dem_path: str | None, dem_nodata: float | None, slope_path: Path | None,
                grid: AnalysisGrid, required_bands: tuple[str, ...], roi_grid_crs: shapely.Geometry | None,
                chunk_px: int) -> _StackPlan:
    """The lazy stack, scene index and cloud counts of :func:`build_stack` (opens the sources, reads
    no pixel)."""
    empty = _empty_layer(grid, chunk_px)[0]
    inside = _lazy_roi_inside(roi_grid_crs, grid, chunk_px)
    spectral_required = [b for b in required_bands if b in SPECTRAL_BAND_NAMES]
    terrain = _terrain_layers(dem_path, dem_nodata, slope_path, grid, chunk_px, empty)
    base_ok = inside
    for name in required_bands:
        if name in terrain:
            base_ok = base_ok & da.isfinite(terrain[name])
    # per scene: its layers, data in every required spectral band, its cloud flags and cloud mask spec
    per_scene = [_scene_plan(scene, grid, spectral_required, chunk_px) for scene in scenes]
    index, cloud_lost = _mosaic_index([(has_data, cloud) for _, has_data, cloud, _ in per_scene], base_ok,
                                      grid, chunk_px)
    valid = index > 0
    # pixels that would have been analysed without the cloud masks but are not
    cloudy = ~valid & base_ok & da.stack([h & c for _, h, c, _ in per_scene]).any(axis=0)
    channels = _mosaic_channels(terrain, [layers for layers, _, _, _ in per_scene], index, empty)
    stack = da.where(valid[None], da.stack(channels), np.nan).astype("float32")
    layer_data = {}
    for name in required_bands:
        if name in terrain:
            layer_data[name] = inside & da.isfinite(terrain[name])
        else:
            with_band = [da.isfinite(layers[name]) for layers, _, _, _ in per_scene if name in layers]
            layer_data[name] = inside & (da.stack(with_band).any(axis=0) if with_band else False)
    sources = [p for scene in scenes for p in scene["band_paths"].values()]
    sources += [spec["path"] for _, _, _, spec in per_scene if spec] + ([dem_path] if dem_path else [])
    return _StackPlan(stack, index, cloudy, cloud_lost, [spec for _, _, _, spec in per_scene], inside,
                      layer_data, tuple(dict.fromkeys(sources)))


def _terrain_layers(dem_path: str | None, dem_nodata: float | None, slope_path: Path | None,
                    grid: AnalysisGrid, chunk_px: int, empty: da.Array) -> dict[str, da.Array]:
    """Lazy (H, W) SLOPE and DEM on ``grid``; ``empty`` (all NaN) for both without a DEM."""
    terrain: dict[str, da.Array] = {}
    for name in ("SLOPE", "DEM"):
        if not dem_path:
            terrain[name] = empty
            continue
        path, nodata = (dem_path, dem_nodata) if name == "DEM" else (str(slope_path), None)
        terrain[name] = warped_layer(path, grid, Resampling[get_band(name).resampling], nodata,
                                      chunk_px).data[0].rechunk((chunk_px, chunk_px))
    return terrain


def _scene_plan(scene: dict, grid: AnalysisGrid, spectral_required: list[str],
                chunk_px: int) -> tuple[dict[str, da.Array], da.Array, da.Array, dict | None]:
    """One scene's lazy layers, where it has data in every required spectral band (bool), where its
    cloud mask flags cloud (bool, all False without a mask), and its checked cloud mask spec."""
    layers = _scene_layers(scene, grid, chunk_px)
    has_data = da.ones(grid.shape, dtype=bool, chunks=(chunk_px, chunk_px))
    for name in spectral_required:
        has_data = has_data & (da.isfinite(layers[name]) if name in layers else False)
    spec = check_cloud_mask(scene.get("cloud_mask"))
    cloud = da.zeros(grid.shape, dtype=bool, chunks=(chunk_px, chunk_px))
    if spec is not None:
        cloud = da.map_blocks(cloud_pixels, _warped_mask(spec["path"], grid, chunk_px), spec=spec, dtype=bool)
    return layers, has_data, cloud, spec


def _mosaic_index(data_and_cloud: list[tuple[da.Array, da.Array]], base_ok: da.Array, grid: AnalysisGrid,
                  chunk_px: int) -> tuple[da.Array, list[da.Array]]:
    """The scene index (uint8, 0 = none, k = the first scene, best first, with data and no cloud where
    ``base_ok``) and, per scene, the pixels it would give that its cloud mask removed."""
    index = da.zeros(grid.shape, dtype=np.uint8, chunks=(chunk_px, chunk_px))
    cloud_lost = []
    for k, (has_data, cloud) in enumerate(data_and_cloud, start=1):
        open_px = (index == 0) & base_ok
        cloud_lost.append(open_px & has_data & cloud)
        index = da.where(open_px & has_data & ~cloud, np.uint8(k), index)
    return index, cloud_lost


def _mosaic_channels(terrain: dict[str, da.Array], scene_layers: list[dict[str, da.Array]], index: da.Array,
                     empty: da.Array) -> list[da.Array]:
    """The 14 channels in BAND_NAMES order: terrain as is, each spectral band from the scene ``index``
    names (``empty`` where no scene has the band)."""
    channels = []
    for name in BAND_NAMES:
        if name in terrain:
            channels.append(terrain[name])
            continue
        data = empty
        for k, layers in enumerate(scene_layers, start=1):
            if name in layers:
                data = da.where(index == k, layers[name], data)
        channels.append(data)
    return channels


def _chunk_sizes(grid: AnalysisGrid, chunk_px: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The rows and columns of each chunk of a (H, W) layer on ``grid`` (edge chunks are smaller)."""
    return (tuple(min(chunk_px, grid.height - r) for r in range(0, grid.height, chunk_px)),
            tuple(min(chunk_px, grid.width - c) for c in range(0, grid.width, chunk_px)))


def _chunk_windows(grid: AnalysisGrid, chunk_px: int) -> list[Window]:
    """The grid cut into chunk-sized windows, row by row (edge windows are smaller)."""
    return [Window(c, r, min(chunk_px, grid.width - c), min(chunk_px, grid.height - r))
            for r in range(0, grid.height, chunk_px) for c in range(0, grid.width, chunk_px)]


class _WindowGraph:
    """The plan's lazy layers as one task graph (their own graphs merged), built once for the whole
    grid; a window (one chunk of every layer: the windows are the chunks) is computed from the part
    of the graph it needs, so each warp runs once per window. Slicing the layers and optimizing a
    graph per window cost 1.3-1.5 of 9-10 CPU-s per 1,000 km2 (benchmarks/README.md)."""

    def __init__(self, plan: _StackPlan, grid: AnalysisGrid, chunk_px: int) -> None:
        rows, cols = _chunk_sizes(grid, chunk_px)
        # (H, W) layers: the scene index, then the pixel counts' masks
        layers = [plan.index, plan.cloudy, plan.inside, *plan.cloud_lost, *plan.layer_data.values()]
        if plan.stack.chunks[1:] != (rows, cols) or any(a.chunks != (rows, cols) for a in layers):
            raise RuntimeError(f"the layers' chunks are not the {chunk_px}-px windows")
        # the layers' own graphs, merged, not optimized: dask's low-level fusion would inline a warp
        # into each task that uses it (measured: 2x the CPU time, every band read twice)
        self.graph: dict = {}
        for collection in (plan.stack, *layers):
            self.graph.update(collection.__dask_graph__())
        self.stack_keys = plan.stack.__dask_keys__()  # [band][row][col]
        self.layer_keys = [a.__dask_keys__() for a in layers]  # [row][col]
        self.chunk_px = chunk_px
        self.n_lost = len(plan.cloud_lost)

    def compute(self, win: Window) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """One window: (14, h, w) stack, (h, w) scene index, and its pixel counts (cloudy, per-scene
        cloud-lost, ROI, per-layer data)."""
        i, j = int(win.row_off) // self.chunk_px, int(win.col_off) // self.chunk_px
        keys = [band[i][j] for band in self.stack_keys] + [k[i][j] for k in self.layer_keys]
        needed, _ = cull(self.graph, keys)
        values = dask.threaded.get(needed, keys)
        n_bands = len(self.stack_keys)
        block = np.concatenate(values[:n_bands], axis=0)
        idx, cloudy, inside, *rest = values[n_bands:]
        sums = [int(np.count_nonzero(v)) for v in rest]
        return block, idx, {"cloudy_px": int(np.count_nonzero(cloudy)),
                            "roi_px": int(np.count_nonzero(inside)),
                            "cloud_lost_px": sums[:self.n_lost], "layer_data_px": sums[self.n_lost:]}


def _add_window_counts(counts: _WindowCounts, block: np.ndarray, idx: np.ndarray,
                       window_counts: dict[str, Any]) -> None:
    """Add one computed window's pixel counts to ``counts`` (in place)."""
    counts.cloudy_px += int(window_counts["cloudy_px"])
    counts.roi_px += int(window_counts["roi_px"])
    counts.cloud_lost_px += np.asarray(window_counts["cloud_lost_px"], dtype=np.int64)
    counts.layer_data_px += np.asarray(window_counts["layer_data_px"], dtype=np.int64)
    counts.taken_px += np.bincount(idx.ravel(), minlength=len(counts.taken_px))
    # per band: count_nonzero without an axis counts bytes directly (2.4x faster than a bool sum)
    counts.finite_px += np.array([np.count_nonzero(np.isfinite(band)) for band in block], dtype=np.int64)
    counts.moments.add(block[[band_index(b) for b in counts.moments.bands]])


@contextmanager
def _writing_stack(plan: _StackPlan, grid: AnalysisGrid, work_dir: Path, chunk_px: int,
                   progress: bool) -> Iterator[_WindowCounts]:
    """Compute and write stack.tif, valid.tif and scene_index.tif window by window under temporary
    names; yield the pixel counts, then rename the files into place when the caller's block ends
    (nothing is renamed if it raises)."""
    # work_raster_profile: tiled, lossless ZSTD-1 (~4x faster than deflate)
    base = {"driver": "GTiff", "width": grid.width, "height": grid.height, "crs": grid.crs,
            "transform": grid.transform, "BIGTIFF": "IF_SAFER"}
    stack_profile = work_raster_profile(base, dtype="float32", count=len(BAND_NAMES), nodata=np.nan,
                                        predictor=3, interleave="band")
    if not compress_stack(work_dir, grid.width * grid.height * len(BAND_NAMES) * 4):
        stack_profile = uncompressed(stack_profile)
    mask_profile = work_raster_profile(base, dtype="uint8")
    # One chunk-sized window at a time: one pass over the window's part of the task graph
    # (_WindowGraph) evaluates the stack, the valid mask and the scene index of that window together
    # (each warp runs once) and the result is written before the next window starts, so memory holds
    # one window of 14 bands per scene however large the grid is. Band interleave: with pixel
    # interleave every band write would recompress all bands' tiles.
    windows = _chunk_windows(grid, chunk_px)
    n_scenes = len(plan.cloud_lost)
    counts = _WindowCounts(taken_px=np.zeros(n_scenes + 1, dtype=np.int64),
                           cloud_lost_px=np.zeros(n_scenes, dtype=np.int64),
                           finite_px=np.zeros(len(BAND_NAMES), dtype=np.int64),
                           moments=BandMoments(tuple(plan.layer_data)),
                           layer_data_px=np.zeros(len(plan.layer_data), dtype=np.int64))
    # renamed into place when the block ends, in this order: stack, valid, index
    with atomic_write(work_dir / SCENE_INDEX_NAME, suffix=".tmp.tif") as tmp_index, \
            atomic_write(work_dir / "valid.tif", suffix=".tmp.tif") as tmp_valid, \
            atomic_write(work_dir / "stack.tif", suffix=".tmp.tif") as tmp_stack:
        with rasterio.open(tmp_stack, "w", **stack_profile) as dst, \
                rasterio.open(tmp_valid, "w", **mask_profile) as vdst, \
                rasterio.open(tmp_index, "w", **mask_profile) as idst, \
                dask.config.set(scheduler="threads"):
            # window k is compressed and written by one writer thread while window k+1 is computed (GDAL
            # releases the GIL in both); at most one write is pending, so memory holds two windows.
            pending = None
            window_graph = _WindowGraph(plan, grid, chunk_px)
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-writer") as writer:
                for win in tqdm(windows, desc="align", unit="window", disable=not progress, mininterval=1.0):
                    try:
                        block, idx, window_counts = window_graph.compute(win)
                    except RasterioIOError as exc:  # a file damaged past the blocks checked up front
                        files = ", ".join(plan.sources[:6]) + (" ..." if len(plan.sources) > 6 else "")
                        raise InputError(
                            f"reading the input rasters failed while aligning grid rows "
                            f"{win.row_off}..{win.row_off + win.height} ({str(exc).splitlines()[0]}): "
                            f"one of {files} is damaged; check each with `gdalinfo -checksum` and "
                            "download or copy the bad one again") from None
                    _add_window_counts(counts, block, idx, window_counts)
                    if pending is not None:
                        pending.result()  # re-raises a failed write here
                    pending = writer.submit(_write_window, (dst, vdst, idst), block, idx, win)
                if pending is not None:
                    pending.result()
        _tag_stack_files(tmp_stack, tmp_index)
        yield counts


# Writing and reading stack.tif uncompressed took a fifth of the CPU time of ZSTD with the
# floating-point predictor (benchmarks/README.md) for five times the disk: 0.6 GB per 1,000 km2,
# 6.8 GB for a full Sentinel-2 tile. It is a work file, removed when the run is published. The
# block results and prob/uncertainty rasters (a seventh of its size) follow its choice.
STACK_FREE_MARGIN_BYTES = 2 * 2**30


def compress_stack(work_dir: str | Path, n_bytes: int) -> bool:
    """Whether ``stack.tif`` is written compressed (lossless ZSTD with the floating-point
    predictor): only where the work folder's disk lacks room for it uncompressed (``n_bytes``)
    twice over plus :data:`STACK_FREE_MARGIN_BYTES`. Either way the same values."""
    free = shutil.disk_usage(work_dir).free
    if free >= 2 * n_bytes + STACK_FREE_MARGIN_BYTES:
        return False
    log.info("stack.tif is compressed: %.1f GB free beside it for %.1f GB uncompressed",
             free / 1e9, n_bytes / 1e9)
    return True


def _tag_stack_files(stack_path: Path, index_path: Path) -> None:
    """Band names and units on the stack; what the scene index means on the index."""
    with rasterio.open(stack_path, "r+") as dst:
        dst.descriptions = BAND_NAMES
        for i, name in enumerate(BAND_NAMES, start=1):
            dst.update_tags(i, unit=get_band(name).unit)
    with rasterio.open(index_path, "r+") as idst:
        idst.set_band_description(1, "source scene: 0 none, k = entry k of scenes.json")
        idst.update_tags(scenes=SCENES_NAME, rule=MOSAIC_RULE)


def _scene_entries(scenes: list[dict], counts: _WindowCounts) -> list[dict]:
    """The ``scenes.json`` entries: each scene's description and the pixels it gave / lost to cloud."""
    return [scene_entry(k, s["scene_id"], s.get("acquired"), s.get("cloud_pct"),
                        s.get("processing_baseline"), float(s.get("offset_dn") or 0.0),
                        int(counts.taken_px[k]), int(counts.cloud_lost_px[k - 1]))
            for k, s in enumerate(scenes, start=1)]


def _write_stack_records(work_dir: Path, scenes: list[dict], cloud_specs: list[dict | None],
                         entries: list[dict], stats: dict, counts: _WindowCounts, grid_px: int,
                         valid_px: int, detector_off: dict[str, str] | None = None) -> None:
    """Write scenes.json, stack_stats.json and cloud_mask.json."""
    write_scenes(work_dir, entries, grid_px, valid_px)
    (work_dir / "stack_stats.json").write_text(json.dumps(stats, indent=2))
    write_cloud_records(work_dir, [(s["scene_id"], spec, int(counts.cloud_lost_px[k]))
                                   for k, (s, spec) in enumerate(zip(scenes, cloud_specs))], grid_px,
                        detector_off)


def _write_window(datasets, block: np.ndarray, idx: np.ndarray, win: Window) -> None:
    stack_dst, valid_dst, index_dst = datasets
    stack_dst.write(block, window=win)
    valid_dst.write((idx > 0).astype(np.uint8), 1, window=win)
    index_dst.write(idx, 1, window=win)


def _warped_mask(path: str, grid: AnalysisGrid, chunk_px: int) -> da.Array:
    """A lazy (H, W) view of a categorical mask on ``grid`` (nearest; raw values, no nodata masking)."""
    src = rasterio.open(path)
    if src.crs is None:
        raise InputError(f"cloud mask {path} has no CRS; set one with gdal_edit.py -a_srs EPSG:XXXX")
    vrt = WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                    resampling=Resampling.nearest)
    arr = rioxarray.open_rasterio(vrt, chunks={"band": 1, "y": chunk_px, "x": chunk_px}, lock=False)
    return arr.isel(band=0).data


def _count_source_nan(path: str) -> int:
    """NaN pixels in a float source raster, block by block (integer rasters hold none)."""
    with rasterio.open(path) as src:
        if not np.issubdtype(np.dtype(src.dtypes[0]), np.floating):
            return 0
        return int(sum(np.isnan(src.read(1, window=w)).sum() for _, w in src.block_windows(1)))


def _stack_stats(counts: _WindowCounts, grid_px: int, nan_in_source: dict[str, int]) -> dict:
    """Per band: the finite fraction over the grid; for the required bands also the mean and standard
    deviation over the valid pixels (physical units; None without any), from the moments taken
    while writing."""
    mean, cov = counts.moments.mean, counts.moments.covariance
    stats = {}
    for i, name in enumerate(BAND_NAMES):
        stats[name] = {"finite_fraction": round(int(counts.finite_px[i]) / grid_px, 6),
                       **({"nan_pixels_in_source": nan_in_source[name]} if name in nan_in_source else {})}
        if name in counts.moments.bands:
            j = counts.moments.bands.index(name)
            stats[name]["mean"] = None if mean is None else round(float(mean[j]), 4)
            stats[name]["std"] = None if cov is None else round(float(np.sqrt(max(cov[j, j], 0.0))), 4)
    return stats
