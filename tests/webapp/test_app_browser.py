"""The web app in real headless Chromium, as a responder uses it: start a scan of a small bbox of the
bundled sample, wait for it, open the results, check that the map drew the polygons where
``mask.tif`` says, and download the GeoPackage. The screenshots land in build/screenshots/."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import rasterio
from PIL import Image
from pyproj import Transformer
from scipy import ndimage
from selenium.webdriver.common.by import By

from tasks.run.view import canvas_to_lonlat
from tests.webapp import ui
from tests.webapp.conftest import SCREENSHOTS

BBOX = "141.95,42.70,141.98,42.72"  # ~5 km2 of the bundled sample, 40 polygons with the default model


def _polygon_pixels(rgb: np.ndarray) -> np.ndarray:
    """Where the map shows a landslide fill: the yellow-orange-red classes over the plain background
    (quicklook and probability layers switched off)."""
    r, b = rgb[..., 0].astype(int), rgb[..., 2].astype(int)
    return r - b > 25  # the background is grey (r - b = 2), outlines dark, fills yellow to red


def test_scan_results_map_and_download(app_server, browser):
    url, runs, _, log = app_server
    d = browser
    ui.open_app(d, url, "New scan")
    ui.type_text(d, "Crop to a bbox", BBOX)
    ui.click(d, "Run scan")
    # the page keeps polling the job: stage lines while it runs, then the CLI's summary
    done = ui.wait_for(lambda: "landslide polygons" in ui.page_text(d) or "error:" in ui.page_text(d),
                       240, poll_s=1.0, what="the scan to finish")
    text = ui.page_text(d)
    assert "error:" not in text, text[-2000:]
    assert done
    run_dirs = [p for p in runs.iterdir() if (p / "manifest.json").exists()]
    assert len(run_dirs) == 1
    run = run_dirs[0]
    ui.click(d, "Open the results")
    ui.wait_for(lambda: "Map view:" in ui.page_text(d), 60, what="the results map")
    assert run.name in ui.page_text(d) or "landslides" in ui.page_text(d)

    # polygons and footprint only: every coloured pixel must be a landslide pixel of mask.tif
    ui.set_checkbox(d, "Quicklook", False)
    ui.set_checkbox(d, "Probability", False)
    time.sleep(3)  # deck.gl draws after the script run
    deck = d.find_element(By.CSS_SELECTOR, '[data-testid="stDeckGlJsonChart"]')
    shot = np.asarray(Image.open(io.BytesIO(deck.screenshot_as_png)).convert("RGB"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(shot).save(SCREENSHOTS / "app_results_polygons.png")
    height_px, width_px = shot.shape[:2]
    view = ui.map_view(d)
    painted = _polygon_pixels(shot)
    assert painted.sum() > 2000, f"only {painted.sum()} polygon-coloured pixels on the map"
    ys, xs = np.nonzero(painted)
    lon, lat = canvas_to_lonlat(xs + 0.5, ys + 0.5, view, width_px, height_px)
    with rasterio.open(run / "mask.tif") as src:
        mask = src.read(1)
        x, y = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(lon, lat)
        rows, cols = rasterio.transform.rowcol(src.transform, x, y)
    rows, cols = np.asarray(rows), np.asarray(cols)
    inside = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
    assert inside.mean() > 0.99
    landslide = mask == 1
    near = ndimage.binary_dilation(landslide, iterations=1)  # outlines are simplified by <= 1 px
    hit = near[rows[inside], cols[inside]]
    assert hit.mean() > 0.97, f"{hit.mean():.3f} of the coloured pixels lie on mask.tif landslides"
    # and the other way round: the mask's landslide cores are painted
    core = ndimage.binary_erosion(landslide, iterations=1)
    core_rows, core_cols = np.nonzero(core)
    cx, cy = rasterio.transform.xy(src.transform, core_rows, core_cols)
    c_lon, c_lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    painted_lonlat = set(zip(xs.tolist(), ys.tolist()))
    # canvas pixel of each core cell centre (inverse of canvas_to_lonlat by lookup on a fine grid)
    px = np.interp(c_lon, *_axis(0, width_px, view, width_px, height_px))
    py = np.interp(c_lat, *_axis(1, height_px, view, width_px, height_px))
    on_canvas = (px >= 0) & (px < width_px) & (py >= 0) & (py < height_px)
    covered = np.array([(int(a), int(b)) in painted_lonlat for a, b in zip(px[on_canvas], py[on_canvas])])
    assert on_canvas.sum() > 500 and covered.mean() > 0.95, f"{covered.mean():.3f} of mask cores painted"

    # the full results page, every layer on, for a person to look at (and the README)
    ui.set_checkbox(d, "Quicklook", True)
    ui.set_checkbox(d, "Probability", True)
    time.sleep(3)
    d.save_screenshot(str(SCREENSHOTS / "app_results.png"))

    # the GeoPackage download is the run folder's file, byte for byte
    ui.click(d, "GeoPackage", testid="stDownloadButton")
    target = d.downloads / "landslides.gpkg"
    ui.wait_for(lambda: target.exists() and target.stat().st_size > 0 and not list(d.downloads.glob("*.crdownload")),
                60, what="the GeoPackage download")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == \
        hashlib.sha256((run / "landslides.gpkg").read_bytes()).hexdigest()
    assert "Traceback" not in log.read_text()


def _axis(axis: int, n: int, view, width_px: int, height_px: int):
    """(coordinates, pixel positions) along one canvas axis, increasing coordinates first, for
    np.interp: lon along x, lat along y (lat decreases downwards)."""
    pos = np.arange(n) + 0.5
    if axis == 0:
        lon, _ = canvas_to_lonlat(pos, np.full(n, height_px / 2), view, width_px, height_px)
        return lon, pos - 0.5
    _, lat = canvas_to_lonlat(np.full(n, width_px / 2), pos, view, width_px, height_px)
    return lat[::-1], (pos - 0.5)[::-1]
