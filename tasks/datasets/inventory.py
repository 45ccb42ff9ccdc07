"""Training datasets from any landslide inventory (polygons): ``landslide make-dataset``.

The region's scene is aligned on the analysis grid exactly as a scan aligns it
(``tasks.sources`` + ``tasks.raster.align.build_stack`` on ``tasks.core.grid.make_grid``), and the
inventory's polygons are burnt onto that grid (``tasks.vector.rasterize``):

- 1 where a polygon of a chosen class covers the pixel (its centre; every touched pixel with
  ``all_touched``),
- 0 elsewhere inside the mapped area (the area the inventory's author interpreted),
- 255 (ignored) outside the mapped area and where the scene has no data.

Classes map names to layers of the labels file (``scar=collapse_scars``); a layer named with
``label_layers`` is a class of its own name. The labelled area is then cut in two along one axis
(:func:`split_windows`, pure): the southern (``lat``) or eastern (``lon``) ``val_fraction`` of the
labelled rows/columns is validation, a gap of ``gap_px`` pixels before it belongs to no split, the
rest is training; each part is written as its own rasters, cropped to its labelled pixels, so no
training patch can contain a validation pixel. Output (the scene layout of
``models.data.datasets``)::

    OUT/dataset.json  OUT/ATTRIBUTION.txt (with --attribution)
    OUT/train/{image.tif, labels.tif, dataset.json}   OUT/val/{...}

Everything is written into a hidden folder beside ``OUT`` and renamed into place at the end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from shapely.geometry import box

from models.metrics import IGNORE
from tasks.core import defaults
from tasks.core.bands import BAND_NAMES, EVENT_BAND_NAMES, PRE_PREFIX, spectral_request
from tasks.core.errors import InputError
from tasks.core.files import utc_now_iso, work_raster_profile
from tasks.core.grid import AnalysisGrid, make_grid, read_aoi, resolve_roi, roi_in_grid_crs
from tasks.raster.align import build_stack
from tasks.raster.event_stack import build_bitemporal
from tasks.sources.catalog import LocalSource, load_catalog
from tasks.sources.event import EventInputs, EventWindows, resolve_event_inputs
from tasks.sources.local import SceneInputs, resolve_local_inputs, select_scene
from tasks.sources.remote import cache_root, fetch_remote_inputs
from tasks.vector.rasterize import PolygonLayer, list_layers, rasterize_polygons, read_polygons

DEFAULT_VAL_FRACTION = 0.25
DEFAULT_GAP_PX = defaults.PATCH_PX  # one patch
SPLIT_AXES = ("lat", "lon")
REMOTE_DEFAULT_BANDS = ("B02", "B03", "B04", "B08")
ATTRIBUTION_NAME = "ATTRIBUTION.txt"
_COPY_ROWS = 512  # rows of image copied per read (bounded memory for large splits)


# ---------------------------------------------------------------------------------------------
# pure parts: classes and the split


def parse_class_specs(class_specs: list[str] | tuple[str, ...],
                      label_layers: list[str] | tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """``["scar=collapse_scars", "slide=a+b"]`` and ``label_layers`` -> class name -> layers.

    A ``label_layers`` entry ``L`` is the class ``L=L``.

    Raises:
        InputError: a spec that is not ``NAME=LAYER[+LAYER...]``, or a class defined twice.
    """
    classes: dict[str, tuple[str, ...]] = {}
    for spec in class_specs:
        name, sep, rhs = spec.partition("=")
        layers = tuple(p.strip() for p in rhs.split("+"))
        if not sep or not name.strip() or not all(layers):
            raise InputError(f"--class {spec!r}: expected NAME=LAYER or NAME=LAYER+LAYER "
                             "(e.g. --class scar=collapse_scars)")
        name = name.strip()
        if name in classes:
            raise InputError(f"--class {name!r} is defined twice")
        classes[name] = layers
    for layer in label_layers:
        if layer in classes:
            raise InputError(f"--label-layer {layer!r}: a class of that name is already defined")
        classes[layer] = (layer,)
    return classes


def resolve_classes(file_layers: list[str], class_specs: list[str] | tuple[str, ...] = (),
                    label_layers: list[str] | tuple[str, ...] = (),
                    chosen: list[str] | tuple[str, ...] | None = None, *, path: str | Path = "",
                    mapped_layer: str | None = None) -> dict[str, tuple[str, ...]]:
    """The chosen classes (name -> layers of the labels file), in the order given.

    Without ``class_specs``/``label_layers`` every layer of the file (but ``mapped_layer``) is a
    class of its own name; ``chosen`` (``--classes``) picks among the classes (default: all of
    them, which must then be one layer when nothing was defined).

    Raises:
        InputError: unknown class or layer (the message lists what exists), the mapped-area layer
            used as a class, or several candidate layers and nothing chosen.
    """
    defined = parse_class_specs(class_specs, label_layers)
    where = f"{path} " if path else ""
    if not defined:
        candidates = [layer for layer in file_layers if layer != mapped_layer]
        if chosen is None:
            if len(candidates) != 1:
                raise InputError(
                    f"{where}has {len(candidates)} candidate layers ({', '.join(candidates)}): "
                    "name the landslide layers with --label-layer LAYER or --class NAME=LAYER "
                    "(e.g. --class scar=collapse_scars --class deposit=deposits)")
            chosen = candidates
        defined = {layer: (layer,) for layer in candidates}
    chosen = list(defined) if chosen is None else list(chosen)
    if not chosen:
        raise InputError("--classes is empty; name at least one class")
    unknown = [c for c in chosen if c not in defined]
    if unknown:
        have = ", ".join(f"{n} ({'+'.join(ls)})" for n, ls in defined.items())
        raise InputError(f"--classes: unknown class {unknown[0]!r}; the classes are {have}")
    result = {c: defined[c] for c in dict.fromkeys(chosen)}
    for name, layers in result.items():
        for layer in layers:
            if layer not in file_layers:
                raise InputError(f"{where}has no layer {layer!r} (class {name!r}); its layers: "
                                 f"{', '.join(file_layers)}")
            if layer == mapped_layer:
                raise InputError(f"layer {layer!r} is the --mapped-area; it cannot also be the "
                                 f"landslide class {name!r}")
    return result


@dataclass(frozen=True)
class PixelWindow:
    """Rows ``row0:row1`` and columns ``col0:col1`` (half-open) of the full analysis grid."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    @property
    def window(self) -> Window:
        return Window(self.col0, self.row0, self.width, self.height)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row1), slice(self.col0, self.col1)

    def to_dict(self) -> dict:
        return {"row0": self.row0, "row1": self.row1, "col0": self.col0, "col1": self.col1,
                "height": self.height, "width": self.width}


