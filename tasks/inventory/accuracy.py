"""Inventory-level evaluation: score a finished run folder against a reference landslide inventory.

``landslide evaluate --reference inventory.gpkg --run RUN`` (see ``docs/evaluation.md``):

- **Labels**: the polygons of one or more layers of a vector file (any CRS, any OGR format), read
  and burnt with ``tasks.vector.rasterize``. "Landslide" = a polygon of any of these layers.
- **Scored area**: the run's footprint (where ``probability.tif`` != 255) inside the mapped area (a
  layer of the reference file or another file; without one, the whole footprint: the reference is
  then taken to be complete there).
- **Pixel metrics** on the run's grid: the reference burnt with the centre rule, against
  ``mask.tif`` (precision, recall, F1, IoU, Dice) and against ``probability.tif`` (AUC).
- **Object metrics** (:func:`match_objects`, pure): a reference landslide is *detected* when the
  run's polygons cover at least ``min_overlap_fraction`` of its area inside the scored area; a
  detection that overlaps no reference polygon is a *false detection*.

Every figure is reported with the labels (file, sha256, layers) and the area (definition, km2) it was
measured on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
import shapely
from PIL import Image
from pyproj import Transformer

from models.metrics import IGNORE, confusion, roc_auc, scores_from_confusion
from tasks.core.errors import InputError
from tasks.core.files import atomic_write, atomic_write_json, atomic_write_text
from tasks.core.gdal import gdal_env
from tasks.core.grid import AnalysisGrid
from tasks.vector.rasterize import list_layers, rasterize_polygons, read_polygons
from tasks.vector.vectorize import FOOTPRINT_LAYER, LANDSLIDES_LAYER

# A reference landslide counts as detected when detections cover at least this share of its area
# (inside the scored area). 10 %: at 10 m pixels a 1 px misregistration or a neighbour's detection
# grazing the edge covers a few percent of a typical (1,000-10,000 m2) landslide, so "any overlap"
# counts such contacts as hits; 10 % asks that a detection actually sits on the landslide without
# asking its outline to match (that is what pixel IoU measures). docs/evaluation.md has the figures
# at 0 (any overlap), 10, 25 and 50 % for the bundled sample.
DEFAULT_MIN_OVERLAP = 0.1
# Objects (reference landslides, detections) count when at least this share of their area lies
# inside the scored area; reference landslides are then measured on their part inside it.
MIN_INSIDE_FRACTION = 0.5
# Polygons of the second and later reference layers (e.g. deposits) join the landslide of the first
# layer (e.g. scars) they overlap most, counting polygons closer than this as touching (metres).
JOIN_TOLERANCE_M = 0.5
SIZE_CLASSES_M2 = (1_000.0, 5_000.0, 20_000.0)
SENSITIVITY = (0.0, 0.1, 0.25, 0.5)
RUN_FILES = ("probability.tif", "mask.tif", "landslides.gpkg")


# ---------------------------------------------------------------------------------------------
# pure functions: objects


def reference_objects(polygons: gpd.GeoDataFrame, layer_column: str = "layer",
                      primary: str | None = None,
                      join_tolerance_m: float = JOIN_TOLERANCE_M) -> gpd.GeoDataFrame:
    """Reference landslides from the polygons of one or more layers (a metric CRS).

    One landslide per polygon of the ``primary`` layer (default: the first layer in
    ``polygons[layer_column]``). A polygon of another layer joins the primary polygon it overlaps
    most (overlap measured with the polygon grown by ``join_tolerance_m``, so traces that only touch
    join too); one that reaches no primary polygon is a landslide of its own. With one layer, every
    polygon is a landslide.

    Returns a GeoDataFrame with ``geometry`` (the union of the members), ``layers`` (the members'
    layers, '+'-joined) and ``members`` (how many polygons), in the order of the primary polygons
    then the stand-alone ones.
    """
    if polygons.empty:
        return gpd.GeoDataFrame({"layers": [], "members": []}, geometry=[], crs=polygons.crs)
    layers = list(dict.fromkeys(polygons[layer_column]))
    primary = layers[0] if primary is None else primary
    is_primary = (polygons[layer_column] == primary).to_numpy()
    prim = polygons.geometry.to_numpy()[is_primary]
    prim_layer = polygons[layer_column].to_numpy()[is_primary]
    other = polygons.geometry.to_numpy()[~is_primary]
    other_layer = polygons[layer_column].to_numpy()[~is_primary]
    groups: list[list[int]] = [[] for _ in range(len(prim))]
    alone: list[int] = []
    if len(other):
        tree = shapely.STRtree(prim)
        grown = shapely.buffer(other, join_tolerance_m)
        oi, pi = tree.query(grown, predicate="intersects")
        best: dict[int, tuple[float, int]] = {}
        if len(oi):
            areas = shapely.area(shapely.intersection(grown[oi], prim[pi]))
            for o, p, a in zip(oi.tolist(), pi.tolist(), areas.tolist()):
                if o not in best or a > best[o][0] or (a == best[o][0] and p < best[o][1]):
                    best[o] = (a, p)
        for o in range(len(other)):
            if o in best:
                groups[best[o][1]].append(o)
            else:
                alone.append(o)
    geoms, layer_names, members = [], [], []
    for p, joined in enumerate(groups):
        parts = [prim[p]] + [other[o] for o in joined]
        geoms.append(shapely.union_all(parts) if joined else prim[p])
        layer_names.append("+".join(dict.fromkeys([prim_layer[p]] + [other_layer[o] for o in joined])))
        members.append(1 + len(joined))
    for o in alone:
        geoms.append(other[o])
        layer_names.append(other_layer[o])
        members.append(1)
    return gpd.GeoDataFrame({"layers": layer_names, "members": members}, geometry=geoms,
                            crs=polygons.crs)


def inside_fraction(geoms: gpd.GeoSeries, area: shapely.Geometry) -> np.ndarray:
    """The share of each geometry's area that lies inside ``area`` (0 for empty geometries)."""
    g = geoms.to_numpy() if hasattr(geoms, "to_numpy") else np.asarray(geoms)
    total = shapely.area(g)
    inside = shapely.area(shapely.intersection(g, area))
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)


