"""Cloud and cloud-shadow masks computed from the scene's own L1C bands (s2cloudless + a shadow projection).

Used where a source gives no cloud mask (``cloud_detector`` in ``data_catalog.yaml``, see README.md).
Alignment (``tasks.raster.align.build_stack``) calls :func:`detect_clouds` for such a scene before it plans
the stack; the mask it writes (``clouds_<scene>.tif`` on the analysis grid: 0 clear, 1 cloud, 2 shadow)
then goes the way of every source's cloud mask (``tasks.sources.cloud``): its pixels leave the footprint.

Cloud: Sentinel Hub's s2cloudless pixel classifier (LightGBM; the model file ships inside the package, no
network) on TOA reflectance (DN / 10000, harmonized) of B01 B02 B04 B05 B08 B8A B09 B10 B11 B12, each
band averaged onto a coarse grid first (``DETECT_RES_M``: 160 m, the resolution Sentinel Hub runs it at
for its CLM/CLP layers), probability > ``threshold`` is cloud, then dilated by ``dilation_m``.

Shadow: the cloud mask shifted away from the sun by ``h * tan(sun zenith)`` for every cloud height ``h``
in ``heights_m`` (flat terrain, no view-angle parallax), and among those candidate pixels only the dark
ones (B08 NIR below ``nir_dark_dn`` on the 10 m grid): a shadow darkens NIR strongly, lit land rarely is
that dark; water is, so water next to clouds is masked too (it is "not looked at", never a false "no
landslide").

Sentinel Hub scenes (plan ``sentinelhub-clm``): the ``CLM`` band is the cloud, and the same shadow
projection and darkness rule give the shadow class (``_clm_clouds``); one implementation for both.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_points
from rasterio.windows import Window
from scipy import ndimage

from tasks.core.files import atomic_write, work_raster_profile
from tasks.core.grid import AnalysisGrid
from tasks.raster.on_grid import on_grid_offset_px, read_on_grid
from tasks.sources.cloud import S2CLOUDLESS_BANDS, SH_CLM_ORIGIN

log = logging.getLogger(__name__)

DETECT_RES_M = 160.0
DEFAULT_THRESHOLD = 0.4  # s2cloudless's own default probability threshold
DEFAULT_DILATION_M = 160.0  # one detection pixel around every cloud pixel
# cloud heights the shadow is searched over: low cumulus bases to mid-level cloud tops
DEFAULT_HEIGHTS_M: tuple[float, float] = (300.0, 3000.0)
DEFAULT_NIR_DARK_DN = 1500.0  # B08 TOA reflectance 0.15
CLEAR, CLOUD, SHADOW = 0, 1, 2
CLASSES = {"cloud": CLOUD, "shadow": SHADOW}
MAX_SUN_ZENITH_DEG = 80.0  # beyond it a 3 km cloud's shadow would fall over 17 km away: not projected
MASK_ROWS = 1024  # rows of the 10 m mask computed and written at a time


def solar_position(when: dt.datetime, lon: float, lat: float) -> tuple[float, float]:
    """Sun azimuth (degrees clockwise from north) and zenith (degrees) at ``when`` (UTC) and a place.

    NOAA's fractional-year approximation (declination and equation of time as Fourier series);
    good to a fraction of a degree, plenty for a shadow search over a range of cloud heights.
    """
    when = when.astimezone(dt.timezone.utc) if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    hours = when.hour + when.minute / 60 + when.second / 3600
    gamma = 2 * math.pi / 365 * (when.timetuple().tm_yday - 1 + (hours - 12) / 24)
    eqtime_min = 229.18 * (0.000075 + 0.001868 * math.cos(gamma) - 0.032077 * math.sin(gamma)
                           - 0.014615 * math.cos(2 * gamma) - 0.040849 * math.sin(2 * gamma))
    decl = (0.006918 - 0.399912 * math.cos(gamma) + 0.070257 * math.sin(gamma)
            - 0.006758 * math.cos(2 * gamma) + 0.000907 * math.sin(2 * gamma)
            - 0.002697 * math.cos(3 * gamma) + 0.00148 * math.sin(3 * gamma))
    true_solar_min = hours * 60 + eqtime_min + 4 * lon
    hour_angle = math.radians(true_solar_min / 4 - 180)
    phi = math.radians(lat)
    cos_zen = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    zenith = math.degrees(math.acos(max(-1.0, min(1.0, cos_zen))))
    azimuth = math.degrees(math.atan2(math.sin(hour_angle),
                                      math.cos(hour_angle) * math.sin(phi) - math.tan(decl) * math.cos(phi)))
    return (azimuth + 180.0) % 360.0, zenith


def shadow_offsets_px(res_m: float, sun_azimuth_deg: float, sun_zenith_deg: float,
                      heights_m: tuple[float, float]) -> list[tuple[int, int]]:
    """(row, col) shifts of a cloud's shadow for cloud heights across ``heights_m``, one per pixel of
    displacement (no gap between consecutive shifts).

    The shadow falls away from the sun: ``h * tan(zenith)`` metres towards azimuth + 180 degrees; rows
    grow southward, columns eastward.
    """
    if not 0 <= sun_zenith_deg < 90:
        raise ValueError(f"sun zenith {sun_zenith_deg} degrees: the sun is not above the horizon")
    lo, hi = heights_m
    if not 0 <= lo <= hi:
        raise ValueError(f"cloud heights {heights_m}: need 0 <= low <= high")
    tan_z = math.tan(math.radians(sun_zenith_deg))
    az = math.radians(sun_azimuth_deg)
    east, north = -math.sin(az), -math.cos(az)  # unit vector away from the sun
    d_lo, d_hi = lo * tan_z / res_m, hi * tan_z / res_m  # displacement in pixels
    n = max(1, int(math.ceil(d_hi - d_lo)) + 1)
    offsets = []
    for d in np.linspace(d_lo, d_hi, n):
        offsets.append((int(round(-north * d)), int(round(east * d))))
    return list(dict.fromkeys(offsets))


def shift(mask: np.ndarray, drow: int, dcol: int) -> np.ndarray:
    """``mask`` moved by (drow, dcol) pixels, False where nothing moved in (no wrap-around)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(drow) >= h or abs(dcol) >= w:
        return out
    src = mask[max(0, -drow):h - max(0, drow), max(0, -dcol):w - max(0, dcol)]
    out[max(0, drow):max(0, drow) + src.shape[0], max(0, dcol):max(0, dcol) + src.shape[1]] = src
    return out


