"""Pre/post change: keep only post-event landslides that were not already there before the event.

A post-event polygon is dropped when at least ``max_pre_overlap`` of its area is covered by
detections of the same detector on a pre-event scene of the same place: bare ground that was bare
before (quarries, fields, roads, old scars) is not a new landslide. Every kept polygon carries
``pre_overlap`` (the covered fraction) so users can choose their own cut.

Both inputs are run folders (or their ``landslides.gpkg``) of scans over the same area; their
footprints matter: where the pre-event scan did not look, nothing can be "already there", so
``pre_overlap`` is measured against the pre detections only and the pre footprint's coverage of
each polygon is reported as ``pre_looked`` (a polygon the pre scan never saw is kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
from shapely.ops import unary_union

from tasks.core.errors import InputError
from tasks.core.files import atomic_write
from tasks.vector.vectorize import FOOTPRINT_LAYER, LANDSLIDES_LAYER


@dataclass(frozen=True)
class ChangeResult:
    kept: int
    removed: int
    kept_area_m2: float
    removed_area_m2: float
    out: str


def _gpkg(path: str | Path) -> Path:
    path = Path(path)
    path = path / "landslides.gpkg" if path.is_dir() else path
    if not path.exists():
        raise InputError(f"{path} does not exist: give a run folder or its landslides.gpkg")
    return path


def new_since_pre(post: str | Path, pre: str | Path, out: str | Path,
                  max_pre_overlap: float = 0.5) -> ChangeResult:
    """Write ``out`` (layers landslides + footprint of the post run) without pre-existing scars."""
    if not 0 < max_pre_overlap <= 1:
        raise InputError(f"max_pre_overlap must be in (0, 1], got {max_pre_overlap}")
    post_path, pre_path = _gpkg(post), _gpkg(pre)
    post_gdf = gpd.read_file(post_path, layer=LANDSLIDES_LAYER)
    pre_gdf = gpd.read_file(pre_path, layer=LANDSLIDES_LAYER).to_crs(post_gdf.crs)
    pre_fp = gpd.read_file(pre_path, layer=FOOTPRINT_LAYER).to_crs(post_gdf.crs)
    footprint = gpd.read_file(post_path, layer=FOOTPRINT_LAYER)
    pre_union = unary_union(list(pre_gdf.geometry)) if len(pre_gdf) else None
    looked = unary_union(list(pre_fp.geometry)) if len(pre_fp) else None
    area = post_gdf.geometry.area
    post_gdf["pre_overlap"] = (post_gdf.geometry.intersection(pre_union).area / area
                               if pre_union is not None else 0.0)
    post_gdf["pre_looked"] = (post_gdf.geometry.intersection(looked).area / area
                              if looked is not None else 0.0)
    keep = post_gdf["pre_overlap"] < max_pre_overlap
    kept = post_gdf[keep]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, unique=True) as tmp:  # .NAME.PID-RANDOM.tmp.gpkg: a fresh GeoPackage
        kept.to_file(tmp, layer=LANDSLIDES_LAYER, driver="GPKG", geometry_type="Polygon")
        footprint.to_file(tmp, layer=FOOTPRINT_LAYER, driver="GPKG", geometry_type="MultiPolygon")
    return ChangeResult(int(keep.sum()), int((~keep).sum()), float(area[keep].sum()),
                        float(area[~keep].sum()), str(out))
