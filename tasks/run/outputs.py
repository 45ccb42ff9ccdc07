"""Run outputs: COGs (probability, uncertainty, mask), manifest.json, and the atomic hand-over.

Every file is written into a staging folder (``<out>/.staging``) and moved into place only when the
whole run has succeeded, so a reader never sees half a run and a failed run leaves no file under a
final name (docs/contracts.md section 3).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.io import MemoryFile

from tasks.core import defaults
from tasks.core.errors import InputError
from tasks.core.files import atomic_write, atomic_write_json, folder_lock, utc_now_iso, work_raster_profile
from tasks.core.tiling import iter_blocks

PROB_SCALE = 254.0  # value = round(p * 254); 255 = nodata
NODATA_U8 = 255
# the QGIS sidecars: a style per COG (QGIS applies NAME.qml to NAME.tif) and a project of the run
QGIS_NAMES = ("probability.qml", "uncertainty.qml", "mask.qml", "run.qgs")
FINAL_NAMES = ("landslides.gpkg", "probability.tif", "uncertainty.tif", "mask.tif", *QGIS_NAMES,
               "manifest.json", "quicklook.png", "report.html", "item.json")
# written only when asked for (--format): a run published without one removes an earlier run's
OPTIONAL_NAMES = tuple(defaults.EXPORT_FILES.values())
# mask.tif's classes: value -> (name, colour table entry RGBA)
MASK_CLASSES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    0: ("no landslide", (255, 255, 255, 0)),
    1: ("landslide", (227, 26, 28, 255)),
}
STAGING = ".staging"
WORK = ".work"
LOCK = ".lock"  # held (flock) by the run writing into the folder; names its pid and host


def encode_unit_interval(values: np.ndarray) -> np.ndarray:
    """Float in [0, 1] with NaN -> uint8 ``round(v * 254)``, 255 for NaN."""
    out = np.full(values.shape, NODATA_U8, dtype=np.uint8)
    ok = np.isfinite(values)
    out[ok] = np.rint(np.clip(values[ok], 0.0, 1.0) * PROB_SCALE).astype(np.uint8)
    return out


def decode_unit_interval(encoded: np.ndarray) -> np.ndarray:
    out = encoded.astype(np.float32) / PROB_SCALE
    out[encoded == NODATA_U8] = np.nan
    return out


@dataclass
class BandStats:
    """Running statistics of a uint8 band's valid values (all but ``nodata``), block by block.

    :meth:`tags` gives them as GDAL's ``STATISTICS_*`` band metadata: GDAL and QGIS then read
    them instead of computing statistics and writing them to a ``.aux.xml`` beside the file.
    Values are the stored (encoded) ones, as GDAL expects; readers apply the band's scale.
    """

    nodata: int = NODATA_U8
    n_px: int = 0
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    minimum: float = np.inf
    maximum: float = -np.inf

    def add(self, values: np.ndarray) -> None:
        self.n_px += int(values.size)
        v = values[values != self.nodata].astype(np.float64)
        if v.size:
            self.count += int(v.size)
            self.total += float(v.sum())
            self.total_sq += float(np.square(v).sum())
            self.minimum = min(self.minimum, float(v.min()))
            self.maximum = max(self.maximum, float(v.max()))

    def tags(self) -> dict[str, str]:
        """``STATISTICS_*`` tags (exact, population standard deviation); empty without valid values."""
        if self.count == 0:
            return {}
        mean = self.total / self.count
        std = float(np.sqrt(max(self.total_sq / self.count - mean * mean, 0.0)))
        return {"STATISTICS_MINIMUM": f"{self.minimum:.17g}", "STATISTICS_MAXIMUM": f"{self.maximum:.17g}",
                "STATISTICS_MEAN": f"{mean:.17g}", "STATISTICS_STDDEV": f"{std:.17g}",
                "STATISTICS_VALID_PERCENT": f"{100.0 * self.count / max(self.n_px, 1):.6g}"}


def _describe_band(dst, description: str, *, scale: float | None, unit: str | None,
                   tags: dict | None, stats: BandStats,
                   classes: Mapping[int, tuple[str, tuple[int, int, int, int]]] | None) -> None:
    """Band description, scale/offset, unit, statistics, and for class rasters a colour table and
    ``CLASS_<value>`` names (GeoTIFF keeps GDAL category names only in a .aux.xml sidecar, so the
    names go into band metadata and the QGIS style)."""
    dst.set_band_description(1, description)
    if scale is not None:
        dst.scales = (scale,)
        dst.offsets = (0.0,)
    if unit:
        dst.set_band_unit(1, unit)
    dst.update_tags(**(tags or {}))
    band_tags = stats.tags()
    if classes:
        dst.write_colormap(1, {value: rgba for value, (_, rgba) in classes.items()})
        band_tags.update({f"CLASS_{value}": name for value, (name, _) in classes.items()})
    dst.update_tags(1, **band_tags)


def write_cog(array: np.ndarray, path: str | Path, *, crs: str, transform, description: str,
              scale: float | None = None, tags: dict | None = None, unit: str | None = None,
              classes: Mapping[int, tuple[str, tuple[int, int, int, int]]] | None = None) -> Path:
    """Write a single-band uint8 array as a Cloud-Optimized GeoTIFF (deflate, overviews, 255 nodata).

    ``scale`` goes into the band's scale metadata, so GDAL/QGIS show physical values; ``unit`` is
    the physical values' unit; ``classes`` (value -> (name, RGBA)) makes a class raster with a
    colour table. The band's statistics are stored in the file.
    """
    path = Path(path)
    h, w = array.shape
    profile = dict(driver="GTiff", height=h, width=w, count=1, dtype="uint8", crs=crs,
                   transform=transform, nodata=NODATA_U8)
    with MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(array, 1)
            stats = BandStats()
            stats.add(array)
            _describe_band(tmp, description, scale=scale, unit=unit, tags=tags, stats=stats,
                           classes=classes)
        with mem.open() as src, atomic_write(path) as tmp_path:
            rasterio.shutil.copy(src, tmp_path, driver="COG", compress="DEFLATE",
                                 overview_resampling="nearest", blocksize=256)
    return path


def write_cog_blockwise(src_path: str | Path, path: str | Path, encode, *, description: str,
                        scale: float | None = None, tags: dict | None = None,
                        valid_path: str | Path | None = None,
                        block_px: int = defaults.BLOCK_PX, unit: str | None = None,
                        classes: Mapping[int, tuple[str, tuple[int, int, int, int]]] | None = None
                        ) -> Path:
    """Encode a single-band raster block by block into a tiled GeoTIFF, then copy it to a COG.

    ``encode(values, valid) -> uint8`` turns each block (``valid`` from ``valid_path``, or all True)
    into the output's values; GDAL's COG driver streams the copy, so memory stays bounded. The
    band's statistics are gathered on the way and stored in the file; ``scale``, ``unit`` and
    ``classes`` as for :func:`write_cog`.
    """
    path = Path(path)
    tmp_tiled = path.with_name(path.name + ".tiled.tmp.tif")
    with rasterio.open(src_path) as src:
        profile = work_raster_profile({"driver": "GTiff", "height": src.height, "width": src.width,
                                       "crs": src.crs, "transform": src.transform},
                                      dtype="uint8", nodata=NODATA_U8)
        valid_src = rasterio.open(valid_path) if valid_path else None
        try:
            with rasterio.open(tmp_tiled, "w", **profile) as dst:
                stats = BandStats()
                for win in iter_blocks(src.height, src.width, block_px):
                    values = src.read(1, window=win)
                    ok = (valid_src.read(1, window=win).astype(bool) if valid_src
                          else np.ones(values.shape, bool))
                    encoded = encode(values, ok)
                    stats.add(encoded)
                    dst.write(encoded, 1, window=win)
                _describe_band(dst, description, scale=scale, unit=unit, tags=tags, stats=stats,
                               classes=classes)
        finally:
            if valid_src is not None:
                valid_src.close()
    with atomic_write(path) as tmp_cog:
        rasterio.shutil.copy(tmp_tiled, tmp_cog, driver="COG", compress="DEFLATE",
                             overview_resampling="nearest", blocksize=256)
    tmp_tiled.unlink(missing_ok=True)
    return path


def refuse_finished_run(out: str | Path, overwrite: bool) -> None:
    """Raise InputError when ``out`` holds a finished run's files and ``overwrite`` is False."""
    existing = [n for n in FINAL_NAMES if (Path(out) / n).exists()]
    if existing and not overwrite:
        raise InputError(f"--out {out} already holds a run ({', '.join(existing)}); "
                         "choose another folder or pass --overwrite")


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Fail early if the run folder cannot be written or already holds a run.

    Raises:
        InputError: a finished run is there and ``overwrite`` is False, or the folder is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    refuse_finished_run(out, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"--out {out} is not writable ({exc.strerror})") from None
    return out