def size_class_labels(bounds: tuple[float, ...] = SIZE_CLASSES_M2) -> list[str]:
    """``< 1,000``, ``1,000-5,000``, ..., ``>= 20,000`` (m2) for ``bounds``."""
    edges = [f"{b:,.0f}" for b in bounds]
    return ([f"< {edges[0]}"] + [f"{a}-{b}" for a, b in itertools.pairwise(edges)]
            + [f">= {edges[-1]}"])


@dataclass
class ObjectMatch:
    """What :func:`match_objects` found: per-object tables and the summary figures."""

    reference: gpd.GeoDataFrame  # scored reference landslides, clipped to the scored area
    detections: gpd.GeoDataFrame  # scored detections (whole polygons)
    summary: dict[str, Any] = field(default_factory=dict)


def _share(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def _median(values: pd.Series) -> float | None:
    return float(values.median()) if len(values) else None


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _geoms(values: Any) -> np.ndarray:
    """Shapely geometries of a GeoSeries / list / array, as an object array."""
    return np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else list(values), dtype=object)


def match_objects(reference: gpd.GeoSeries, detections: gpd.GeoSeries, scored_area: shapely.Geometry,
                  *, min_overlap_fraction: float = DEFAULT_MIN_OVERLAP,
                  min_inside_fraction: float = MIN_INSIDE_FRACTION,
                  reference_polygons: gpd.GeoSeries | None = None,
                  size_classes_m2: tuple[float, ...] = SIZE_CLASSES_M2,
                  sensitivity: tuple[float, ...] = SENSITIVITY) -> ObjectMatch:
    """Object-level detection figures of ``detections`` against ``reference`` landslides.

    All geometries in one metric CRS (areas in m2). Rules:

    - A reference landslide is scored when at least ``min_inside_fraction`` of its area lies inside
      ``scored_area``; it is then measured on that inside part (its ``area_m2``).
    - It is *detected* when the union of the detections covers at least ``min_overlap_fraction``
      of that part (and more than nothing: a fraction of 0 means "any overlap"). A detection may
      detect several landslides, and several detections one landslide.
    - A detection is scored when at least ``min_inside_fraction`` of its area lies inside
      ``scored_area``; it is a *false detection* when it overlaps (positive shared area) none of
      ``reference_polygons`` (default: ``reference``; the unclipped polygons of every layer, so a
      detection on a deposit or on a landslide that falls mostly outside the area is not false).
    """
    if not 0 <= min_overlap_fraction <= 1:
        raise InputError(f"--min-overlap-fraction must be in [0, 1], got {min_overlap_fraction}")
    if not 0 < min_inside_fraction <= 1:
        raise InputError(f"min_inside_fraction must be in (0, 1], got {min_inside_fraction}")
    area_km2 = scored_area.area / 1e6
    crs = getattr(reference, "crs", None)
    ref = gpd.GeoSeries(_geoms(reference), crs=crs)
    det = gpd.GeoSeries(_geoms(detections), crs=crs)

    ref_inside = inside_fraction(ref, scored_area)
    keep = ref_inside >= min_inside_fraction
    clipped = shapely.intersection(ref.to_numpy()[keep], scored_area)
    r = gpd.GeoDataFrame({"reference_index": np.flatnonzero(keep),
                          "full_area_m2": shapely.area(ref.to_numpy()[keep]),
                          "inside_fraction": ref_inside[keep]}, geometry=clipped, crs=crs)
    r["area_m2"] = r.geometry.area
    det_union = shapely.union_all(det.to_numpy()) if len(det) else shapely.Polygon()
    covered = shapely.area(shapely.intersection(r.geometry.to_numpy(), det_union)) if len(r) else np.zeros(0)
    area = r["area_m2"].to_numpy()
    r["covered_fraction"] = np.where(area > 0, covered / np.where(area > 0, area, 1.0), 0.0)

    def detected_at(frac: float) -> np.ndarray:
        return (r["covered_fraction"].to_numpy() >= frac) & (r["covered_fraction"].to_numpy() > 0)

    r["detected"] = detected_at(min_overlap_fraction)
    bins = [-np.inf, *size_classes_m2, np.inf]
    labels = size_class_labels(size_classes_m2)
    r["size_class"] = (pd.cut(r["area_m2"], bins=bins, labels=labels, right=False).astype(str)
                       if len(r) else [])

    # detections
    det_inside = inside_fraction(det, scored_area)
    dkeep = det_inside >= min_inside_fraction
    d = gpd.GeoDataFrame({"detection_index": np.flatnonzero(dkeep),
                          "inside_fraction": det_inside[dkeep]},
                         geometry=det.to_numpy()[dkeep], crs=crs)
    d["area_m2"] = d.geometry.area
    touch_geoms = _geoms(ref if reference_polygons is None else reference_polygons)
    touches = np.zeros(len(d), dtype=bool)
    if len(d) and len(touch_geoms):
        tree = shapely.STRtree(touch_geoms)
        di, ti = tree.query(d.geometry.to_numpy(), predicate="intersects")
        if len(di):
            shared = shapely.area(shapely.intersection(d.geometry.to_numpy()[di], touch_geoms[ti]))
            touches[np.unique(di[shared > 0])] = True
    d["touches_reference"] = touches
    d["false_detection"] = ~touches

    total_area = float(r["area_m2"].sum())
    det_rows = r[r["detected"]]
    miss_rows = r[~r["detected"]]
    by_size = []
    for label in labels:
        in_class = r[r["size_class"] == label]
        n_det = int(in_class["detected"].sum())
        by_size.append({"size_class_m2": label, "reference": len(in_class), "detected": n_det,
                        "missed": int(len(in_class) - n_det),
                        "missed_area_m2": float(in_class.loc[~in_class["detected"], "area_m2"].sum()),
                        "detected_share": _share(n_det, len(in_class))})
    sens = []
    for frac in sorted(set(sensitivity) | {min_overlap_fraction}):
        hit = detected_at(frac)
        sens.append({"min_overlap_fraction": frac, "detected": int(hit.sum()),
                     "detected_share_by_count": _share(hit.sum(), len(r)),
                     "detected_share_by_area": _share(float(area[hit].sum()), total_area)})
    n_false = int(d["false_detection"].sum())
    summary = {
        "min_overlap_fraction": min_overlap_fraction,
        "overlap_rule": (f"a reference landslide is detected when the run's polygons cover at least "
                         f"{_percent(min_overlap_fraction)} of its area inside the scored area"
                         + (" (any overlap)" if min_overlap_fraction == 0 else "")),
        "partial_rule": (f"reference landslides and detections count when at least "
                         f"{_percent(min_inside_fraction)} of their area lies inside the scored area; "
                         "reference landslides are measured on that inside part"),
        "false_detection_rule": ("a scored detection that shares no area with any reference polygon "
                                 "(of any selected layer, also those outside the scored area)"),
        "scored_area_km2": area_km2,
        "reference_landslides": len(r),
        "reference_left_out_mostly_outside": int((~keep & (ref_inside > 0)).sum()),
        "reference_area_m2": total_area,
        "detected": len(det_rows),
        "missed": len(miss_rows),
        "detected_share_by_count": _share(len(det_rows), len(r)),
        "detected_share_by_area": _share(float(det_rows["area_m2"].sum()), total_area),
        "covered_share_of_reference_area": _share(float(covered.sum()), total_area),
        "detections": len(d),
        "detections_touching_reference": int(touches.sum()),
        "false_detections": n_false,
        "false_detection_share": _share(n_false, len(d)),
        "false_detections_per_km2": _share(n_false, area_km2),
        "false_detection_area_m2": float(d.loc[d["false_detection"], "area_m2"].sum()),
        "median_area_m2": {"missed": _median(miss_rows["area_m2"]),
                           "detected": _median(det_rows["area_m2"]),
                           "all": _median(r["area_m2"])},
        "by_size": by_size,
        "sensitivity": sens,
    }
    return ObjectMatch(reference=r, detections=d, summary=summary)


