"""The ``local`` source: pick a scene from the catalog and check that its rasters are usable.

Nothing here reads pixels; alignment does that (``tasks.raster.align``). What this module guarantees is that
every path it returns exists, opens as a raster and has a CRS, so later stages fail only on bugs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import rasterio
import rasterio.windows
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_bounds

from tasks.core.bands import spectral_request
from tasks.core.errors import InputError
from tasks.sources.catalog import Catalog, LocalScene, LocalSource
from tasks.sources.cloud import (
    B8A_STANDIN,
    S2CLOUDLESS_CONTRACT_BANDS,
    check_cloud_mask,
    detector_plan,
    missing_bands_reason,
    missing_detector_bands,
)

log = logging.getLogger(__name__)

# Processing baseline 04.00 (January 2022) added a +1000 DN offset to L1C/L2A reflectances.
HARMONIZE_BASELINE = (4, 0)
HARMONIZE_OFFSET_DN = 1000.0


@dataclass(frozen=True)
class SceneInputs:
    """Everything the alignment stage needs to read one scene (paths, not arrays)."""

    source: str
    scene_id: str
    acquired: str | None  # ISO 8601 UTC, None for composites with unknown dates
    acquired_range: tuple[str, str] | None
    band_paths: dict[str, str]  # contract band name -> raster path
    available_bands: tuple[str, ...]
    dem_path: str | None
    band_nodata: float | None
    dem_nodata: float | None
    offset_dn: float  # subtracted from every S2 band (harmonization), 0 when not needed
    processing_baseline: str | None
    extent_lonlat: tuple[float, float, float, float]
    notes: list[str] = field(default_factory=list)
    # the source's cloud mask (tasks.sources.cloud: path + cloud_values or cloud_range + origin), None = none
    cloud_mask: dict | None = None
    cloud_pct: float | None = None  # the scene's cloud cover (eo:cloud_cover) when the source gives it
    # a per-pixel mosaic (tasks.sources.mosaic): the scenes best first, each a dict with scene_id, acquired,
    # cloud_pct, processing_baseline, offset_dn, band_paths, band_nodata, cloud_mask; None = the one
    # scene described by the fields above
    mosaic: list[dict] | None = None
    # the DEM product (collection, product name, units, vertical datum, ...) when the source names one;
    # None = a local DEM file or no DEM (tasks.sources.stac.dem_record)
    dem_product: dict | None = None
    # a cloud mask to compute from the scene's own bands (tasks.raster.clouds: band_paths of
    # S2CLOUDLESS_BANDS, threshold, dilation_m, shadows), None = none; cloud_detector_off says why not
    cloud_detector: dict | None = None
    cloud_detector_off: str | None = None

    def scenes(self) -> list[dict]:
        """The scenes alignment reads, best first (one entry for a single-scene input)."""
        if self.mosaic:
            return [dict(m) for m in self.mosaic]
        return [{"scene_id": self.scene_id, "acquired": self.acquired, "cloud_pct": self.cloud_pct,
                 "processing_baseline": self.processing_baseline, "offset_dn": self.offset_dn,
                 "band_paths": dict(self.band_paths), "band_nodata": self.band_nodata,
                 "cloud_mask": self.cloud_mask, "cloud_detector": self.cloud_detector,
                 "cloud_detector_off": self.cloud_detector_off}]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SceneInputs":
        data = dict(data)
        for key in ("available_bands",):
            data[key] = tuple(data[key])
        if data.get("acquired_range"):
            data["acquired_range"] = tuple(data["acquired_range"])
        data["extent_lonlat"] = tuple(data["extent_lonlat"])
        return cls(**data)


def harmonization_offset(processing_baseline: str | None) -> float:
    """DN offset to subtract for a processing baseline (``"04.00"`` and later: 1000)."""
    if not processing_baseline:
        return 0.0
    try:
        major, minor = (int(p) for p in processing_baseline.split(".")[:2])
    except ValueError:  # e.g. "02.xx": older than 04.00 by its major number
        try:
            major, minor = int(processing_baseline.split(".")[0]), 0
        except ValueError:
            return 0.0
    return HARMONIZE_OFFSET_DN if (major, minor) >= HARMONIZE_BASELINE else 0.0


def select_scene(source: LocalSource, start: dt.date | None, end: dt.date | None,
                 source_name: str = "") -> LocalScene:
    """The most recent scene whose dates overlap [start, end].

    Raises:
        InputError: no scene falls in the window (the message lists the scenes and their dates).
    """
    if start and end and start > end:
        raise InputError(f"--start {start} is after --end {end}")
    hits = [s for s in source.scenes if s.overlaps(start, end)]
    if not hits:
        have = "; ".join(f"{s.scene_id} ({s.date_text})" for s in source.scenes)
        raise InputError(f"no scene of source {source_name!r} falls in {start or '...'}..{end or '...'}; "
                         f"available: {have}")
    return max(hits, key=lambda s: (s.date_span[1], s.date_span[0]))


def check_raster(path: Path, what: str) -> None:
    """Open ``path``, require a CRS, and require that its data is all there (:func:`check_complete`).

    Raises:
        InputError: missing file, not a raster, no CRS (the file's real format named when it is
            not a GeoTIFF), or a truncated file.
    """
    if not path.exists():
        raise InputError(f"{what}: file {path} does not exist; fix the path in data_catalog.yaml")
    try:
        with rasterio.open(path) as src:
            crs, driver = src.crs, src.driver
    except RasterioIOError as exc:
        raise InputError(f"{what}: {path} is not a raster GDAL can read ({str(exc).splitlines()[0]})") from None
    if crs is None and driver != "GTiff":
        raise InputError(f"{what}: {path} is a {driver} file (GDAL driver {driver}), not a GeoTIFF, "
                         "and carries no CRS or georeference (a renamed image?); export the band as "
                         "a GeoTIFF or JPEG2000 with its CRS and transform")
    if crs is None:
        raise InputError(f"{what}: {path} has no CRS; set one (e.g. gdal_edit.py -a_srs EPSG:32654 {path.name})")
    check_complete(path, what)


def _tiff_data_end(src) -> int:
    """The byte where a GeoTIFF's last data block ends, from its block offsets and sizes (GDAL's TIFF
    metadata domain; no pixel is read). 0 when the driver does not say."""
    end = 0
    bh, bw = src.block_shapes[0]
    n_rows, n_cols = -(-src.height // bh), -(-src.width // bw)
    bands = range(1, src.count + 1) if src.interleaving is None or src.interleaving.name == "BAND" else (1,)
    for b in bands:
        for y in range(n_rows):
            for x in range(n_cols):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b)
                size = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=b)
                if offset and size:
                    end = max(end, int(offset) + int(size))
    return end


def check_complete(path: Path, what: str) -> None:
    """Refuse a raster cut short (an interrupted download or copy) before any stage reads it.

    GeoTIFFs: every block must end inside the file (the block offsets against the file size).
    Any format: the first and last block of every band must decode.

    Raises:
        InputError: the file looks truncated or corrupt (file, band and what failed named).
    """
    with rasterio.open(path) as src:
        if src.driver == "GTiff" and path.exists():
            end, size = _tiff_data_end(src), path.stat().st_size
            if end > size:
                raise InputError(f"{what}: {path} looks truncated: its data blocks run to byte {end} "
                                 f"but the file has {size} bytes; download or copy it again")
        for b in range(1, src.count + 1):
            bh, bw = src.block_shapes[b - 1]
            last = rasterio.windows.Window((src.width - 1) // bw * bw, (src.height - 1) // bh * bh,
                                           src.width - (src.width - 1) // bw * bw,
                                           src.height - (src.height - 1) // bh * bh)
            for name, window in (("first", rasterio.windows.Window(0, 0, min(bw, src.width),
                                                                   min(bh, src.height))),
                                 ("last", last)):
                try:
                    src.read(b, window=window)
                except RasterioIOError as exc:
                    raise InputError(f"{what}: {path} band {b}: reading its {name} block failed "
                                     f"({str(exc).splitlines()[0]}); the file looks truncated or "
                                     "corrupt; download or copy it again") from None


def band_reference(path: Path, band_number: int) -> str:
    """What the readers open for one band: ``path`` itself for band 1, else GDAL's ``vrt://``
    connection string selecting that band (``vrt:///data/img.tif?bands=3``), which every later
    stage opens as a one-band raster with the file's georeference and nodata; no file is written."""
    return str(path) if band_number == 1 else f"vrt://{path}?bands={band_number}"


def _check_band_number(path: Path, band_number: int, what: str) -> None:
    with rasterio.open(path) as src:
        count = src.count
    if band_number > count:
        raise InputError(f"{what}: {path} has {count} band(s), not band {band_number}; fix band_indexes "
                         "in data_catalog.yaml")


def raster_extent_lonlat(path: Path) -> tuple[float, float, float, float]:
    """Bounds of a raster in EPSG:4326."""
    with rasterio.open(path) as src:
        return tuple(transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))  # type: ignore[return-value]