@dataclass(frozen=True)
class SplitWindows:
    """The spatial split of a label raster: training and validation windows and the gap between.

    Along ``axis`` (``lat``: rows, validation in the south; ``lon``: columns, validation in the
    east), ``labelled`` spans lines ``[a, b)``; validation is the band ``[cut, b)``, the gap
    ``[cut - gap_px, cut)``, training ``[a, cut - gap_px)``; ``train``/``val`` are those bands
    cropped to their labelled pixels, so they are at least ``gap_px`` lines apart.
    """

    axis: str
    val_fraction: float
    gap_px: int
    labelled: PixelWindow
    cut: int  # first row (lat) / column (lon) of the validation band
    train: PixelWindow
    val: PixelWindow

    @property
    def gap(self) -> tuple[int, int]:
        """The nominal gap's lines along the axis (half-open)."""
        return self.cut - self.gap_px, self.cut

    @property
    def distance_px(self) -> int:
        """Lines between the last training and the first validation line (>= ``gap_px``)."""
        if self.axis == "lat":
            return self.val.row0 - self.train.row1
        return self.val.col0 - self.train.col1

    def to_dict(self) -> dict:
        return {"axis": self.axis, "val_fraction": self.val_fraction, "gap_px": self.gap_px,
                "labelled_window": self.labelled.to_dict(), "cut": self.cut,
                "gap_lines": list(self.gap), "train_to_val_distance_px": self.distance_px,
                "train_window": self.train.to_dict(), "val_window": self.val.to_dict()}


def check_split_options(axis: str, val_fraction: float, gap_px: int) -> None:
    """Raises InputError for an unknown axis, a fraction outside (0, 1) or a negative gap."""
    if axis not in SPLIT_AXES:
        raise InputError(f"--split-axis must be one of {', '.join(SPLIT_AXES)}, got {axis!r}")
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if gap_px < 0:
        raise InputError(f"--gap-px must be >= 0, got {gap_px}")