# ---------------------------------------------------------------------------------------------
# pure functions: pixels


def pixel_labels(reference: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """uint8 labels: 1 landslide / 0 background where ``scored``, ``IGNORE`` elsewhere."""
    return np.where(scored, (reference > 0).astype(np.uint8), np.uint8(IGNORE)).astype(np.uint8)


def pixel_metrics(mask: np.ndarray, probability_u8: np.ndarray, labels: np.ndarray,
                  res_m: float = 10.0) -> dict[str, Any]:
    """Pixel figures over the labelled pixels (``labels`` != 255, the run's 255 left out too).

    ``mask``: the run's mask.tif (1 landslide, 0 background, 255 not analysed) for precision,
    recall, F1, IoU, Dice; ``probability_u8``: probability.tif (p = value / 254, 255 not analysed)
    for the AUC.
    """
    scored = (labels != IGNORE) & (mask != 255) & (probability_u8 != 255)
    lab = labels[scored]
    c = confusion((mask[scored] == 1), lab)
    auc = roc_auc(probability_u8[scored].astype(np.float32) / 254.0, lab)
    n = int(scored.sum())
    return {**scores_from_confusion(c), "auc": None if math.isnan(auc) else auc, **c,
            "scored_px": n, "scored_km2": n * res_m**2 / 1e6,
            "reference_px": int(c["tp"] + c["fn"]), "detected_px": int(c["tp"] + c["fp"]),
            "reference_share_of_area": _share(c["tp"] + c["fn"], n)}


# ---------------------------------------------------------------------------------------------
# reading a run and a reference


@dataclass(frozen=True)
class RunOutputs:
    path: Path
    grid: AnalysisGrid
    probability: np.ndarray  # uint8 as written
    mask: np.ndarray  # uint8 as written
    landslides: gpd.GeoDataFrame  # grid CRS
    footprint: shapely.Geometry  # grid CRS
    manifest: dict


def grid_from_raster(path: str | Path) -> AnalysisGrid:
    """The north-up grid of a raster (CRS, transform, size)."""
    with rasterio.open(path) as src:
        t = src.transform
        if src.crs is None or t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0 or not math.isclose(t.a, -t.e):
            raise InputError(f"{path} is not on a north-up square-pixel grid with a CRS")
        return AnalysisGrid(crs=src.crs.to_string(), res_m=float(t.a), xmin=float(t.c),
                            ymax=float(t.f), width=src.width, height=src.height)


def read_run(run_dir: str | Path) -> RunOutputs:
    """probability.tif, mask.tif and landslides.gpkg (layers landslides, footprint) of a run folder."""
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"--run {run} is not a folder; give the --out folder of a finished "
                         "`landslide scan`")
    missing = [name for name in RUN_FILES if not (run / name).exists()]
    if missing:
        hint = " (it holds .staging: that run did not finish)" if (run / ".staging").exists() else ""
        raise InputError(f"--run {run} lacks {', '.join(missing)}{hint}; give the --out folder of a "
                         "finished `landslide scan`")
    grid = grid_from_raster(run / "probability.tif")
    with gdal_env():
        with rasterio.open(run / "probability.tif") as src:
            prob = src.read(1)
        with rasterio.open(run / "mask.tif") as src:
            if (src.width, src.height) != (grid.width, grid.height) or src.transform != grid.transform:
                raise InputError(f"{run}/mask.tif is not on the grid of {run}/probability.tif")
            mask = src.read(1)
    gpkg = run / "landslides.gpkg"
    layers = [str(n) for n, _ in pyogrio.list_layers(gpkg)]
    for layer in (LANDSLIDES_LAYER, FOOTPRINT_LAYER):
        if layer not in layers:
            raise InputError(f"{gpkg} has no layer {layer!r}; not the GeoPackage of a scan")
    landslides = gpd.read_file(gpkg, layer=LANDSLIDES_LAYER, engine="pyogrio").to_crs(grid.crs)
    fp = gpd.read_file(gpkg, layer=FOOTPRINT_LAYER, engine="pyogrio").to_crs(grid.crs)
    footprint = shapely.make_valid(shapely.union_all(fp.geometry.to_numpy())) if len(fp) else shapely.Polygon()
    manifest_path = run / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return RunOutputs(run, grid, prob, mask, landslides, footprint, manifest)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_reference(path: str | Path, layers: list[str] | None, grid: AnalysisGrid) -> tuple[gpd.GeoDataFrame, dict]:
    """The polygons of ``layers`` (default: the file's only layer) in the grid's CRS, with a
    ``layer`` column, and a record of what was read."""
    names = list_layers(path)
    if not layers:
        if len(names) != 1:
            raise InputError(f"--reference {path} has {len(names)} layers ({', '.join(names)}); name "
                             "the landslide layers with --reference-layer (e.g. --reference-layer "
                             f"{names[0]})")
        layers = names
    layers = list(dict.fromkeys(layers))
    frames, record = [], {}
    for layer in layers:
        if layer not in names:
            raise InputError(f"--reference {path} has no layer {layer!r}; its layers: {', '.join(names)}")
        got = read_polygons(path, layer)
        frame = gpd.GeoDataFrame({"layer": [layer] * len(got.frame)},
                                 geometry=got.frame.geometry.to_crs(grid.crs).to_numpy(), crs=grid.crs)
        frames.append(frame)
        record[layer] = {"polygons": len(got.frame), "repaired": got.repaired,
                         "left_out_not_polygons": got.dropped, "crs": got.frame.crs.to_string()}
    polys = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=grid.crs)
    return polys, record


