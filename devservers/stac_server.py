"""A local STAC API (``rustac serve``) over COGs cut from the real T18SVG bands and GLO-30 tile.

What it builds (in a work folder, served by :class:`~devservers.static_files.StaticFileServer`):

- ``sentinel-2-l1c`` items shaped like Earth Search v1's: asset keys ``coastal, blue, green, red,
  rededge1-3, nir, nir08, nir09, cirrus, swir16, swir22`` (B01..B12 incl. B8A and B10), each asset a
  deflate COG cropped to a 3 km x 3 km window of the real 2016-01-12 bands at native 10/20/60 m in
  EPSG:32618, with ``eo:bands``, ``gsd``, ``proj:shape``/``proj:transform``, ``raster:bands``;
  item properties ``eo:cloud_cover``, ``proj:epsg`` (and ``proj:code``), ``s2:processing_baseline``,
  ``mgrs:*``, ``grid:code``, datetime.
  Three scenes, all with the same real pixels (only one real acquisition is available here):
  ``S2A_18SVG_20160112_0_L1C`` (baseline 02.01, cloud 2.5), ``S2A_18SVG_20160201_0_L1C`` (baseline
  02.01, cloud 71.3) and ``S2B_18SVG_20220125_0_L1C`` (baseline 04.00, cloud 8.4) whose COG values carry
  the +1000 DN radiometric offset of baseline >= 04.00 (nonzero pixels only, 0 stays nodata). Dates,
  cloud covers and the third scene are test assignments, not real metadata.
  Two more, for per-pixel mosaics: ``S2A_18SVG_20170110_0_L1C`` (cloud 3.1, baseline 02.04) with data
  and footprint only in the west 2.1 km of the crop, and ``S2B_18SVG_20170120_0_L1C`` (cloud 5.6,
  baseline 04.00: +1000) only in the east 2.1 km, its DN shifted by +37 so that the source of each
  mosaic pixel can be told from its value; they overlap over x = 439020..440220 (EPSG:32618).
- one ``cop-dem-glo-30`` item ``Copernicus_DSM_COG_10_N00_00_E006_00_DEM`` (asset ``data``, float32),
  a crop over Sao Tome of the real GLO-30 tile, with the crop's real bbox.

The items go into an ItemCollection JSON file loaded by ``rustac serve -a 127.0.0.1:PORT items.json``
(in-memory backend: ``/``, ``/collections``, ``/search`` GET/POST with bbox, datetime, collections,
paging; no ``query``/CQL2, so filter ``eo:cloud_cover`` on the client side).

Run by hand (Ctrl-C stops both servers)::

    landslide dev-server stac --port 8081 --static-port 8082 --dir /tmp/stac-test
    python -m devservers.stac_server --port 8081 --static-port 8082 --dir /tmp/stac-test   # servers only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import rasterio
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import from_bounds

from devservers.static_files import FaultControl, StaticFileServer, serve_until_interrupted

LOGGER = logging.getLogger(__name__)

SHARED_DATA_ENV = "LANDSLIDE_SHARED_DATA"
# ../shared/data beside the repository; $LANDSLIDE_SHARED_DATA points elsewhere
SHARED_DATA = Path(os.environ.get(SHARED_DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")
S2_JP2_DIR = SHARED_DATA / "s2_l1c_t18svg_20160112" / "jp2"
GLO30_TIF = SHARED_DATA / "cop_dem_glo30_n00e006" / "Copernicus_DSM_COG_10_N00_00_E006_00_DEM.tif"

S2_COLLECTION = "sentinel-2-l1c"
DEM_COLLECTION = "cop-dem-glo-30"
S2_EPSG = 32618
# Crop window in EPSG:32618, on the 60 m grid of the tile (435720, 4179480) and on the 10/20 m grids.
S2_CROP_BOUNDS = (438120.0, 4174080.0, 441120.0, 4177080.0)  # left, bottom, right, top: 3 km x 3 km
# GLO-30 crop over Sao Tome island (steep volcanic terrain), in degrees.
DEM_CROP_BOUNDS = (6.50, 0.20, 6.70, 0.40)
BASELINE_OFFSET_DN = 1000  # radiometric offset added to L1C DN from processing baseline 04.00
# The split scenes' footprints (EPSG:32618 x ranges; 60 m multiples from the crop's left edge, so every
# band's pixels fall wholly inside or outside) and the DN shift that makes the east one distinguishable.
SPLIT_WEST_X = (438120.0, 440220.0)
SPLIT_EAST_X = (439020.0, 441120.0)
SPLIT_EAST_DN_DELTA = 37

# Earth Search v1 asset key, band name, title, centre wavelength (um), FWHM (um), gsd (m).
S2_ASSETS: tuple[tuple[str, str, str, float, float, int], ...] = (
    ("coastal", "B01", "Coastal aerosol (band 1) - 60m", 0.443, 0.027, 60),
    ("blue", "B02", "Blue (band 2) - 10m", 0.49, 0.098, 10),
    ("green", "B03", "Green (band 3) - 10m", 0.56, 0.045, 10),
    ("red", "B04", "Red (band 4) - 10m", 0.665, 0.038, 10),
    ("rededge1", "B05", "Red edge 1 (band 5) - 20m", 0.704, 0.019, 20),
    ("rededge2", "B06", "Red edge 2 (band 6) - 20m", 0.74, 0.018, 20),
    ("rededge3", "B07", "Red edge 3 (band 7) - 20m", 0.783, 0.028, 20),
    ("nir", "B08", "NIR 1 (band 8) - 10m", 0.842, 0.145, 10),
    ("nir08", "B8A", "NIR 2 (band 8A) - 20m", 0.865, 0.033, 20),
    ("nir09", "B09", "NIR 3 (band 9) - 60m", 0.945, 0.026, 60),
    ("cirrus", "B10", "Cirrus (band 10) - 60m", 1.3735, 0.075, 60),
    ("swir16", "B11", "SWIR 1 (band 11) - 20m", 1.61, 0.143, 20),
    ("swir22", "B12", "SWIR 2 (band 12) - 20m", 2.19, 0.242, 20),
)
ASSET_KEY_BY_BAND = {band: key for key, band, *_ in S2_ASSETS}


RUSTAC_MISSING = ("the local STAC API needs the `rustac` program, which comes with the test extras: "
                  "pip install -c constraints.txt -e '.[test]' (or just: pip install rustac)")


def find_rustac() -> str | None:
    """The ``rustac`` executable: beside the interpreter (a virtualenv that is not activated; CI
    runs .venv/bin/python directly), else on PATH; None when it is not installed."""
    beside = Path(sys.executable).parent / "rustac"
    return str(beside) if beside.exists() else shutil.which("rustac")


@dataclass(frozen=True)
class Scene:
    """A served sentinel-2-l1c scene (test assignment of date, cloud cover and baseline)."""

    item_id: str
    datetime: str
    cloud_cover: float
    processing_baseline: str
    platform: str
    # a partial footprint: [x0, x1) in EPSG:32618 inside the crop (pixels outside are 0 = no data, and
    # the item's geometry is that strip); None = the whole crop
    footprint_x: tuple[float, float] | None = None
    dn_delta: int = 0  # added to every nonzero DN (before the baseline offset), to tell scenes apart

    @property
    def footprint_bounds(self) -> tuple[float, float, float, float]:
        left, bottom, right, top = S2_CROP_BOUNDS
        if self.footprint_x is None:
            return S2_CROP_BOUNDS
        return (max(left, self.footprint_x[0]), bottom, min(right, self.footprint_x[1]), top)

    @property
    def offset_dn(self) -> int:
        return BASELINE_OFFSET_DN if float(self.processing_baseline) >= 4.0 else 0


SCENES: tuple[Scene, ...] = (
    Scene("S2A_18SVG_20160112_0_L1C", "2016-01-12T16:00:32Z", 2.5, "02.01", "sentinel-2a"),
    Scene("S2A_18SVG_20160201_0_L1C", "2016-02-01T16:00:42Z", 71.3, "02.01", "sentinel-2a"),
    Scene("S2B_18SVG_20220125_0_L1C", "2022-01-25T16:04:19Z", 8.4, "04.00", "sentinel-2b"),
    # two overlapping partial scenes (the per-pixel mosaic case): no item of January 2017 covers a ROI
    # crossing x = 439020..440220, where both have data; the west one is less cloudy
    Scene("S2A_18SVG_20170110_0_L1C", "2017-01-10T16:00:22Z", 3.1, "02.04", "sentinel-2a",
          footprint_x=SPLIT_WEST_X),
    Scene("S2B_18SVG_20170120_0_L1C", "2017-01-20T16:00:35Z", 5.6, "04.00", "sentinel-2b",
          footprint_x=SPLIT_EAST_X, dn_delta=SPLIT_EAST_DN_DELTA),
)
DEM_ITEM_ID = "Copernicus_DSM_COG_10_N00_00_E006_00_DEM"


def _write_cog(path: Path, data: np.ndarray, profile: dict) -> None:
    """Write (H, W) ``data`` as a deflate COG with 128 px tiles (several tiles even for small crops)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="COG", compress="DEFLATE", blocksize=128, count=1,
        height=data.shape[0], width=data.shape[1], dtype=data.dtype, **profile,
    ) as dst:
        dst.write(data, 1)