def resolve_local_inputs(catalog: Catalog, source_name: str, spectral_bands: tuple[str, ...],
                         start: dt.date | None = None, end: dt.date | None = None, *,
                         scene_id: str | None = None) -> SceneInputs:
    """Choose the scene and check the rasters of ``spectral_bands`` and the DEM.

    Args:
        catalog: the loaded catalog.
        source_name: a source of kind ``local``.
        spectral_bands: Sentinel-2 bands the detector needs (contract names).
        start, end: date window (inclusive); None means open.
        scene_id: this scene of the source instead of a choice by date (event mode chooses).

    Raises:
        InputError: unknown source, a band the source cannot provide, a missing/unreadable raster.
    """
    source = catalog.source(source_name)
    if not isinstance(source, LocalSource):
        raise InputError(f"source {source_name!r} is of kind {source.kind!r}, not 'local'; remote "
                         "sources are fetched by tasks.sources.remote.fetch_remote_inputs")
    if scene_id is not None:
        scene = next(s for s in source.scenes if s.scene_id == scene_id)
    else:
        scene = select_scene(source, start, end, source_name)
    wanted = spectral_request(spectral_bands)
    missing = [b for b in wanted if b not in scene.band_names]
    if missing:
        raise InputError(
            f"source {source_name!r} (scene {scene.scene_id}) cannot provide band(s) "
            f"{', '.join(missing)}: it has {', '.join(scene.band_names)}; use a model whose card "
            "lists only those bands, or a source with the missing bands")
    band_paths: dict[str, str] = {}
    checked: dict[Path, None] = {}  # a multi-band file holds several bands: check it once
    for band in wanted:
        path = scene.band_path(band, catalog.root)
        what = f"band {band} of scene {scene.scene_id}"
        if path not in checked:
            check_raster(path, what)
            checked[path] = None
        number = scene.band_number(band)
        _check_band_number(path, number, what)
        band_paths[band] = band_reference(path, number)
    dem_path = catalog.resolve(source.dem)
    notes: list[str] = []
    if dem_path is not None:
        check_raster(dem_path, f"DEM of source {source_name!r}")
    elif source.dem_source is None:  # a dem_source's DEM is fetched for the ROI (tasks.sources.remote)
        notes.append("source has no DEM: SLOPE and DEM channels and terrain attributes are nodata")
    first = next(iter(checked), None) or dem_path
    if first is None:
        raise InputError(f"source {source_name!r}: nothing to read (no bands requested and no DEM)")
    if scene.acquired_unknown:
        notes.append(f"acquisition time of scene {scene.scene_id} unknown: the polygons carry no "
                     "'acquired' date")
    cloud_mask = _scene_cloud_mask(scene, catalog.root, source_name)
    detector, detector_off = cloud_detector_plan(source, scene, catalog.root, source_name, cloud_mask)
    notes.append(f"cloud mask: {cloud_mask['origin']}" if cloud_mask else
                 f"cloud mask: s2cloudless on the scene's bands ({detector['b8a']})" if detector else
                 f"no cloud mask: {detector_off}")
    offset = harmonization_offset(scene.processing_baseline)
    if offset:
        notes.append(f"processing baseline {scene.processing_baseline} >= 04.00: "
                     f"{offset:g} DN offset removed")
    return SceneInputs(
        source=source_name,
        scene_id=scene.scene_id,
        acquired=scene.acquired.isoformat() if scene.acquired else None,
        acquired_range=(tuple(d.isoformat() for d in scene.acquired_range)  # type: ignore[arg-type]
                        if scene.acquired_range else None),
        band_paths=band_paths,
        available_bands=scene.band_names,
        dem_path=str(dem_path) if dem_path else None,
        band_nodata=scene.nodata,
        dem_nodata=source.dem_nodata,
        offset_dn=offset,
        processing_baseline=scene.processing_baseline,
        extent_lonlat=raster_extent_lonlat(first),
        notes=notes,
        cloud_mask=cloud_mask,
        cloud_detector=detector,
        cloud_detector_off=detector_off,
    )