def resolve_mapped_area(spec: str | None, reference: str | Path) -> tuple[Path, str | None] | None:
    """``--mapped-area``: a layer of the reference file, a vector file (its only layer) or FILE:LAYER."""
    if spec is None:
        return None
    names = list_layers(reference)
    if spec in names:
        return Path(reference), spec
    if Path(spec).exists():
        return Path(spec), None
    file, sep, layer = spec.rpartition(":")
    if sep and file and Path(file).exists():
        return Path(file), layer
    raise InputError(f"--mapped-area {spec!r} is neither a layer of {reference} ({', '.join(names)}) "
                     "nor an existing vector file (FILE or FILE:LAYER)")


def _lonlat_extent(geom: shapely.Geometry, crs: str) -> str:
    if geom.is_empty:
        return "nothing"
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x0, y0, x1, y1 = shapely.transform(geom, lambda xy: np.column_stack(
        to_ll.transform(xy[:, 0], xy[:, 1]))).bounds
    return f"lon {x0:.4f}..{x1:.4f}, lat {y0:.4f}..{y1:.4f}"


# ---------------------------------------------------------------------------------------------
# the evaluation


@dataclass
class Evaluation:
    """What :func:`evaluate_run` found: the JSON-able result and what the map draws."""

    result: dict
    match: ObjectMatch
    run: RunOutputs
    scored_area: shapely.Geometry  # grid CRS