def crop_band(band: str, bounds: tuple[float, float, float, float] = S2_CROP_BOUNDS) -> tuple[np.ndarray, dict]:
    """Read the crop of one real T18SVG band at its native resolution.

    Returns:
        ((H, W) uint16 array, profile with crs/transform/nodata).
    """
    with rasterio.open(S2_JP2_DIR / f"s2_{band}.jp2") as src:
        window = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        data = src.read(1, window=window)
        transform = src.window_transform(window)
    return data, {"crs": f"EPSG:{S2_EPSG}", "transform": transform, "nodata": 0}


def build_cogs(out_dir: Path) -> dict[str, dict[str, Path]]:
    """Write every scene's band COGs and the DEM COG under ``out_dir``.

    Returns:
        item id -> asset key -> COG path.
    """
    paths: dict[str, dict[str, Path]] = {}
    for key, band, *_ in S2_ASSETS:
        data, profile = crop_band(band)
        for scene in SCENES:
            folder = out_dir / "sentinel-s2-l1c-cogs" / "18" / "S" / "VG" / scene.item_id
            values = data
            if scene.footprint_x is not None:
                values = _footprint_values(data, profile["transform"], scene)
            if scene.offset_dn:
                values = np.where(values > 0, values.astype(np.uint32) + scene.offset_dn, 0)
                values = np.minimum(values, np.iinfo(np.uint16).max).astype(np.uint16)
            path = folder / f"{band}.tif"
            _write_cog(path, values, profile)
            paths.setdefault(scene.item_id, {})[key] = path
    with rasterio.open(GLO30_TIF) as src:
        window = from_bounds(*DEM_CROP_BOUNDS, transform=src.transform).round_offsets().round_lengths()
        dem = src.read(1, window=window)
        profile = {"crs": src.crs, "transform": src.window_transform(window), "nodata": src.nodata}
    dem_path = out_dir / "copernicus-dem-30m" / DEM_ITEM_ID / f"{DEM_ITEM_ID}.tif"
    _write_cog(dem_path, dem, profile)
    paths[DEM_ITEM_ID] = {"data": dem_path}
    return paths


