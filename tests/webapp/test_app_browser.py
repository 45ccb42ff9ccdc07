"""The web app in real headless Chromium, as a responder uses it: start a scan of a small bbox of the
bundled sample, wait for it, open the results, check that the map drew the polygons where
``mask.tif`` says, and download the GeoPackage. The screenshots land in build/screenshots/."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from pyproj import Transformer
from scipy import ndimage
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tasks.run.view import bbox_text, canvas_to_lonlat, fit_view, lonlat_to_canvas, pick_grid, span_bbox
from tests.webapp import ui
from tests.webapp.conftest import SCREENSHOTS
from webapp.settings import MAP_HEIGHT_PX, MAP_WIDTH_GUESS_PX, PICKER_HEIGHT_PX

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
    # pick a crop on the map: two clicks on the grid fill the bbox field with the cells' span
    region_bbox = (141.8903, 42.6824, 142.0280, 42.7695)
    grid = pick_grid(region_bbox)
    ui.widget(d, "stExpander", "Pick the crop on the map").find_element(By.TAG_NAME, "summary").click()
    ui.wait_for(lambda: d.find_elements(By.CSS_SELECTOR, '[data-testid="stDeckGlJsonChart"] canvas'), 30,
                what="the picker map")
    time.sleep(3)  # deck.gl takes clicks once it has drawn
    view = fit_view(region_bbox, MAP_WIDTH_GUESS_PX, PICKER_HEIGHT_PX)
    corners = []
    for lon, lat in ((141.955, 42.705), (141.975, 42.715)):
        picker = d.find_elements(By.CSS_SELECTOR, '[data-testid="stDeckGlJsonChart"]')[0]
        x, y = lonlat_to_canvas(np.array([lon]), np.array([lat]), view, picker.size["width"],
                                picker.size["height"])
        n_before = len(corners)
        corners.append(next(f["properties"]["bbox"] for f in grid["features"]
                            if f["properties"]["bbox"][0] <= lon < f["properties"]["bbox"][2]
                            and f["properties"]["bbox"][1] <= lat < f["properties"]["bbox"][3]))
        expect = "Picked:" if n_before else "First corner:"
        ui.click_map(d, x[0], y[0], lambda: expect in ui.page_text(d), what=f"pick {n_before + 1} on the grid")
    field = ui.widget(d, "stTextInput", "Crop to a bbox").find_element(By.TAG_NAME, "input")
    ui.wait_for(lambda: field.get_attribute("value") == bbox_text(span_bbox(*corners)), 30,
                what="the picked bbox in the crop field")
    ui.type_text(d, "Crop to a bbox", BBOX)  # the exact test area
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
    ui.click(d, "Open the results", testid="stPageLink", tag="a")
    ui.wait_for(lambda: "Map view:" in ui.page_text(d), 60, what="the results map")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["request"]["bbox"] == [float(v) for v in BBOX.split(",")]  # the typed bbox won

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
    px, py = lonlat_to_canvas(np.asarray(c_lon), np.asarray(c_lat), view, width_px, height_px)
    px, py = np.floor(px).astype(int), np.floor(py).astype(int)
    on_canvas = (px >= 0) & (px < width_px) & (py >= 0) & (py < height_px)
    covered = painted[py[on_canvas], px[on_canvas]]
    assert on_canvas.sum() > 500 and covered.mean() > 0.95, f"{covered.mean():.3f} of mask cores painted"

    # a click on a polygon shows its attributes
    import geopandas as gpd

    polygons = gpd.read_file(run / "landslides.gpkg", layer="landslides").to_crs("EPSG:4326")
    biggest = polygons.loc[polygons["area_m2"].idxmax()]
    point = biggest.geometry.representative_point()
    px_, py_ = lonlat_to_canvas(np.array([point.x]), np.array([point.y]), view, width_px, height_px)
    label = f"Landslide #{int(biggest['landslide_id'])}"
    ui.click_map(d, px_[0], py_[0], lambda: label in ui.page_text(d), what=f"the attributes of {label}")

    # the full results page, every layer on, for a person to look at (and the README)
    ui.set_checkbox(d, "Quicklook", True)
    ui.set_checkbox(d, "Probability", True)
    time.sleep(3)
    d.save_screenshot(str(SCREENSHOTS / "app_results.png"))

    # offline: no request of the page left the app (no CDN, no tile server, no font service)
    requested = _requested_urls(d)
    assert any(u.startswith(url) for u in requested)  # the log does hold the page's requests
    outside = sorted({u for u in requested if not u.startswith((url, url.replace("http", "ws"), "data:", "blob:"))})
    assert not outside, outside

    # the GeoPackage download is the run folder's file, byte for byte
    ui.click(d, "GeoPackage", testid="stDownloadButton")
    target = d.downloads / "landslides.gpkg"
    ui.wait_for(lambda: target.exists() and target.stat().st_size > 0 and not list(d.downloads.glob("*.crdownload")),
                60, what="the GeoPackage download")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == \
        hashlib.sha256((run / "landslides.gpkg").read_bytes()).hexdigest()
    assert "Traceback" not in log.read_text()


def _requested_urls(d) -> list[str]:
    """Every URL the page requested so far (Chromium's performance log)."""
    import json

    urls = []
    for entry in d.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            params = message["params"]
            urls.append(params.get("request", {}).get("url") or params.get("url", ""))
    return urls


UPLOAD_BOX = (141.95, 42.72, 141.965, 42.73)  # lon/lat, ~1.2 x 1.1 km of the landslide area


def _upload(d, label: str, *paths) -> None:
    box = ui.widget(d, "stFileUploader", label)
    box.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys("\n".join(str(p) for p in paths))
    ui.wait_for(lambda: all(p.name in ui.widget(d, "stFileUploader", label).text for p in paths), 60,
                what=f"the upload of {', '.join(p.name for p in paths)}")
    ui.idle(d)


def _run_and_wait(d, runs, before: set) -> "Path":
    ui.click(d, "Run scan")
    ui.wait_for(lambda: "landslide polygons" in ui.page_text(d) or "error:" in ui.page_text(d), 240,
                poll_s=1.0, what="the scan to finish")
    text = ui.page_text(d)
    assert "error:" not in text, text[-2000:]
    new = [p for p in runs.iterdir() if (p / "manifest.json").exists() and p not in before]
    assert len(new) == 1
    return new[0]


def test_uploads_geotiff_band_files_and_l4s_patch(app_server, browser, tmp_path, shared_data):
    """The upload page: a multi-band GeoTIFF crop with a DEM, separate band files, a corrupt file and
    a Landslide4Sense patch, each as a user uploads them."""
    import json

    from tests.data.crops import IBURI, crop_raster, iburi_multiband_image

    url, runs, _, log = app_server
    d = browser
    image = iburi_multiband_image(tmp_path / "iburi_post.tif", UPLOAD_BOX,
                                  tags={"ACQUISITION_DATE": "2018-09-11T01:50:00Z"})
    dem = crop_raster(IBURI / "dem" / "AW3D30_DSM.tif", tmp_path / "dem.tif", (141.94, 42.71, 141.975, 42.74))
    ui.open_app(d, url, "New scan")
    ui.radio(d, "Input", "Upload files")
    ui.radio(d, "Files", "One multi-band GeoTIFF")
    # a corrupt upload is one message on the page, never a traceback
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a GeoTIFF\n" * 10)
    _upload(d, "Image (GeoTIFF)", bad)
    ui.wait_for(lambda: "is not a raster GDAL can read" in ui.page_text(d), 30, what="the upload error")
    assert "Traceback" not in ui.page_text(d)
    _upload(d, "Image (GeoTIFF)", image)  # replaces the broken one
    ui.wait_for(lambda: "3 bands; descriptions: B2, B3, B4" in ui.page_text(d), 30, what="the image check")
    _upload(d, "DEM (GeoTIFF", dem)
    before = set(runs.iterdir())
    run = _run_and_wait(d, runs, before)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["inputs"]["image"]["bands"] == ["B02", "B03", "B04"]
    assert manifest["inputs"]["image"]["path"].endswith("iburi_post.tif")
    assert manifest["counts"]["valid_fraction"] > 0.9

    # separate band files: stacked into one image, bands named from the file names
    band_files = [crop_raster(IBURI / "s2_post" / f"S2_post_B{k}.tif", tmp_path / f"S2_post_B{k}.tif",
                              UPLOAD_BOX) for k in (2, 3, 4)]
    ui.open_app(d, url, "New scan")
    ui.radio(d, "Input", "Upload files")
    ui.radio(d, "Files", "Separate band files")
    _upload(d, "Band files", *band_files)
    names = ui.widget(d, "stTextInput", "Band of each file").find_element(By.TAG_NAME, "input")
    ui.wait_for(lambda: names.get_attribute("value") == "B02,B03,B04", 30, what="the band names")
    _upload(d, "DEM (GeoTIFF", dem)
    run = _run_and_wait(d, runs, set(runs.iterdir()))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["inputs"]["image"]["bands"] == ["B02", "B03", "B04"]
    assert manifest["counts"]["polygons"] >= 0 and manifest["counts"]["valid_fraction"] > 0.9

    # a Landslide4Sense patch: no georeference, a probability PNG and an .npy like the paper's app
    patch = shared_data / "l4s_test_patches" / "img" / "image_31.h5"
    ui.open_app(d, url, "New scan")
    ui.radio(d, "Input", "Upload files")
    ui.radio(d, "Files", "Landslide4Sense")
    _upload(d, "L4S patch", patch)
    ui.click(d, "Predict", testid="stButton")
    ui.wait_for(lambda: "Download image_31_probability.npy" in ui.page_text(d), 120, what="the patch result")
    npy = next(runs.glob(".app/uploads/*/image_31-prediction/image_31_probability.npy"))
    prob = np.load(npy)
    assert prob.shape == (128, 128) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
    d.save_screenshot(str(SCREENSHOTS / "app_l4s_patch.png"))
    assert "Traceback" not in log.read_text()


def test_review_confirm_and_reject_written_to_the_inventory(app_server, browser, iburi_run):
    """A reviewer confirms one polygon (picked on the map) and rejects another (picked in the list,
    with a note); the inventory file then holds both decisions and two rows of history."""
    import json

    from shapely.geometry import mapping

    from tasks.inventory.merge import merge_run
    from tasks.inventory.review import list_polygons, review_history

    url, runs, state, log = app_server
    manifest = json.loads((iburi_run / "manifest.json").read_text())
    inventory = state / "iburi-2018" / "inventory.gpkg"
    inventory.parent.mkdir(parents=True, exist_ok=True)
    merge_run(inventory, iburi_run / "landslides.gpkg", manifest["run_id"], manifest["inputs"]["scene_ids"],
              model="index")
    before = {p.polygon_id: p for p in list_polygons(inventory)}
    assert len(before) >= 2 and all(p.review_status == "unreviewed" for p in before.values())
    d = browser
    ui.open_app(d, url + "/review", "Review")
    ui.wait_for(lambda: "inventory iburi-2018" in ui.selectbox_text(d, "Inventory or run"), 30,
                what="the inventory, first in the list")
    # pick the largest polygon on the map: click a point inside it
    import geopandas as gpd

    polygons = gpd.read_file(inventory, layer="landslides").to_crs("EPSG:4326")
    biggest = polygons.loc[polygons["area_m2"].idxmax()]
    target = int(biggest["inventory_id"])
    point = biggest.geometry.representative_point()
    ui.wait_for(lambda: d.find_elements(By.CSS_SELECTOR, '[data-testid="stDeckGlJsonChart"] canvas'), 30,
                what="the review map")
    time.sleep(3)
    deck = d.find_elements(By.CSS_SELECTOR, '[data-testid="stDeckGlJsonChart"]')[0]
    view = fit_view(tuple(polygons.total_bounds), MAP_WIDTH_GUESS_PX, MAP_HEIGHT_PX)
    x, y = lonlat_to_canvas(np.array([point.x]), np.array([point.y]), view, deck.size["width"],
                            deck.size["height"])
    ui.click_map(d, x[0], y[0], lambda: ui.selectbox_text(d, "Landslide").startswith(f"#{target} "),
                 what=f"polygon #{target} selected by the map click")
    ui.click(d, "Confirm")
    ui.wait_for(lambda: f"#{target}: confirm saved by test-reviewer" in ui.page_text(d), 30, what="the save")
    other = next(i for i in sorted(before) if i != target)
    ui.choose(d, "Landslide", f"#{other} ")
    box = ui.widget(d, "stTextArea", "Note").find_element(By.TAG_NAME, "textarea")
    box.send_keys("river bank, not a landslide")
    box.send_keys(Keys.TAB)  # a text area commits on blur
    ui.idle(d)
    ui.click(d, "Reject")
    ui.wait_for(lambda: f"#{other}: reject saved by test-reviewer" in ui.page_text(d), 30, what="the save")
    d.save_screenshot(str(SCREENSHOTS / "app_review.png"))
    # a row picked in the polygons table selects that polygon too (the grid: 35 px header and rows,
    # row markers in the first column)
    grid = d.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')[0]
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", grid)
    fourth = sorted(before)[3]
    ui.click_map(d, 12, 35 + 3 * 35 + 17, lambda: ui.selectbox_text(d, "Landslide").startswith(f"#{fourth} "),
                 what=f"polygon #{fourth} selected in the table", testid="stDataFrame")

    after = {p.polygon_id: p for p in list_polygons(inventory)}
    assert after[target].review_status == "confirmed" and after[target].reviewed_by == "test-reviewer"
    assert after[other].review_status == "rejected" and after[other].review_note == "river bank, not a landslide"
    assert all(p.review_status == "unreviewed" for i, p in after.items() if i not in (target, other))
    history = review_history(inventory)
    assert [(h.polygon_id, h.decision) for h in history] == [(target, "confirm"), (other, "reject")]
    assert mapping(biggest.geometry)  # the polygon we clicked exists in the file we reread
    assert "Traceback" not in log.read_text()


def test_a_refused_scan_shows_the_cli_line(app_server, browser, tmp_path):
    """A scan with no scene in its window: the page shows the same one-line error as the CLI."""
    import subprocess
    import sys

    url, runs, _, log = app_server
    argv = ["--source", "iburi-2018-local", "--bbox", BBOX, "--start", "2016-01-01", "--end", "2016-01-31"]
    cli = subprocess.run([sys.executable, "-m", "flows.cli", "scan", *argv, "--out", str(tmp_path / "cli")],
                         capture_output=True, text=True, cwd=tmp_path.parent)
    assert cli.returncode == 2
    cli_line = next(line for line in cli.stderr.splitlines() if line.startswith("error: "))
    d = browser
    ui.open_app(d, url, "New scan")
    ui.radio(d, "Input", "Bounding box")
    ui.choose(d, "Source", "iburi-2018-local")
    ui.type_text(d, "Bounding box", BBOX)
    ui.type_date(d, "First date", "2016-01-01")
    ui.type_date(d, "Last date", "2016-01-31")
    ui.click(d, "Run scan")
    ui.wait_for(lambda: "error:" in ui.page_text(d), 120, what="the scan's error")
    shown = next(line for line in ui.page_text(d).splitlines() if line.startswith("error: "))
    assert shown == cli_line
    assert "Traceback" not in ui.page_text(d) and "Traceback" not in log.read_text()