def evaluate_run(run_dir: str | Path, reference: str | Path, layers: list[str] | None = None,
                 mapped_area: str | None = None,
                 min_overlap_fraction: float = DEFAULT_MIN_OVERLAP) -> Evaluation:
    """Pixel and object figures of a run folder against a reference inventory (see the module's
    docstring for the rules)."""
    if not 0 <= min_overlap_fraction <= 1:
        raise InputError(f"--min-overlap-fraction must be in [0, 1], got {min_overlap_fraction}")
    reference = Path(reference)
    run = read_run(run_dir)
    if not reference.exists():
        raise InputError(f"--reference {reference} does not exist")
    grid = run.grid
    polys, layer_record = read_reference(reference, layers, grid)
    layers = list(layer_record)
    ref_union_extent = shapely.box(*polys.total_bounds)
    if run.footprint.is_empty:
        raise InputError(f"--run {run.path}: the footprint is empty (nothing was analysed); "
                         "nothing to score")
    if not shapely.intersects(polys.geometry.to_numpy(), run.footprint).any():
        raise InputError(
            f"--reference {reference} ({'+'.join(layers)}) does not overlap the run's footprint: "
            f"the reference covers {_lonlat_extent(ref_union_extent, grid.crs)}; the run's "
            f"footprint covers {_lonlat_extent(run.footprint, grid.crs)}")

    valid = run.probability != 255
    area_source = resolve_mapped_area(mapped_area, reference)
    if area_source is None:
        scored_geom = run.footprint
        scored_px = valid
        area_record = {"definition": "the run's footprint (probability.tif != 255); no mapped area "
                                     "given, so the reference is taken to be complete there",
                       "mapped_area": None}
        area_name = "run footprint"
    else:
        a_path, a_layer = area_source
        got = read_polygons(a_path, a_layer)
        mapped = shapely.make_valid(shapely.union_all(got.frame.geometry.to_crs(grid.crs).to_numpy()))
        scored_geom = shapely.make_valid(shapely.intersection(mapped, run.footprint))
        mapped_px = rasterize_polygons(gpd.GeoSeries([mapped], crs=grid.crs), grid) == 1
        scored_px = valid & mapped_px
        same = a_path.resolve() == reference.resolve()
        area_record = {"definition": f"the mapped area (layer {got.layer!r} of "
                                     f"{'the reference file' if same else a_path}) inside the run's "
                                     "footprint (probability.tif != 255)",
                       "mapped_area": {"file": str(a_path), "layer": got.layer,
                                       "sha256": sha256_file(a_path), "polygons": len(got.frame),
                                       "km2": mapped.area / 1e6}}
        area_name = f"{got.layer} ∩ run footprint"
        if scored_geom.is_empty or scored_geom.area == 0 or not scored_px.any():
            raise InputError(
                f"the scored area is empty: the mapped area ({a_path} layer {got.layer!r}, "
                f"{_lonlat_extent(mapped, grid.crs)}) does not overlap the run's footprint "
                f"({_lonlat_extent(run.footprint, grid.crs)})")
    if not scored_px.any():
        raise InputError(f"the scored area is empty: no pixel of {run.path}/probability.tif was analysed")

    area_km2 = scored_geom.area / 1e6
    area_record.update({"km2": area_km2, "pixels": int(scored_px.sum()),
                        "pixel_km2": int(scored_px.sum()) * grid.res_m**2 / 1e6,
                        "extent": _lonlat_extent(scored_geom, grid.crs)})
    sha = sha256_file(reference)
    labels_record = {"file": str(reference), "sha256": sha, "layers": layers,
                     "landslide": "a polygon of " + " or ".join(layers),
                     "per_layer": layer_record}
    labels_text = f"{'+'.join(layers)} of {reference.name} (sha256 {sha[:12]})"
    area_text = f"{area_name}, {area_km2:.2f} km2"

    # pixels
    ref_px = rasterize_polygons(polys.geometry, grid)
    labels = pixel_labels(ref_px, scored_px)
    pix = pixel_metrics(run.mask, run.probability, labels, grid.res_m)
    threshold = ((run.manifest.get("parameters") or {}).get("clean") or {}).get("threshold")
    pixel = {"labels": labels_text, "area": area_text,
             "reference_rule": "centre rule: a pixel is landslide when its centre lies in a "
                               "reference polygon",
             "against": {"precision/recall/f1/iou/dice": "mask.tif (the run's cleaned mask"
                         + (f", probability >= {threshold}" if threshold is not None else "") + ")",
                         "auc": "probability.tif"},
             **pix}

    # objects
    objects = reference_objects(polys, primary=layers[0])
    match = match_objects(objects.geometry, run.landslides.geometry, scored_geom,
                          min_overlap_fraction=min_overlap_fraction,
                          reference_polygons=polys.geometry)
    obj_rule = (f"one landslide per polygon of {layers[0]!r}" + (
        f"; a polygon of {', '.join(repr(x) for x in layers[1:])} joins the {layers[0]!r} polygon it "
        f"overlaps most (touching within {JOIN_TOLERANCE_M} m counts) or stands alone"
        if len(layers) > 1 else ""))
    obj = {"labels": labels_text, "area": area_text, "reference_objects_rule": obj_rule,
           "reference_objects_total": len(objects), **match.summary}

    detector = run.manifest.get("detector") or {}
    result = {
        "run": {"dir": str(run.path), "run_id": run.manifest.get("run_id"),
                "detector": detector.get("ref"), "threshold": threshold,
                "grid": {"crs": grid.crs, "res_m": grid.res_m, "width": grid.width,
                         "height": grid.height}},
        "labels": labels_record,
        "area": area_record,
        "pixel": pixel,
        "objects": obj,
    }
    return Evaluation(_json_safe(result), match, run, scored_geom)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# ---------------------------------------------------------------------------------------------