def _labelled_box(labelled: np.ndarray, row0: int, row1: int, col0: int, col1: int) -> PixelWindow:
    part = labelled[row0:row1, col0:col1]
    rows = np.flatnonzero(part.any(axis=1))
    cols = np.flatnonzero(part.any(axis=0))
    return PixelWindow(row0 + int(rows[0]), row0 + int(rows[-1]) + 1,
                       col0 + int(cols[0]), col0 + int(cols[-1]) + 1)


def split_windows(labels: np.ndarray, axis: str = "lat", val_fraction: float = DEFAULT_VAL_FRACTION,
                  gap_px: int = DEFAULT_GAP_PX, ignore: int = IGNORE) -> SplitWindows:
    """Cut the labelled pixels (``labels != ignore``) of a north-up (H, W) raster in two.

    ``lat``: the southern ``val_fraction`` of the labelled rows (from the first to the last row
    holding a labelled pixel, rounded, at least one) is validation; the ``gap_px`` rows north of it
    belong to no split; the rows north of the gap are training. ``lon``: the same with columns,
    validation in the east. Each part is cropped to its labelled pixels.

    Raises:
        InputError: bad options, no labelled pixel, or a gap that leaves no training line.
    """
    check_split_options(axis, val_fraction, gap_px)
    labelled = np.asarray(labels) != ignore
    if not labelled.any():
        raise InputError("no labelled pixel to split: every label is ignore (255)")
    height, width = labelled.shape
    full = _labelled_box(labelled, 0, height, 0, width)
    a, b = (full.row0, full.row1) if axis == "lat" else (full.col0, full.col1)
    n = b - a
    n_val = max(1, round(val_fraction * n))
    cut = b - n_val
    train_end = cut - gap_px
    if train_end <= a:
        what = "rows" if axis == "lat" else "columns"
        raise InputError(
            f"--gap-px {gap_px} leaves no training part: the labelled area spans {n} {what}, of "
            f"which validation (--val-fraction {val_fraction:g}) takes {n_val}; use a smaller "
            "--gap-px or --val-fraction, or a larger ROI")
    if axis == "lat":
        train = _labelled_box(labelled, a, train_end, 0, width)
        val = _labelled_box(labelled, cut, b, 0, width)
    else:
        train = _labelled_box(labelled, 0, height, a, train_end)
        val = _labelled_box(labelled, 0, height, cut, b)
    return SplitWindows(axis=axis, val_fraction=float(val_fraction), gap_px=int(gap_px),
                        labelled=full, cut=int(cut), train=train, val=val)


def label_counts(labels: np.ndarray, class_masks: dict[str, np.ndarray] | None = None) -> dict:
    """Pixels per label value (the weak-label dataset's keys) and, per class, its labelled pixels."""
    counts = {"landslide_px": int((labels == 1).sum()), "background_px": int((labels == 0).sum()),
              "ignored_px": int((labels == IGNORE).sum())}
    if class_masks is not None:
        labelled = labels != IGNORE
        counts["class_px"] = {name: int((mask.astype(bool) & labelled).sum())
                              for name, mask in class_masks.items()}
    return counts


def window_lonlat_bounds(window: PixelWindow, grid: AnalysisGrid) -> list[float]:
    """``[west, south, east, north]`` in EPSG:4326 of a window of ``grid``."""
    b = window_bounds(window.window, grid.transform)
    return [round(v, 6) for v in transform_bounds(grid.crs, "EPSG:4326", *b, densify_pts=21)]


# ---------------------------------------------------------------------------------------------
# inputs: the labels file, the mapped area, the attribution, the scene


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _labels_layers(path: Path) -> list[str]:
    try:
        layers = list_layers(path)
    except InputError as exc:
        raise InputError(f"--labels {exc}") from None
    if not layers:
        raise InputError(f"--labels {path} holds no layer")
    return layers


def _read_layer(path: str | Path, layer: str | None) -> PolygonLayer:
    try:
        return read_polygons(path, layer)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a layer OGR lists but cannot read
        raise InputError(f"{path} layer {layer!r} cannot be read ({exc})") from None


def resolve_mapped_area(labels_path: Path, labels_layers: list[str], mapped_area: str | None,
                        mapped_area_layer: str | None = None) -> tuple[Path, str | None] | None:
    """``--mapped-area``: a layer of the labels file, or another vector file (its only layer, or
    ``mapped_area_layer``); None without it.

    Raises:
        InputError: neither a layer of the labels file nor an existing file.
    """
    if mapped_area is None:
        if mapped_area_layer is not None:
            raise InputError("--mapped-area-layer needs --mapped-area FILE")
        return None
    if mapped_area in labels_layers and mapped_area_layer is None:
        return labels_path, mapped_area
    path = Path(mapped_area)
    if not path.exists():
        raise InputError(f"--mapped-area {mapped_area!r} is neither a layer of {labels_path} "
                         f"({', '.join(labels_layers)}) nor an existing file")
    return path, mapped_area_layer


