"""Small real crops of ../shared/data written to a test's tmp folder, plus catalogs that use them.

Every crop keeps the file's real pixels, CRS and native resolution; only the extent is cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.windows import from_bounds

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
T18SVG = SHARED / "s2_l1c_t18svg_20160112" / "jp2"
IBURI = Path(__file__).resolve().parents[2] / "data" / "iburi_2018"

# A 2 x 2 km block inside the T18SVG subset (EPSG:32618), aligned to the 60 m grid.
T18SVG_BOUNDS = (440040.0, 4165020.0, 442080.0, 4167060.0)


def crop_raster(src_path: Path, dst_path: Path, bounds: tuple[float, float, float, float],
                **overrides) -> Path:
    """Write the part of ``src_path`` inside ``bounds`` (in its CRS) as a GeoTIFF."""
    with rasterio.open(src_path) as src:
        window = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        data = src.read(window=window)
        profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype, crs=src.crs, transform=src.window_transform(window),
                       nodata=src.nodata)
    profile.update(overrides)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return dst_path


def t18svg_crops(folder: Path, bands=("B02", "B03", "B04", "B08", "B11", "B01"),
                 bounds=T18SVG_BOUNDS) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {b: crop_raster(T18SVG / f"s2_{b}.jp2", folder / f"s2_{b}.tif", bounds) for b in bands}


def write_labelled_scene(folder: Path, image: np.ndarray, labels: np.ndarray) -> Path:
    """A training scene folder as ``models.data`` reads it: ``image.tif`` (the 14 contract bands,
    float32, named) and ``labels.tif`` (uint8) on a 10 m UTM grid; returns ``folder``."""
    from rasterio.transform import from_origin

    from tasks.core.bands import BAND_NAMES

    folder.mkdir()
    profile = dict(driver="GTiff", width=image.shape[2], height=image.shape[1], crs="EPSG:32654",
                   transform=from_origin(500000, 4700000, 10, 10))
    with rasterio.open(folder / "image.tif", "w", count=len(BAND_NAMES), dtype="float32", **profile) as dst:
        dst.write(image.astype(np.float32, copy=False))
        dst.descriptions = BAND_NAMES
    with rasterio.open(folder / "labels.tif", "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(labels, 1)
    return folder


def write_catalog(path: Path, sources: dict, regions: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"version": 1, "sources": sources, "regions": regions or {}},
                                   sort_keys=False))
    return path


def local_source(band_paths: dict[str, Path], dem: Path | None = None, scene_id: str = "test-scene",
                 acquired: str = "2016-01-12T15:58:00Z", **scene_extra) -> dict:
    src = {"kind": "local",
           "scenes": [{"scene_id": scene_id, "acquired": acquired,
                       "bands": {b: str(p) for b, p in band_paths.items()}, **scene_extra}]}
    if dem is not None:
        src["dem"] = str(dem)
    return src


def lonlat_bounds(path: Path) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        return transform_bounds(src.crs, "EPSG:4326", *src.bounds)


def synthetic_dem_like(path: Path, like: Path, seed: int = 0) -> Path:
    """A smooth synthetic DEM on the grid of ``like`` (for sources that have no real DEM)."""
    with rasterio.open(like) as src:
        profile = src.profile.copy()
        h, w = src.height, src.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    z = 100 + 0.5 * xx + 20 * np.sin(yy / 15.0) + rng.normal(0, 0.1, (h, w))
    profile.update(driver="GTiff", dtype="float32", count=1, nodata=-9999.0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(z.astype(np.float32), 1)
    return path


def coastal_plain_dem_like(path: Path, like: Path) -> Path:
    """A stand-in DEM for T18SVG, which has none: the Virginia coast there is a plain near sea level,
    so elevations 1-4 m rising gently west to east (slope under 0.1 degrees). Not real elevations:
    for tests that need some DEM over the real T18SVG bands."""
    with rasterio.open(like) as src:
        profile = src.profile.copy()
        h, w = src.height, src.width
    xx = np.mgrid[0:h, 0:w][1].astype(np.float32)
    profile.update(driver="GTiff", dtype="float32", count=1, nodata=-9999.0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write((1.0 + 3.0 * xx / max(w - 1, 1)).astype(np.float32), 1)
    return path


def iburi_stack(work_dir: Path, lonlat_box: tuple[float, float, float, float],
                required_bands=("B02", "B03", "B04", "SLOPE")):
    """The bundled Iburi sample's RGB + terrain aligned over ``lonlat_box`` (EPSG:4326) in
    ``work_dir``: (``StackResult``, ``AnalysisGrid``)."""
    from shapely.geometry import box

    from tasks.core.grid import make_grid
    from tasks.raster.align import build_stack
    from tasks.sources.catalog import load_catalog
    from tasks.sources.local import resolve_local_inputs

    cat = load_catalog(IBURI.parents[1] / "data_catalog.yaml")
    inputs = resolve_local_inputs(cat, "iburi-2018-local", ("B02", "B03", "B04"))
    grid = make_grid(box(*lonlat_box))
    return build_stack(inputs, grid, work_dir, tuple(required_bands)), grid


def predict_blocks(stack_path, valid_path, work: Path, block_px: int = 2048,
                   detector: str = "index") -> tuple[Path, Path, int]:
    """Block-wise inference of an aligned stack the way the scan's infer step runs it (block jobs
    in this process, then assembled): ``(prob.tif, uncertainty_raw.tif, patches predicted)``."""
    from tasks.predict.blocks import assemble, make_jobs, run_jobs

    work = Path(work)
    jobs = make_jobs(str(stack_path), str(valid_path), detector, "cpu", 32, 16, block_px,
                     work / "blocks", fingerprint="test")
    records = run_jobs(jobs, progress=False)
    prob, unc = work / "prob.tif", work / "uncertainty_raw.tif"
    assemble(jobs, prob, unc)
    return prob, unc, len({tuple(p) for r in records for p in r["patches"]})


def iburi_multiband_image(path: Path, lonlat_box: tuple[float, float, float, float],
                          descriptions: tuple[str, ...] | None = ("B2", "B3", "B4"),
                          tags: dict[str, str] | None = None) -> Path:
    """The bundled Iburi post-event B2, B3, B4 cropped to ``lonlat_box`` as ONE 3-band GeoTIFF
    (real pixels, CRS and grid), each band described as ``descriptions`` (None: no descriptions),
    with the metadata items ``tags``: the file a user would pass to ``landslide scan --image``."""
    layers = []
    for b in ("B2", "B3", "B4"):
        crop = crop_raster(IBURI / "s2_post" / f"S2_post_{b}.tif", path.with_suffix(f".{b}.tmp.tif"),
                           lonlat_box)
        with rasterio.open(crop) as src:
            layers.append(src.read(1))
            profile = src.profile.copy()
        crop.unlink()
    profile.update(count=len(layers))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.stack(layers))
        for i, name in enumerate(descriptions or ()):
            dst.set_band_description(i + 1, name)
        if tags:
            dst.update_tags(**tags)
    return path