# report


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def to_markdown(result: dict) -> str:
    """The Markdown report of :func:`evaluate_run`'s result."""
    run, lab, area, pix, obj = (result[k] for k in ("run", "labels", "area", "pixel", "objects"))
    run_id = run["run_id"] or "unknown (no manifest.json)"
    lines = [f"# Inventory evaluation of {run['dir']}", ""]
    add = lines.append
    add(f"- run: `{run_id}`, detector `{run['detector'] or 'unknown'}`")
    add(f"- labels: layers {', '.join(lab['layers'])} of `{lab['file']}` (sha256 `{lab['sha256']}`); "
        f"landslide = {lab['landslide']}")
    add(f"- area: {area['definition']}: {area['km2']:.2f} km2 ({area['pixels']} pixels, "
        f"{area['extent']})")
    if area.get("mapped_area"):
        m = area["mapped_area"]
        add(f"- mapped area: layer `{m['layer']}` of `{m['file']}` (sha256 `{m['sha256']}`), "
            f"{m['km2']:.2f} km2 in all")
    lines += ["", f"## Pixels ({pix['labels']}; {pix['area']})", ""]
    add(f"Reference burnt with the {pix['reference_rule']}; precision to Dice against "
        f"{pix['against']['precision/recall/f1/iou/dice']}, AUC against probability.tif.")
    lines += ["", "| precision | recall | F1 | IoU | Dice | AUC | reference px | detected px | scored px |",
              "|---|---|---|---|---|---|---|---|---|"]
    cells = [_f(pix[k]) for k in ("precision", "recall", "f1", "iou", "dice", "auc")]
    cells += [str(pix[k]) for k in ("reference_px", "detected_px", "scored_px")]
    add("| " + " | ".join(cells) + " |")
    lines += ["", f"## Objects ({obj['labels']}; {obj['area']})", "",
              f"- reference landslides: {obj['reference_objects_rule']}",
              f"- overlap rule: {obj['overlap_rule']}"]
    add(f"- partly inside: {obj['partial_rule']} ({obj['reference_left_out_mostly_outside']} "
        "reference landslides left out)")
    lines += [f"- false detection: {obj['false_detection_rule']}", "", "| figure | value |", "|---|---|"]
    median = obj["median_area_m2"]
    rows = [
        ("reference landslides scored",
         f"{obj['reference_landslides']} ({obj['reference_area_m2'] / 1e6:.3f} km2)"),
        ("detected, by count", (f"{obj['detected']} of {obj['reference_landslides']} "
                                f"({_pct(obj['detected_share_by_count'])})")),
        ("detected, by area", _pct(obj["detected_share_by_area"])),
        ("reference area covered by detections", _pct(obj["covered_share_of_reference_area"])),
        ("detections scored", str(obj["detections"])),
        ("false detections", (f"{obj['false_detections']} ({_pct(obj['false_detection_share'])} of "
                              f"detections, {obj['false_detection_area_m2'] / 1e6:.3f} km2)")),
        ("false detections per km2", _f(obj["false_detections_per_km2"], 2)),
        ("median area, missed / detected (m2)", f"{_f(median['missed'], 0)} / {_f(median['detected'], 0)}"),
    ]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "Reference landslides by size (area inside the scored area):", "",
              "| size (m2) | reference | detected | missed | detected share |", "|---|---|---|---|---|"]
    lines += [f"| {row['size_class_m2']} | {row['reference']} | {row['detected']} | {row['missed']} | "
              f"{_pct(row['detected_share'])} |" for row in obj["by_size"]]
    lines += ["", "Detected share at other overlap rules:", "",
              "| min overlap | detected | by count | by area |", "|---|---|---|---|"]
    for row in obj["sensitivity"]:
        name = "any" if row["min_overlap_fraction"] == 0 else _percent(row["min_overlap_fraction"])
        add(f"| {name} | {row['detected']} | {_pct(row['detected_share_by_count'])} | "
            f"{_pct(row['detected_share_by_area'])} |")
    return "\n".join(lines) + "\n"