def readme_with_attribution_terms(labels_path: Path) -> Path | None:
    """A README beside the labels file that speaks of attribution (its terms must travel along)."""
    for p in sorted(labels_path.parent.glob("*")):
        if p.is_file() and p.name.lower().startswith("readme") and \
                p.suffix.lower() in ("", ".md", ".txt", ".rst"):
            try:
                if "attribution" in p.read_text(errors="replace").lower():
                    return p
            except OSError:
                continue
    return None


def _is_file(p: Path) -> bool:
    try:
        return "\n" not in str(p) and p.is_file()
    except (OSError, ValueError):  # a long text is not a file name
        return False


def attribution_text(values: list[str] | tuple[str, ...], labels_path: Path) -> str | None:
    """The ``--attribution`` paragraphs (each TEXT, or the text of FILE) joined by blank lines.

    Raises:
        InputError: a FILE-like value that does not exist, or no attribution while a README beside
            the labels file sets attribution terms.
    """
    parts = []
    for value in values:
        p = Path(value)
        if _is_file(p):
            parts.append(p.read_text().strip())
        elif p.suffix.lower() in (".txt", ".md") and " " not in value:
            raise InputError(f"--attribution file {value} does not exist (pass the text itself, "
                             "or an existing file)")
        elif value.strip():
            parts.append(value.strip())
    if not parts:
        readme = readme_with_attribution_terms(labels_path)
        if readme is not None:
            raise InputError(f"{readme} (beside --labels) sets attribution terms: pass "
                             "--attribution TEXT|FILE (repeatable) with the text it requires; it "
                             f"is written to OUT/{ATTRIBUTION_NAME}")
        return None
    return "\n\n".join(parts)


def _scene_inputs(catalog_path: str | None, region_name: str, bbox: list[float] | None,
                  bands: list[str] | tuple[str, ...] | None, cache_dir: str | None,
                  windows: EventWindows | None = None
                  ) -> tuple[SceneInputs, shapely.Geometry, tuple[str, ...], EventInputs | None]:
    """The region's scene and ROI, resolved the way ``tasks.run.plan.plan_scan`` does; in event
    mode (``windows``) the post-event scene, and both scenes as EventInputs."""
    catalog = load_catalog(catalog_path)
    region = catalog.region(region_name)
    source = catalog.source(region.source)
    if bands:
        wanted = spectral_request(bands)
    elif isinstance(source, LocalSource):
        wanted = select_scene(source, region.start, region.end, region.source).band_names
    else:
        wanted = REMOTE_DEFAULT_BANDS
    extent = (-180.0, -90.0, 180.0, 90.0)
    inputs = event = None
    if isinstance(source, LocalSource) and windows is not None:
        event = resolve_event_inputs(catalog, region.source, windows, tuple(wanted), tuple(wanted))
        inputs, extent = event.post, event.post.extent_lonlat
        pre_extent = event.pre.extent_lonlat
        extent = (max(extent[0], pre_extent[0]), max(extent[1], pre_extent[1]),
                  min(extent[2], pre_extent[2]), min(extent[3], pre_extent[3]))
    elif isinstance(source, LocalSource):
        inputs = resolve_local_inputs(catalog, region.source, wanted, region.start, region.end)
        extent = inputs.extent_lonlat
    region_aoi = read_aoi(catalog.resolve(region.aoi)) if region.aoi else None
    roi = resolve_roi(region.bbox, region_aoi, bbox, None, extent)
    if inputs is None and windows is not None:
        event = resolve_event_inputs(catalog, region.source, windows, tuple(wanted), tuple(wanted),
                                     roi, cache_root(cache_dir))
        inputs = event.post
    elif inputs is None:
        inputs = fetch_remote_inputs(source, region.source, wanted, roi, region.start, region.end,
                                     cache_root(cache_dir))
    return inputs, roi, tuple(wanted), event


def _fmt_bounds(b) -> str:
    return f"lon {b[0]:.4f}..{b[2]:.4f}, lat {b[1]:.4f}..{b[3]:.4f}"