def _footprint_values(data: np.ndarray, transform: rasterio.Affine, scene: Scene) -> np.ndarray:
    """``data`` + ``scene.dn_delta`` where nonzero, 0 (no data) for pixels centred outside the footprint."""
    x0, _, x1, _ = scene.footprint_bounds
    centres = transform.c + (np.arange(data.shape[1]) + 0.5) * transform.a
    inside = (centres >= x0) & (centres < x1)
    shifted = np.where(data > 0, data.astype(np.int32) + scene.dn_delta, 0)
    shifted = np.where(inside[None, :], shifted, 0)
    return np.clip(shifted, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _footprint(bounds: tuple[float, float, float, float], crs: str) -> tuple[dict, list[float]]:
    left, bottom, right, top = bounds
    ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    bbox = list(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))
    return geom, bbox


def _raster_info(path: Path) -> tuple[list[int], list[float]]:
    with rasterio.open(path) as src:
        return [src.height, src.width], list(src.transform)[:6]


def s2_item(scene: Scene, hrefs: dict[str, str], paths: dict[str, Path]) -> dict:
    """A sentinel-2-l1c item dict shaped like Earth Search v1's, assets pointing at ``hrefs``."""
    geometry, bbox = _footprint(scene.footprint_bounds, f"EPSG:{S2_EPSG}")
    date = scene.datetime[:10].replace("-", "")
    baseline = scene.processing_baseline.replace(".", "")
    product_uri = f"S2{scene.platform[-1].upper()}_MSIL1C_{date}T155612_N{baseline}_R097_T18SVG_{date}T160000.SAFE"
    assets = {}
    for key, band, title, wavelength, fwhm, gsd in S2_ASSETS:
        shape, transform = _raster_info(paths[key])
        assets[key] = {
            "href": hrefs[key],
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": title,
            "eo:bands": [{"name": key, "common_name": key if key not in ("rededge1", "rededge2", "rededge3") else "rededge",
                          "description": title.split(" - ")[0], "center_wavelength": wavelength,
                          "full_width_half_max": fwhm}],
            "gsd": gsd,
            "proj:shape": shape,
            "proj:transform": transform,
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": gsd,
                              "scale": 0.0001, "offset": -0.1 if scene.offset_dn else 0}],
            "roles": ["data", "reflectance"],
        }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
        ],
        "id": scene.item_id,
        "collection": S2_COLLECTION,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": scene.datetime,
            "platform": scene.platform,
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": scene.cloud_cover,
            "proj:epsg": S2_EPSG,
            # projection v2 spelling, for readers that only know proj:code
            "proj:code": f"EPSG:{S2_EPSG}",
            "mgrs:utm_zone": 18,
            "mgrs:latitude_band": "S",
            "mgrs:grid_square": "VG",
            "grid:code": "MGRS-18SVG",
            "s2:product_type": "S2MSI1C",
            "s2:processing_baseline": scene.processing_baseline,
            "s2:product_uri": product_uri,
            "s2:sequence": "0",
            "earthsearch:boa_offset_applied": False,
        },
        "links": [],
        "assets": assets,
    }