QUICKLOOK_NAME = "quicklook.png"  # written by every run (tasks.raster.quicklook), over the whole grid


def read_quicklook(run: RunOutputs) -> tuple[np.ndarray | None, str]:
    """The run's own ``quicklook.png`` as (H, W, 3) floats in [0, 1] (grey where it has no data),
    or None and why not. It spans the run's grid, so it is drawn over the grid's bounds."""
    path = run.path / QUICKLOOK_NAME
    if not path.is_file():
        return None, f"grey (the run folder has no {QUICKLOOK_NAME})"
    try:
        with Image.open(path) as im:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:  # damaged or not a PNG
        return None, f"grey ({QUICKLOOK_NAME} is not readable: {type(exc).__name__})"
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 0.5
    return rgb, f"the run's {QUICKLOOK_NAME} (post-event B04/B03/B02, 2-98 % stretch)"


def write_map(path: str | Path, ev: Evaluation) -> str:
    """PNG: hits (detected reference landslides), misses and false detections over the quicklook;
    returns what the background is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    result, match, run, scored_outline = ev.result, ev.match, ev.run, ev.scored_area
    grid = run.grid
    rgb, background = read_quicklook(run)
    x0, y0, x1, y1 = grid.bounds
    long_in = 10.0
    w, h = (long_in, long_in * grid.height / grid.width) if grid.width >= grid.height else \
        (long_in * grid.width / grid.height, long_in)
    fig, ax = plt.subplots(figsize=(max(w, 4.5) + 0.3, h + 1.4))
    if rgb is None:
        ax.imshow(np.full(grid.shape, 0.55), cmap="gray", vmin=0, vmax=1, extent=(x0, x1, y0, y1))
    else:
        ax.imshow(rgb, extent=(x0, x1, y0, y1), interpolation="nearest")
    r, d = match.reference, match.detections
    if len(r):
        if r["detected"].any():
            r[r["detected"]].plot(ax=ax, facecolor=(0.1, 0.9, 0.2, 0.35), edgecolor=(0.1, 0.9, 0.2),
                                  linewidth=0.7)
        if (~r["detected"]).any():
            r[~r["detected"]].plot(ax=ax, facecolor=(1.0, 0.1, 0.1, 0.35), edgecolor=(1.0, 0.15, 0.15),
                                   linewidth=0.7)
    if len(d):
        if d["touches_reference"].any():
            d[d["touches_reference"]].plot(ax=ax, facecolor="none", edgecolor="cyan", linewidth=0.5)
        if d["false_detection"].any():
            d[d["false_detection"]].plot(ax=ax, facecolor=(1.0, 0.85, 0.0, 0.45), edgecolor="yellow",
                                         linewidth=0.9)
    if scored_outline is not None and not scored_outline.is_empty:
        outline = gpd.GeoSeries([scored_outline.boundary], crs=grid.crs)
        outline.plot(ax=ax, color="black", linewidth=2.2)
        outline.plot(ax=ax, color="white", linewidth=1.0, linestyle="--")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.tick_params(labelsize=6)
    obj, pix = result["objects"], result["pixel"]
    scored_handle = (Line2D([], [], color="black", linewidth=2.2),
                     Line2D([], [], color="white", linewidth=1.0, linestyle="--"))
    handles = [Patch(facecolor=(0.1, 0.9, 0.2, 0.5), edgecolor=(0.1, 0.9, 0.2),
                     label=f"hit: reference landslide detected ({obj['detected']})"),
               Patch(facecolor=(1.0, 0.1, 0.1, 0.5), edgecolor=(1.0, 0.15, 0.15),
                     label=f"miss: reference landslide not detected ({obj['missed']})"),
               Patch(facecolor=(1.0, 0.85, 0.0, 0.6), edgecolor="yellow",
                     label=f"false alarm: detection on no reference ({obj['false_detections']})"),
               Patch(facecolor="none", edgecolor="cyan", label="detection on a reference landslide"),
               scored_handle]
    labels = [h.get_label() for h in handles[:-1]] + [f"scored area ({obj['area']})"]
    ax.legend(handles=handles, labels=labels, loc="upper center", bbox_to_anchor=(0.5, -0.025),
              fontsize=7, ncol=1 if w < 7 else 2, frameon=False)
    title = (f"{run.manifest.get('run_id') or run.path.name} against {obj['labels']}. "
             f"Pixel F1 {_f(pix['f1'], 2)}; detected {_pct(obj['detected_share_by_count'])} of "
             f"reference landslides (>= {_percent(obj['min_overlap_fraction'])} covered); "
             f"{obj['false_detections']} false alarms. Background: {background}.")
    ax.set_title(textwrap.fill(title, width=int(14 * max(w, 4.5))), fontsize=7)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_xlabel("")  # geopandas labels the axes; the CRS goes on one
    ax.set_ylabel(f"{grid.crs} x, y (m)", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=200)
    plt.close(fig)
    return background


def write_report(out_dir: str | Path, ev: Evaluation) -> dict[str, str]:
    """``evaluation.json``, ``evaluation.md`` and ``evaluation.png`` into ``out_dir``; adds their
    paths to ``ev.result["outputs"]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    background = write_map(out / "evaluation.png", ev)
    paths = {"json": str(out / "evaluation.json"), "md": str(out / "evaluation.md"),
             "png": str(out / "evaluation.png")}
    ev.result["outputs"] = {**paths, "map_background": background}
    atomic_write_json(out / "evaluation.json", ev.result)
    atomic_write_text(out / "evaluation.md", to_markdown(ev.result))
    return paths