def shadow_candidates(cloud: np.ndarray, res_m: float, sun_azimuth_deg: float, sun_zenith_deg: float,
                      heights_m: tuple[float, float] = DEFAULT_HEIGHTS_M) -> np.ndarray:
    """bool (H, W): where the shadow of ``cloud`` (bool (H, W)) can fall for a cloud height in
    ``heights_m``; cloud pixels themselves are not candidates (under a cloud it is cloud)."""
    zone = np.zeros_like(cloud, dtype=bool)
    for drow, dcol in shadow_offsets_px(res_m, sun_azimuth_deg, sun_zenith_deg, heights_m):
        zone |= shift(cloud.astype(bool), drow, dcol)
    return zone & ~cloud.astype(bool)


def disk(radius_px: int) -> np.ndarray:
    """bool (2r+1, 2r+1) disk structuring element."""
    yy, xx = np.mgrid[-radius_px:radius_px + 1, -radius_px:radius_px + 1]
    return xx * xx + yy * yy <= radius_px * radius_px


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """``mask`` (bool) dilated by a disk of ``radius_px`` (0: unchanged)."""
    if radius_px <= 0 or not mask.any():
        return mask.astype(bool)
    return ndimage.binary_dilation(mask, structure=disk(radius_px))


def classify(cloud: np.ndarray, shadow_zone: np.ndarray, nir_dn: np.ndarray, nir_dark_dn: float,
             green_dn: np.ndarray | None = None) -> np.ndarray:
    """uint8 classes: CLOUD where ``cloud``, SHADOW where a shadow candidate is dark in NIR (``nir_dn``
    below ``nir_dark_dn``; NaN is not dark) and, given ``green_dn``, not water-like (water reflects
    less NIR than green; shadowed land does not), else CLEAR. All arrays (H, W) on one grid."""
    with np.errstate(invalid="ignore"):
        dark = nir_dn < nir_dark_dn
        if green_dn is not None:
            dark &= nir_dn >= green_dn
    out = np.full(cloud.shape, CLEAR, dtype=np.uint8)
    out[shadow_zone & dark] = SHADOW
    out[cloud] = CLOUD
    return out