def _scene_cloud_mask(scene: LocalScene, root: Path, source_name: str) -> dict | None:
    """The scene's ``cloud_mask`` file as a cloud mask spec (``tasks.sources.cloud``), checked; None = none."""
    if scene.cloud_mask is None:
        return None
    path = Path(os.path.expandvars(scene.cloud_mask.path)).expanduser()
    path = path if path.is_absolute() else root / path
    check_raster(path, f"cloud mask of scene {scene.scene_id} (source {source_name!r})")
    spec: dict = {"path": str(path)}
    if scene.cloud_mask.cloud_values:
        spec["cloud_values"] = list(scene.cloud_mask.cloud_values)
        rule = f"cloud = {list(scene.cloud_mask.cloud_values)}"
    else:
        spec["cloud_range"] = list(scene.cloud_mask.cloud_range)  # type: ignore[arg-type]
        rule = f"cloud = {scene.cloud_mask.cloud_range[0]:g}..{scene.cloud_mask.cloud_range[1]:g}"  # type: ignore[index]
    spec["origin"] = f"local cloud mask file {path.name}, {rule}"
    return check_cloud_mask(spec)


def cloud_detector_plan(source: LocalSource, scene: LocalScene, root: Path, source_name: str,
                        cloud_mask: dict | None) -> tuple[dict | None, str | None]:
    """What ``tasks.raster.clouds.detect_clouds`` runs for this scene, or why nothing runs.

    Returns:
        (plan, None) or (None, reason).

    Raises:
        InputError: ``cloud_detector: s2cloudless`` on a scene without the bands it needs (named).
    """
    if source.cloud_detector == "none":
        return None, f"cloud_detector: none for source {source_name!r}"
    if cloud_mask is not None:
        return None, "the scene gives a cloud mask file (cloud_mask), used instead"
    missing = missing_detector_bands(scene.band_names)
    if missing:
        reason = missing_bands_reason(missing, scene.scene_id)
        if source.cloud_detector == "s2cloudless":
            raise InputError(f"source {source_name!r}: cloud_detector: s2cloudless, but {reason}; add the "
                             "bands to the scene or set cloud_detector: auto or none")
        return None, reason
    band_paths: dict[str, str] = {}
    for band in (*S2CLOUDLESS_CONTRACT_BANDS, *(("B03",) if "B03" in scene.band_names else ())):
        path = scene.band_path(band, root)
        check_raster(path, f"band {band} of scene {scene.scene_id} (for the cloud detector)")
        band_paths[band] = band_reference(path, scene.band_number(band))
    if scene.b8a:
        b8a = Path(os.path.expandvars(scene.b8a)).expanduser()
        b8a = b8a if b8a.is_absolute() else root / b8a
        check_raster(b8a, f"band B8A of scene {scene.scene_id} (for the cloud detector)")
        band_paths["B8A"], b8a_note = str(b8a), "B8A from the scene"
    else:
        band_paths["B8A"], b8a_note = band_paths["B08"], B8A_STANDIN
    sun = ((scene.sun_azimuth_deg, scene.sun_zenith_deg, "scene metadata (data_catalog.yaml)")
           if scene.sun_azimuth_deg is not None else None)
    acquired = scene.acquired.isoformat() if scene.acquired else None
    return detector_plan(source, band_paths, b8a_note, acquired, sun, scene.scene_id, source_name), None