def _lonlat_bounds(frame: gpd.GeoDataFrame) -> list[float]:
    return [float(v) for v in frame.geometry.to_crs("EPSG:4326").total_bounds]


def _in_area(frame: gpd.GeoDataFrame, area_lonlat: shapely.Geometry) -> np.ndarray:
    """bool per row: the geometry intersects ``area_lonlat`` (EPSG:4326)."""
    area = gpd.GeoSeries([shapely.segmentize(area_lonlat, 0.001)], crs="EPSG:4326")
    area = area.to_crs(frame.crs).iloc[0]
    idx = frame.sindex.query(area, predicate="intersects")
    hit = np.zeros(len(frame), dtype=bool)
    hit[idx] = True
    return hit


def _grid_lonlat(grid: AnalysisGrid) -> shapely.Geometry:
    g = gpd.GeoSeries([shapely.segmentize(box(*grid.bounds), grid.res_m * 64)], crs=grid.crs)
    return g.to_crs("EPSG:4326").iloc[0].buffer(1e-4)


@dataclass(frozen=True)
class BurntLabels:
    """The label raster of a dataset and what it was made of (all on the analysis grid)."""

    labels: np.ndarray  # (H, W) uint8: 1 landslide, 0 background, 255 ignore
    class_masks: dict[str, np.ndarray]  # class -> (H, W) uint8, 1 where its polygons burn
    outside_mapped_px: int  # landslide pixels with image data that lie outside the mapped area


def burn_labels(grid: AnalysisGrid, valid: np.ndarray, classes: dict[str, list[PolygonLayer]],
                mapped: PolygonLayer | None, all_touched: bool = False) -> BurntLabels:
    """1 where a polygon of any class burns (``rasterize_polygons``), 0 elsewhere inside the
    mapped area (pixel centres; everywhere without one), 255 outside it and where not ``valid``."""
    near = _grid_lonlat(grid)  # only the polygons that can reach the grid (the others burn nothing)
    class_masks = {}
    for cls, layers in classes.items():
        mask = np.zeros(grid.shape, dtype=np.uint8)
        for layer in layers:
            rasterize_polygons(layer.frame.geometry[_in_area(layer.frame, near)], grid, value=1,
                               all_touched=all_touched, out=mask)
        class_masks[cls] = mask
    landslide = np.zeros(grid.shape, dtype=bool)
    for mask in class_masks.values():
        landslide |= mask.astype(bool)
    if mapped is not None:
        mapped_mask = rasterize_polygons(mapped.frame.geometry[_in_area(mapped.frame, near)],
                                         grid).astype(bool)
    else:
        mapped_mask = np.ones(grid.shape, dtype=bool)
    labels = np.where(valid & mapped_mask, landslide.astype(np.uint8), IGNORE).astype(np.uint8)
    return BurntLabels(labels, class_masks, int((landslide & valid & ~mapped_mask).sum()))