def cloud_probability(bands_toa: np.ndarray) -> np.ndarray:
    """s2cloudless cloud probability (H, W) float32 of ``bands_toa`` (10, H, W) TOA reflectance
    (0..1) in ``S2CLOUDLESS_BANDS`` order."""
    from s2cloudless import S2PixelCloudDetector  # lightgbm loads only when a detector runs

    detector = S2PixelCloudDetector(threshold=DEFAULT_THRESHOLD, average_over=None, dilation_size=None)
    return detector.get_cloud_probability_maps(np.moveaxis(bands_toa, 0, -1)[None])[0]


def _coarse_grid(grid: AnalysisGrid) -> tuple[int, Affine, int, int]:
    """The detection grid: ``grid``'s origin, pixels of ``factor`` x ``factor`` analysis pixels."""
    factor = max(1, int(round(DETECT_RES_M / grid.res_m)))
    transform = grid.transform * Affine.scale(factor)
    return factor, transform, -(-grid.width // factor), -(-grid.height // factor)


def _read_on(path: str, crs: str, transform: Affine, width: int, height: int, resampling: Resampling,
             nodata: float | None, window: Window | None = None) -> np.ndarray:
    """float32 (H, W) of ``path`` warped onto a grid; NaN for nodata."""
    with rasterio.open(path) as src:
        src_nodata = nodata if nodata is not None else src.nodata
        kwargs = dict(crs=crs, transform=transform, width=width, height=height, resampling=resampling)
        if src_nodata is not None:
            kwargs.update(src_nodata=src_nodata, nodata=src_nodata)
        with WarpedVRT(src, **kwargs) as vrt:
            data = vrt.read(1, window=window).astype("float32")
    if src_nodata is not None:
        data[data == np.float32(src_nodata)] = np.nan
    return data


def _read_grid_window(path: str, grid: AnalysisGrid, nodata: float | None, window: Window) -> np.ndarray:
    """float32 (h, w) of ``path`` in ``window`` of the analysis grid, NaN for nodata: bilinear through
    the warper, or read as it is where the file's pixels are the grid's (the same values)."""
    with rasterio.open(path) as src:
        offset_px = on_grid_offset_px(src, grid)
        if offset_px is not None:
            src_nodata = nodata if nodata is not None else src.nodata
            data = read_on_grid(src, offset_px, window, 0 if src_nodata is None else src_nodata)
    if offset_px is None:
        return _read_on(path, grid.crs, grid.transform, grid.width, grid.height, Resampling.bilinear, nodata,
                        window)
    if src_nodata is not None:
        data[data == np.float32(src_nodata)] = np.nan
    return data


def detect_clouds(scene: dict, grid: AnalysisGrid, work_dir: str | Path) -> dict:
    """Run the scene's ``cloud_detector`` plan and write its mask on ``grid``; return the cloud mask spec
    alignment applies (``tasks.sources.cloud``), with the method, its parameters and per-class counts.

    Two plans (``plan["method"]``): ``s2cloudless`` computes the cloud from the scene's bands;
    ``sentinelhub-clm`` takes Sentinel Hub's ``CLM`` band as the cloud. Both get their shadows from the
    same projection (:func:`shadow_candidates` at ``DETECT_RES_M``, then :func:`classify` on the 10 m
    grid with B08/B03).

    Args:
        scene: one scene of ``SceneInputs.scenes()`` with a ``cloud_detector`` dict
            (``tasks.sources.cloud.detector_plan`` or ``clm_plan``).
        grid: the analysis grid.
        work_dir: where ``clouds_<n>.tif`` is written.
    """
    plan = scene["cloud_detector"]
    if plan["method"] == "sentinelhub-clm":
        return _clm_clouds(scene, grid, work_dir)
    factor, ctransform, cw, ch = _coarse_grid(grid)
    offset = float(scene.get("offset_dn") or 0.0)
    nodata = scene.get("band_nodata")
    toa, read = [], {}
    for band in S2CLOUDLESS_BANDS:
        path = plan["band_paths"][band]
        if path not in read:  # B08 stands in for a missing B8A: read once
            data = _read_on(path, grid.crs, ctransform, cw, ch, Resampling.average, nodata)
            read[path] = np.maximum(data - offset, 0.0) / 10000.0
        toa.append(read[path])
    toa_arr = np.stack(toa)
    has_data = np.isfinite(toa_arr).all(axis=0)
    prob = cloud_probability(np.nan_to_num(toa_arr, nan=0.0))
    coarse_res = grid.res_m * factor
    cloud = (prob > plan["threshold"]) & has_data
    cloud = dilate(cloud, int(round(plan["dilation_m"] / coarse_res)))
    cc = np.arange(grid.width) // factor

    def cloud_rows(r0: int, rows: int) -> np.ndarray:
        return cloud[np.ix_(np.arange(r0, r0 + rows) // factor, cc)]

    path, counts, shadows, shadows_off = _write_classes(scene, grid, work_dir, cloud, cloud_rows,
                                                        "0 clear, 1 cloud (s2cloudless), 2 cloud shadow")
    valid_prob = prob[has_data]
    method = {"method": "s2cloudless", "detection_res_m": coarse_res, "threshold": plan["threshold"],
              "dilation_m": plan["dilation_m"], "b8a": plan["b8a"],
              "shadows": shadows or {"applied": False, "reason": shadows_off}}
    class_px = {"cloud": int(counts[CLOUD]), "shadow": int(counts[SHADOW])}
    log.info("clouds: scene %s, %d cloud px and %d shadow px of %d (s2cloudless at %g m, p > %g)",
             scene["scene_id"], class_px["cloud"], class_px["shadow"], grid.width * grid.height, coarse_res,
             plan["threshold"])
    return {"path": str(path), "cloud_values": [CLOUD, SHADOW],
            "origin": f"s2cloudless on the scene's bands at {coarse_res:g} m, p > {plan['threshold']:g}"
                      + (", with projected shadows" if shadows else ""),
            "method": method, "class_px": class_px,
            "max_probability": round(float(valid_prob.max()), 4) if valid_prob.size else None}


def _clm_clouds(scene: dict, grid: AnalysisGrid, work_dir: str | Path) -> dict:
    """The ``sentinelhub-clm`` plan: cloud where the CLM raster (on ``grid``) is in ``cloud_range``; the
    shadows are cast by its cloud pixels proper (value 1; the 2..254 blends with no data at a scene's
    edge are cloud but cast none), gathered onto the ``DETECT_RES_M`` grid CLM was made at."""
    plan = scene["cloud_detector"]
    lo, hi = plan["cloud_range"]
    factor, _, cw, ch = _coarse_grid(grid)
    block_rows = factor * max(1, MASK_ROWS // factor)

    def clm_rows(r0: int, rows: int) -> np.ndarray:
        return _read_on(plan["clm_path"], grid.crs, grid.transform, grid.width, grid.height, Resampling.nearest,
                        None, Window(0, r0, grid.width, rows))

    coarse = np.zeros((ch, cw), dtype=bool)
    for r0 in range(0, grid.height, block_rows):
        rows = min(block_rows, grid.height - r0)
        casts = clm_rows(r0, rows) == 1  # NaN (the file's nodata) is not
        padded = np.zeros((-(-rows // factor) * factor, cw * factor), dtype=bool)
        padded[:rows, :grid.width] = casts
        coarse[r0 // factor:r0 // factor + padded.shape[0] // factor] = (
            padded.reshape(-1, factor, cw, factor).any(axis=(1, 3)))

    def cloud_rows(r0: int, rows: int) -> np.ndarray:
        values = clm_rows(r0, rows)
        with np.errstate(invalid="ignore"):
            return (values >= lo) & (values <= hi)

    path, counts, shadows, shadows_off = _write_classes(scene, grid, work_dir, coarse, cloud_rows,
                                                        "0 clear, 1 cloud (Sentinel Hub CLM), 2 cloud shadow")
    coarse_res = grid.res_m * factor
    method = {"method": "sentinelhub-clm", "cloud": f"CLM values {lo}..{hi}",
              "shadow_cast_by": f"CLM == 1, gathered onto {coarse_res:g} m",
              "shadows": shadows or {"applied": False, "reason": shadows_off}}
    class_px = {"cloud": int(counts[CLOUD]), "shadow": int(counts[SHADOW])}
    log.info("clouds: scene %s, %d cloud px (Sentinel Hub CLM) and %d shadow px of %d", scene["scene_id"],
             class_px["cloud"], class_px["shadow"], grid.width * grid.height)
    return {"path": str(path), "cloud_values": [CLOUD, SHADOW],
            "origin": SH_CLM_ORIGIN + (", with projected shadows" if shadows else ""),
            "method": method, "class_px": class_px, "max_probability": None}


def _write_classes(scene: dict, grid: AnalysisGrid, work_dir: str | Path, coarse_cloud: np.ndarray,
                   cloud_rows, description: str) -> tuple[Path, np.ndarray, dict | None, str]:
    """Project the shadows of ``coarse_cloud`` (bool, the ``_coarse_grid`` of ``grid``) and write
    ``clouds_<scene>.tif`` row block by row block: CLOUD where ``cloud_rows(r0, rows)`` (bool, 10 m
    rows), SHADOW where a shadow candidate is dark in B08 (and not water-like, given B03).

    Returns:
        (the mask's path, pixel counts per class, the shadow parameters with the sun's angles or
        None, why there are none).
    """
    plan = scene["cloud_detector"]
    factor, _, _, _ = _coarse_grid(grid)
    coarse_res = grid.res_m * factor
    offset = float(scene.get("offset_dn") or 0.0)
    nodata = scene.get("band_nodata")
    shadows = _sun_angles(plan.get("shadows"), plan.get("acquired"), grid)
    shadows_off = plan.get("shadows_off", "")
    if shadows and shadows["sun_zenith_deg"] >= MAX_SUN_ZENITH_DEG:
        shadows_off = (f"sun zenith {shadows['sun_zenith_deg']:g} degrees >= {MAX_SUN_ZENITH_DEG:g}: shadows "
                       "too long to project")
        shadows = None
    zone = (shadow_candidates(coarse_cloud, coarse_res, shadows["sun_azimuth_deg"], shadows["sun_zenith_deg"],
                              tuple(shadows["heights_m"]))
            if shadows else np.zeros_like(coarse_cloud))
    path = Path(work_dir) / f"clouds_{_safe(scene['scene_id'])}.tif"
    profile = work_raster_profile({"driver": "GTiff", "width": grid.width, "height": grid.height,
                                   "crs": grid.crs, "transform": grid.transform}, dtype="uint8")
    counts = np.zeros(3, dtype=np.int64)
    cc = np.arange(grid.width) // factor
    with atomic_write(path, suffix=".tmp.tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, grid.height, MASK_ROWS):
            rows = min(MASK_ROWS, grid.height - r0)
            rr = np.arange(r0, r0 + rows) // factor
            cloud_up, zone_up = cloud_rows(r0, rows), zone[np.ix_(rr, cc)]
            nir = green = None
            if shadows and zone_up.any():
                win = Window(0, r0, grid.width, rows)
                nir, green = (_read_grid_window(plan["band_paths"][b], grid, nodata, win) - offset
                              if b in plan["band_paths"] else None for b in ("B08", "B03"))
            if nir is None:
                nir = np.full(cloud_up.shape, np.nan, dtype="float32")
            classes = classify(cloud_up, zone_up, nir, shadows["nir_dark_dn"] if shadows else 0.0, green)
            counts += np.bincount(classes.ravel(), minlength=3)[:3]
            dst.write(classes, 1, window=Window(0, r0, grid.width, rows))
        dst.set_band_description(1, description)
    return path, counts, shadows, shadows_off


def _sun_angles(shadows: dict | None, acquired: str | None, grid: AnalysisGrid) -> dict | None:
    """The shadow parameters with the sun's angles: the scene's own, else computed for the acquisition
    time at the grid centre."""
    if not shadows or "sun_azimuth_deg" in shadows:
        return shadows
    (x0, y0, x1, y1) = grid.bounds
    lon, lat = transform_points(grid.crs, "EPSG:4326", [(x0 + x1) / 2], [(y0 + y1) / 2])
    azimuth, zenith = solar_position(dt.datetime.fromisoformat(acquired), lon[0], lat[0])  # type: ignore[arg-type]
    return {**shadows, "sun_azimuth_deg": round(azimuth, 2), "sun_zenith_deg": round(zenith, 2)}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