@contextlib.contextmanager
def run_folder_lock(out: str | Path, wait: bool = False, on_wait=None) -> Iterator[Path]:
    """Hold ``<out>/.lock`` while a run writes into ``out`` (created if need be; re-entrant in one
    process). Another process's scan into the same folder is refused, or waited for with ``wait``.
    The lock file is removed on release, and so is ``out`` when this call created it and it is
    still empty.

    Raises:
        FolderBusyError: another run holds the folder (its pid and host are named).
        InputError: ``out`` is a file, or cannot be created or written.
    """
    out = Path(out)
    try:
        exists, is_dir = out.exists(), out.is_dir()
    except OSError as exc:  # e.g. a component longer than the file system allows
        raise InputError(f"--out {out} cannot be created or written ({exc.strerror})") from None
    if exists and not is_dir:
        raise InputError(f"--out {out} exists and is not a folder")
    created = not exists
    try:
        with contextlib.ExitStack() as stack:
            try:
                out.mkdir(parents=True, exist_ok=True)
                path = stack.enter_context(folder_lock(
                    out / LOCK, wait_s=None if wait else 0.0, on_wait=on_wait, reentrant=True,
                    remove=True, busy=f"another scan is writing into --out {out}; wait for it to "
                                      "finish, rerun with --wait, or choose another --out"))
            except OSError as exc:
                raise InputError(f"--out {out} cannot be created or written ({exc.strerror})") from None
            yield path
    finally:
        if created:  # a run refused before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def disk_full_message(out: str | Path) -> str:
    """The one line for a run that filled its disk: which disk, what is free, what a run of this
    size needs (from the plan, when there is one), and that a rerun resumes."""
    out = Path(out)
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    free_mb = shutil.disk_usage(existing).free / 1e6
    needed = ""
    plan = out / WORK / "plan.json"
    if plan.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            grid = json.loads(plan.read_text())["grid"]
            needed = f"; a run of this size needs up to ~{bytes_needed(grid['width'], grid['height']) / 1e6:.0f} MB"
    return (f"no space left on the device of --out {out} (mounted at {_mount_point(existing)}; "
            f"{free_mb:.0f} MB free now{needed}); nothing was published: free space and run the "
            "same command again, it resumes from the finished blocks")