def dem_item(href: str, path: Path) -> dict:
    """The cop-dem-glo-30 item of the GLO-30 crop, shaped like Earth Search's."""
    with rasterio.open(path) as src:
        bbox = list(src.bounds)
        shape, transform = [src.height, src.width], list(src.transform)[:6]
    left, bottom, right, top = bbox
    ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
        ],
        "id": DEM_ITEM_ID,
        "collection": DEM_COLLECTION,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": bbox,
        "properties": {
            "datetime": "2021-04-22T00:00:00Z",
            "platform": "tandem-x",
            "gsd": 30,
            "proj:epsg": 4326,
            "proj:code": "EPSG:4326",
            "proj:shape": shape,
            "proj:transform": transform,
            "grid:code": "CDEM-N00E006",
        },
        "links": [],
        "assets": {
            "data": {
                "href": href,
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "title": "Data",
                "raster:bands": [{"sampling": "point", "data_type": "float32", "spatial_resolution": 30,
                                  "unit": "meter"}],
                "roles": ["data"],
            }
        },
    }


def build_items(paths: dict[str, dict[str, Path]], static: StaticFileServer) -> list[dict]:
    """Item dicts for every built COG, hrefs on ``static``."""
    items = []
    for scene in SCENES:
        hrefs = {key: static.href(p) for key, p in paths[scene.item_id].items()}
        items.append(s2_item(scene, hrefs, paths[scene.item_id]))
    dem_path = paths[DEM_ITEM_ID]["data"]
    items.append(dem_item(static.href(dem_path), dem_path))
    return items


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (for servers that need a port up front)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RustacServer:
    """``rustac serve`` as a subprocess on 127.0.0.1, started healthy or not at all."""

    def __init__(self, items_path: Path, port: int = 0, startup_timeout_s: float = 20.0) -> None:
        self.items_path = items_path
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._log = items_path.with_suffix(".rustac.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "RustacServer":
        import requests

        # the console script sits beside the interpreter of a virtualenv that is not activated
        # (CI runs .venv/bin/python directly, so .venv/bin is not on PATH)
        exe = find_rustac()
        if exe is None:
            raise RuntimeError(RUSTAC_MISSING)
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [exe, "serve", "-a", f"127.0.0.1:{self.port}", str(self.items_path)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/", timeout=0.5).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rustac serve did not become healthy at {self.url}: {self._log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None


@dataclass
class StacApi:
    """Handle on a running STAC API test setup.

    Attributes:
        url: STAC API root (``rustac serve``), for ``pystac_client.Client.open``.
        static_url: root of the static COG server.
        faults: fault script + request log of the static COG server.
        items: the served item dicts (asset hrefs on ``static_url``).
        cog_paths: item id -> asset key -> local COG path (the bytes served).
        work_dir: folder with the COGs and ``items.json``.
    """

    url: str
    static_url: str
    faults: FaultControl
    items: list[dict]
    cog_paths: dict[str, dict[str, Path]]
    work_dir: Path
    scenes: tuple[Scene, ...] = field(default=SCENES)

    def item(self, item_id: str) -> dict:
        return next(i for i in self.items if i["id"] == item_id)


@contextlib.contextmanager
def run_stac_api(work_dir: Path, port: int = 0, static_port: int = 0) -> Iterator[StacApi]:
    """Build the COGs/items in ``work_dir``, start the static server and ``rustac serve``; stop both on exit."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    paths = build_cogs(work_dir)
    static = StaticFileServer(work_dir, static_port).start()
    rustac = None
    try:
        items = build_items(paths, static)
        items_path = work_dir / "items.json"
        items_path.write_text(json.dumps({"type": "FeatureCollection", "features": items}, indent=1))
        rustac = RustacServer(items_path, port).start()
        yield StacApi(rustac.url, static.url, static.faults, items, paths, work_dir)
    finally:
        if rustac is not None:
            rustac.stop()
        static.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local STAC API (rustac serve) over real T18SVG / GLO-30 COGs")
    parser.add_argument("--port", type=int, default=8081, help="STAC API port")
    parser.add_argument("--static-port", type=int, default=8082, help="COG file server port")
    parser.add_argument("--dir", default=None, help="work folder for COGs and items.json (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    import signal
    import tempfile

    # SIGTERM (e.g. `timeout`, a process manager) must also stop the rustac child: turn it into SystemExit
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="stac-test-"))
    with run_stac_api(work, args.port, args.static_port) as api:
        print(f"STAC API: {api.url}  COGs: {api.static_url}  items: {work / 'items.json'}  (Ctrl-C to stop)",
              flush=True)
        serve_until_interrupted()


if __name__ == "__main__":
    main()