# ---------------------------------------------------------------------------------------------
# the dataset


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; name a folder")
    if out.exists() and not overwrite:
        raise InputError(f"--out {out} already exists; pass --overwrite to replace it")


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` folder to ``out`` (replacing it with ``overwrite``)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    _check_out(out, overwrite)
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_split(d: Path, stack_path: str, labels: np.ndarray, win: PixelWindow,
                 descriptions: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with rasterio.open(stack_path) as src:
        profile = work_raster_profile(src.profile, dtype="float32", count=src.count, nodata=np.nan)
        profile.update(driver="GTiff", height=win.height, width=win.width,
                       transform=src.window_transform(win.window))
        names = EVENT_BAND_NAMES if src.count == len(EVENT_BAND_NAMES) else BAND_NAMES
        with rasterio.open(d / "image.tif", "w", **profile) as dst:
            for r in range(0, win.height, _COPY_ROWS):
                h = min(_COPY_ROWS, win.height - r)
                data = src.read(window=Window(win.col0, win.row0 + r, win.width, h))
                dst.write(data, window=Window(0, r, win.width, h))
            dst.descriptions = names
        lab_profile = {**profile, "count": 1, "dtype": "uint8", "nodata": None}
        with rasterio.open(d / "labels.tif", "w", **lab_profile) as dst:
            dst.write(labels[win.slices()][None])
            dst.descriptions = (descriptions,)


def _crop_grid(grid: AnalysisGrid, win: PixelWindow) -> AnalysisGrid:
    return AnalysisGrid(crs=grid.crs, res_m=grid.res_m, xmin=grid.xmin + win.col0 * grid.res_m,
                        ymax=grid.ymax - win.row0 * grid.res_m, width=win.width, height=win.height)


def build_inventory_dataset(out_dir: str | Path, labels_path: str | Path, region: str, *,
                            class_specs: list[str] | tuple[str, ...] = (),
                            label_layers: list[str] | tuple[str, ...] = (),
                            classes: list[str] | tuple[str, ...] | None = None,
                            mapped_area: str | None = None, mapped_area_layer: str | None = None,
                            all_touched: bool = False, val_fraction: float = DEFAULT_VAL_FRACTION,
                            split_axis: str = "lat", gap_px: int = DEFAULT_GAP_PX,
                            catalog_path: str | None = None, bbox: list[float] | None = None,
                            bands: list[str] | tuple[str, ...] | None = None,
                            name: str | None = None,
                            attribution: list[str] | tuple[str, ...] = (),
                            overwrite: bool = False, cache_dir: str | None = None,
                            progress: bool = False, event_date: dt.date | None = None,
                            pre_days: int = defaults.PRE_DAYS,
                            post_days: int = defaults.POST_DAYS) -> dict:
    """Write ``out_dir/{train,val}/{image,labels,dataset}`` + ``dataset.json`` (+ attribution).

    With ``event_date`` the images are bi-temporal: the 14 channels of the post-event scene and
    the 12 ``PRE_`` channels of the pre-event scene (``tasks.sources.event``), labelled only where
    both scenes have data.

    Every user mistake raises :class:`InputError` before anything is written; a failure later
    leaves nothing under ``out_dir`` (the dataset is built in a hidden folder beside it).

    Returns:
        the top-level ``dataset.json`` content.
    """
    check_split_options(split_axis, val_fraction, gap_px)
    out = Path(out_dir)
    _check_out(out, overwrite)
    labels_path = Path(labels_path)
    file_layers = _labels_layers(labels_path)
    mapped_src = resolve_mapped_area(labels_path, file_layers, mapped_area, mapped_area_layer)
    mapped_in_labels = mapped_src is not None and mapped_src[0] == labels_path
    chosen = resolve_classes(file_layers, class_specs, label_layers, classes, path=labels_path,
                             mapped_layer=mapped_src[1] if mapped_in_labels else None)
    attr = attribution_text(attribution, labels_path)
    polys = {layer: _read_layer(labels_path, layer)
             for layer in dict.fromkeys(layer for ls in chosen.values() for layer in ls)}
    mapped = _read_layer(*mapped_src) if mapped_src else None
    windows = EventWindows(event_date, pre_days, post_days) if event_date else None
    inputs, roi, wanted, event = _scene_inputs(catalog_path, region, bbox, bands, cache_dir, windows)

    # vector checks before any pixel is read
    in_roi = {layer: _in_area(p.frame, roi) for layer, p in polys.items()}
    if not any(hit.any() for hit in in_roi.values()):
        layer_bounds = "; ".join(f"{layer}: {_fmt_bounds(_lonlat_bounds(p.frame))}"
                                 for layer, p in polys.items())
        raise InputError(f"{labels_path}: no polygon of layer(s) {', '.join(polys)} lies inside the "
                         f"ROI ({_fmt_bounds(roi.bounds)}); the layers cover {layer_bounds}; "
                         "choose a --bbox/--region inside them")
    if mapped is not None and not _in_area(mapped.frame, roi).any():
        raise InputError(f"--mapped-area {mapped.path} layer {mapped.layer!r} does not reach the ROI "
                         f"({_fmt_bounds(roi.bounds)}); it covers "
                         f"{_fmt_bounds(_lonlat_bounds(mapped.frame))}")

    grid = make_grid(roi)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        summary = _build(tmp, out, grid, roi, inputs, wanted, labels_path, chosen, polys, in_roi,
                         mapped, all_touched, split_axis, val_fraction, gap_px, region, name, attr,
                         progress, event)
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _build(tmp: Path, out: Path, grid: AnalysisGrid, roi: shapely.Geometry, inputs: SceneInputs,
           wanted: tuple[str, ...], labels_path: Path, chosen: dict[str, tuple[str, ...]],
           polys: dict[str, PolygonLayer], in_roi: dict[str, np.ndarray],
           mapped: PolygonLayer | None, all_touched: bool, split_axis: str, val_fraction: float,
           gap_px: int, region: str, name: str | None, attr: str | None, progress: bool,
           event: EventInputs | None = None) -> dict:
    required = tuple(wanted) + (("SLOPE", "DEM") if inputs.dem_path else ())
    if event is None:
        stack = build_stack(inputs, grid, tmp / ".work", required_bands=required,
                            roi_grid_crs=roi_in_grid_crs(roi, grid), progress=progress)
        stack_path, valid_path = stack.stack_path, stack.valid_path
    else:  # event mode: post 14 + pre-event 12 channels, valid where both scenes are
        required += tuple(PRE_PREFIX + b for b in wanted)
        _, both = build_bitemporal(event, grid, tmp / ".work", required,
                                   roi_grid_crs=roi_in_grid_crs(roi, grid), progress=progress)
        stack_path, valid_path = both["stack_path"], both["valid_path"]
    with rasterio.open(valid_path) as src:
        valid = src.read(1).astype(bool)

    burnt = burn_labels(grid, valid, {c: [polys[layer] for layer in ls] for c, ls in chosen.items()},
                        mapped, all_touched)
    labels, class_masks = burnt.labels, burnt.class_masks
    n_in_roi = {layer: int(hit.sum()) for layer, hit in in_roi.items()}
    if not (labels == 1).any():
        rule = "touches" if all_touched else "covers the centre of"
        raise InputError(
            f"the {sum(n_in_roi.values())} polygon(s) of {', '.join(polys)} in the ROI cover no "
            f"labelled pixel (no polygon {rule} a pixel that has image data and lies inside the "
            "mapped area)" + ("" if all_touched else "; try --all-touched"))

    split = split_windows(labels, split_axis, val_fraction, gap_px)
    axis_words = {"lat": ("latitude", "southern", "rows", "north"),
                  "lon": ("longitude", "eastern", "columns", "west")}[split_axis]
    parts = {"train": split.train, "val": split.val}
    part_bounds = {k: window_lonlat_bounds(w, grid) for k, w in parts.items()}
    for part, win in parts.items():
        if not (labels[win.slices()] == 1).any():
            b = part_bounds[part]
            raise InputError(
                f"the {'validation' if part == 'val' else 'training'} part ({_fmt_bounds(b)}) holds "
                f"no landslide pixel: the polygons in the ROI lie elsewhere; choose a --bbox, "
                f"--val-fraction or --split-axis that puts landslides on both sides of the split")

    rule = ("all_touched: a pixel is 1 when a polygon touches it" if all_touched
            else "centre: a pixel is 1 when its centre lies inside a polygon")
    class_text = ", ".join(f"{c}={'+'.join(ls)}" for c, ls in chosen.items())
    mapped_text = (f"outside the mapped area (layer {mapped.layer!r} of {Path(mapped.path).name})"
                   if mapped is not None else "outside the ROI")
    labels_prov = (
        f"real inventory labels: polygons of {labels_path.name} (classes {class_text}) rasterised "
        f"on the {grid.res_m:g} m analysis grid ({'all-touched' if all_touched else 'pixel-centre'} "
        f"rule): 1 = landslide (any chosen class), 0 = no polygon inside the mapped area, "
        f"255 (ignored) = {mapped_text} or no image data")
    val_b, train_b = part_bounds["val"], part_bounds["train"]
    if split_axis == "lat":
        split_text = (f"spatial split by latitude: val = the southern {val_fraction:.0%} of the "
                      f"labelled rows (lat {val_b[1]:.4f}..{val_b[3]:.4f}), train north of a "
                      f"{gap_px} px gap (lat {train_b[1]:.4f}..{train_b[3]:.4f})")
    else:
        split_text = (f"spatial split by longitude: val = the eastern {val_fraction:.0%} of the "
                      f"labelled columns (lon {val_b[0]:.4f}..{val_b[2]:.4f}), train west of a "
                      f"{gap_px} px gap (lon {train_b[0]:.4f}..{train_b[2]:.4f})")
    counts_all = label_counts(labels, class_masks)
    summary: dict = {
        "name": name or f"{labels_path.stem}-{region}",
        "summary": (f"{labels_path.name} over region {region} ({_fmt_bounds(roi.bounds)}), "
                    f"scene {inputs.scene_id}"
                    + (f" (post-event; pre-event scene {event.pre.scene_id}, event date "
                       f"{event.windows.event_date}; labelled only where both have data)"
                       if event else "") + f"; {split_text}."),
        "labels": labels_prov,
        "split": split_text,
        "created": utc_now_iso(),
        "tool": "landslide make-dataset",
        "region": region, "roi_lonlat": [round(v, 6) for v in roi.bounds],
        "scene_id": inputs.scene_id, "source": inputs.source,
        "event": ({**event.windows.to_dict(), "pre_scene_id": event.pre.scene_id,
                   "pre_acquired": event.pre.acquired,
                   "pre_acquired_range": event.pre.acquired_range,
                   "notes": event.post.notes + event.pre.notes} if event else None),
        "acquired": inputs.acquired, "acquired_range": inputs.acquired_range,
        "bands": list(required),
        "grid": grid.to_dict(),
        "labels_file": {
            "path": str(labels_path.resolve()), "sha256": file_sha256(labels_path),
            "classes": {c: list(ls) for c, ls in chosen.items()},
            "layers": {layer: {"crs": str(p.frame.crs), "polygons": len(p.frame),
                               "polygons_in_roi": n_in_roi[layer], "repaired": p.repaired,
                               "dropped": p.dropped, "bounds_lonlat": _lonlat_bounds(p.frame)}
                       for layer, p in polys.items()},
            "repaired": sum(p.repaired for p in polys.values()),
        },
        "mapped_area": ({"source": "labels file layer" if Path(mapped.path) == labels_path
                         else "file", "path": str(Path(mapped.path).resolve()),
                         "layer": mapped.layer, "polygons": len(mapped.frame),
                         "repaired": mapped.repaired,
                         "rule": "centre: a pixel is mapped when its centre lies inside the area",
                         "mapped_px": int((labels != IGNORE).sum())}
                        if mapped is not None else
                        {"source": None, "rule": "no --mapped-area: the whole ROI counts as mapped "
                                                 "(every pixel with image data is 0 or 1)",
                         "mapped_px": int((labels != IGNORE).sum())}),
        "rasterization": {"rule": "all_touched" if all_touched else "centre", "description": rule,
                          "values": {"1": "landslide (any chosen class)",
                                     "0": "mapped, no polygon of a chosen class",
                                     "255": f"ignored: {mapped_text} or no image data"},
                          "landslide_px_outside_mapped_area": burnt.outside_mapped_px},
        "spatial_split": {
            **split.to_dict(),
            "rule": (f"validation = the {axis_words[1]} {val_fraction:.0%} of the labelled "
                     f"{axis_words[2]}; the {gap_px} {axis_words[2]} before it belong to no split; "
                     f"training = the {axis_words[2]} {axis_words[3]} of the gap; each part is "
                     "cropped to its labelled pixels"),
            "train_lonlat": part_bounds["train"], "val_lonlat": part_bounds["val"],
            "gap_labelled_px": int(counts_all["landslide_px"] + counts_all["background_px"]
                                   - sum(int((labels[w.slices()] != IGNORE).sum())
                                         for w in parts.values())),
        },
        "counts": counts_all,
        "attribution": attr,
    }
    for part, win in parts.items():
        summary[part] = label_counts(labels[win.slices()],
                                     {c: m[win.slices()] for c, m in class_masks.items()})
    descr = f"inventory label ({class_text}): 1 landslide, 0 background, 255 ignore"
    for part, win in parts.items():
        d = tmp / part
        _write_split(d, stack_path, labels, win, descr)
        (d / "dataset.json").write_text(json.dumps(
            {**summary, "this_split": part, "split_grid": _crop_grid(grid, win).to_dict(),
             "split_window": win.to_dict(), "split_lonlat": part_bounds[part]}, indent=2))
        if attr:
            (d / ATTRIBUTION_NAME).write_text(_attribution_file(attr, labels_path, chosen))
    if attr:
        (tmp / ATTRIBUTION_NAME).write_text(_attribution_file(attr, labels_path, chosen))
    summary["out"] = str(out)
    (tmp / "dataset.json").write_text(json.dumps(summary, indent=2))
    return summary


def _attribution_file(attr: str, labels_path: Path, chosen: dict[str, tuple[str, ...]]) -> str:
    layers = ", ".join(dict.fromkeys(layer for ls in chosen.values() for layer in ls))
    return (f"{attr}\n\n"
            f"The labels of this dataset are {labels_path.name} (layers {layers}), rasterised onto "
            "the analysis grid and cut into training and validation parts by `landslide "
            "make-dataset`.\n")
