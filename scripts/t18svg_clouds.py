"""Measure the cloud detector on the real T18SVG L1C scene (docs/clouds.md quotes its output).

    PYTHONPATH=. python scripts/t18svg_clouds.py OUT_DIR

1. The whole ``t18svg-2016`` region of ``data_catalog.yaml``, all 12 bands, through alignment: the mask's
   per-class pixel counts and the pixels that left the footprint (``cloud_mask.json``), with every
   socket connection refused (the classifier must work offline).
2. B08 standing in for B8A: s2cloudless's probability at 160 m over the same grid with the scene's real
   B8A and with B08 in its place.
3. ``OUT_DIR/t18svg_clouds.png``: the RGB (half resolution) with cloud red and shadow cyan.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely
from PIL import Image
from rasterio.enums import Resampling


def _refuse(*args, **kwargs):
    raise RuntimeError("the cloud detector tried to use the network")


def main(out: Path) -> None:
    socket.socket.connect = _refuse  # type: ignore[method-assign]
    from tasks.core.bands import SPECTRAL_BAND_NAMES
    from tasks.core.grid import make_grid, roi_in_grid_crs
    from tasks.raster.align import build_stack
    from tasks.raster.clouds import _coarse_grid, _read_on, cloud_probability
    from tasks.sources.catalog import load_catalog
    from tasks.sources.cloud import S2CLOUDLESS_BANDS
    from tasks.sources.local import resolve_local_inputs

    catalog = load_catalog()
    region = catalog.region("t18svg-2016")
    roi = shapely.box(*region.bbox)
    inputs = resolve_local_inputs(catalog, region.source, SPECTRAL_BAND_NAMES)
    grid = make_grid(roi)
    work = out / "work"
    t0 = time.perf_counter()
    result = build_stack(inputs, grid, work, tuple(SPECTRAL_BAND_NAMES), roi_in_grid_crs(roi, grid))
    record = json.loads((work / "cloud_mask.json").read_text())
    scene = record["scenes"][inputs.scene_id]
    print(f"grid {grid.width} x {grid.height} px ({grid.width * grid.height}), align + detect "
          f"{time.perf_counter() - t0:.1f} s, valid {result.valid_fraction:.4f}")
    print("class_px", scene["class_px"], "fraction of grid", scene["class_fraction_of_grid"],
          "left the footprint", scene["cloud_masked_px"], "max probability", scene["max_cloud_probability"])
    print("sun", {k: scene["method"]["shadows"][k] for k in ("sun_azimuth_deg", "sun_zenith_deg")})

    paths = inputs.cloud_detector["band_paths"]
    _, transform, w, h = _coarse_grid(grid)
    bands = {b: _read_on(paths[b], grid.crs, transform, w, h, Resampling.average, 0) / 10000.0
             for b in S2CLOUDLESS_BANDS}
    ok = np.isfinite(np.stack(list(bands.values()))).all(axis=0)
    real = cloud_probability(np.nan_to_num(np.stack([bands[b] for b in S2CLOUDLESS_BANDS])))
    bands["B8A"] = bands["B08"]
    standin = cloud_probability(np.nan_to_num(np.stack([bands[b] for b in S2CLOUDLESS_BANDS])))
    diff = np.abs(real - standin)[ok]
    thr = inputs.cloud_detector["threshold"]
    print(f"B08 for B8A at 160 m ({ok.sum()} px): mean |dp| {diff.mean():.4f}, max |dp| {diff.max():.4f}, "
          f"pixels that change side of p > {thr}: {int(((real > thr) != (standin > thr))[ok].sum())}")

    with rasterio.open(work / "stack.tif") as src:
        rgb = np.stack([src.read(i) for i in (4, 3, 2)], axis=-1)
    with rasterio.open(next(work.glob("clouds_*.tif"))) as src:
        classes = src.read(1)
    with rasterio.open(work / "valid.tif") as src:
        invalid = src.read(1) == 0
    img = np.clip(np.nan_to_num(rgb) / 2500 * 255, 0, 255).astype(np.uint8)
    img[invalid & (classes == 0)] = (0, 0, 0)
    img[classes == 1] = (255, 0, 0)
    img[classes == 2] = (0, 255, 255)
    png = out / "t18svg_clouds.png"
    Image.fromarray(img).resize((img.shape[1] // 2, img.shape[0] // 2), Image.NEAREST).save(png, optimize=True)
    # full resolution around what was flagged (rows and columns with a cloud or shadow pixel, + 100 px)
    rows, cols = np.nonzero(classes)
    if rows.size:
        r0, r1 = max(rows.min() - 100, 0), rows.max() + 100
        c0, c1 = max(cols.min() - 100, 0), cols.max() + 100
        crop = Image.fromarray(img[r0:r1, c0:c1])
        crop.save(out / "t18svg_clouds_detail.png", optimize=True)
        print(f"detail: grid rows {r0}..{r1}, columns {c0}..{c1}")
    print("wrote", png)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