def bytes_needed(width: int, height: int, n_channels: int = 14) -> int:
    """Upper bound of the disk a run writes: the float32 stack, probability and uncertainty
    rasters, masks and the uint8 COGs, all uncompressed, plus 20 %."""
    per_px = n_channels * 4 + 4 + 4 + 1 + 1 + 3
    return int(width * height * per_px * 1.2) + 10_000_000


def check_free_space(out: str | Path, needed: int) -> None:
    """Raises InputError when the output folder's disk cannot hold ``needed`` bytes."""
    free = shutil.disk_usage(out).free
    if free < needed:
        raise InputError(f"--out {out}: the run needs up to {needed / 1e6:.0f} MB but only "
                         f"{free / 1e6:.0f} MB are free on that disk; free space or choose "
                         "another --out")


def publish(out: str | Path, keep_work: bool = False) -> list[str]:
    """Move every staged file to its final name (manifest last), then drop the staging folder."""
    out = Path(out)
    stage = out / STAGING
    names = sorted(p.name for p in stage.iterdir())
    missing = [n for n in FINAL_NAMES if n not in names]
    if missing:
        raise RuntimeError(f"run incomplete, not publishing: missing {missing}")
    for name in OPTIONAL_NAMES:  # an earlier run's export this run was not asked for
        if name not in names:
            (out / name).unlink(missing_ok=True)
    for name in sorted(names, key=lambda n: n == "manifest.json"):
        os.replace(stage / name, out / name)
    stage.rmdir()
    if not keep_work:
        shutil.rmtree(out / WORK, ignore_errors=True)
    return names


def discard_partial(out: str | Path) -> None:
    """Remove the staging folder after a failure (final names are never touched)."""
    shutil.rmtree(Path(out) / STAGING, ignore_errors=True)


def package_versions() -> dict[str, str]:
    names = ["landslide-pipeline", "torch", "segmentation-models-pytorch", "timm", "rasterio",
             "rioxarray", "xarray", "dask", "geopandas", "pyogrio", "shapely", "numpy", "scipy",
             "scikit-image", "prefect", "pydantic", "safetensors"]
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["python"] = platform.python_version()
    out["gdal"] = rasterio.__gdal_version__
    return out


def write_manifest(path: str | Path, content: dict) -> Path:
    """Write ``manifest.json``: ``content`` between the manifest version and write time (UTC)
    and the package versions."""
    content = {"manifest_version": 1, "written_at": utc_now_iso(), **content,
               "versions": package_versions()}
    return atomic_write_json(path, content)

