"""STAC metadata of a run (``item.json``) and of a region's runs (``collection.json``).

- :func:`build_item` describes one run folder as a STAC 1.1.0 Item: the footprint (EPSG:4326) as
  geometry and bbox, the scene time (or, for a composite without a scene date, the requested date
  window as ``start_datetime``/``end_datetime``, said in ``landslide:time_basis``), and every file of
  the run as an asset with relative href, media type and roles. The COGs carry the projection
  (``proj:code``, ``proj:shape``, ``proj:transform``) and raster (``raster:bands``: nodata 255,
  uint8, scale 1/254, unit) extension fields; the item the processing extension's
  (``processing:level``, ``processing:lineage``, ``processing:software``).
- :func:`build_collection` describes a regional state folder: ``item`` links to its runs' items
  (relative), the inventory as asset, the extent = union of the items' bboxes and time ranges.
- :func:`stac_errors` validates either offline against the JSON Schemas of STAC 1.1.0 that pystac
  ships (``pystac/validation/jsonschemas``; the GeoJSON ones too) and checks the extension fields'
  shapes. No installed package ships the projection/raster/processing extensions' JSON Schemas, so
  those fields are checked here by their documented shapes, not by the extensions' schemas.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import rasterio
import shapely
from pyproj import Transformer
from shapely.geometry import mapping
from shapely.ops import transform as transform_geometry

from tasks.core.errors import InputError
from tasks.core.files import atomic_write_json
from tasks.run.outputs import NODATA_U8, PROB_SCALE

STAC_VERSION = "1.1.0"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_EXTENSION = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
ITEM_EXTENSIONS = (PROJECTION_EXTENSION, RASTER_EXTENSION, PROCESSING_EXTENSION)

ITEM_NAME = "item.json"
COLLECTION_NAME = "collection.json"
PROCESSING_LEVEL = "L4"  # a model's output derived from L1C/L2A imagery (processing extension)

MEDIA_GEOPACKAGE = "application/geopackage+sqlite3"
MEDIA_COG = "image/tiff; application=geotiff; profile=cloud-optimized"
MEDIA_JSON = "application/json"
MEDIA_GEOJSON = "application/geo+json"
MEDIA_PNG = "image/png"
MEDIA_HTML = "text/html"
MEDIA_CSV = "text/csv"
MEDIA_PARQUET = "application/vnd.apache.parquet"

# asset key -> (file of the run folder, media type, roles, title); optional files are listed when present
RUN_ASSETS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "landslides": ("landslides.gpkg", MEDIA_GEOPACKAGE, ("data",),
                   "Landslide polygons (layer landslides) and the analysed area (layer footprint)"),
    "probability": ("probability.tif", MEDIA_COG, ("data",), "Landslide probability"),
    "uncertainty": ("uncertainty.tif", MEDIA_COG, ("data", "quality"), "Per-pixel uncertainty"),
    "mask": ("mask.tif", MEDIA_COG, ("data",), "Cleaned landslide mask"),
    "manifest": ("manifest.json", MEDIA_JSON, ("metadata",),
                 "Run manifest: inputs, grid, detector card, parameters, versions, counts"),
    "quicklook": ("quicklook.png", MEDIA_PNG, ("overview", "visual"),
                  "True-colour quicklook (B04, B03, B02; 2-98 % stretch)"),
    "report": ("report.html", MEDIA_HTML, ("metadata",), "Run report"),
    "landslides-geojson": ("landslides.geojson", MEDIA_GEOJSON, ("data",),
                           "Landslide polygons, EPSG:4326 (RFC 7946)"),
    "landslides-csv": ("landslides.csv", MEDIA_CSV, ("data",),
                       "Landslide polygons as CSV (WKT geometry in EPSG:4326)"),
    "landslides-parquet": ("landslides.parquet", MEDIA_PARQUET, ("data",),
                           "Landslide polygons as GeoParquet (the GeoPackage's CRS)"),
}
OPTIONAL_ASSETS = ("landslides-geojson", "landslides-csv", "landslides-parquet")

LONLAT = "EPSG:4326"
FOOTPRINT_LAYER = "footprint"


# ---------------------------------------------------------------------------------------------
# time


def _rfc3339(value: str | dt.date | dt.datetime, end_of_day: bool = False) -> str:
    """An ISO date or datetime as RFC 3339 UTC (a date: its first, or last, second)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value) if "T" in value or " " in value else dt.date.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time(23, 59, 59) if end_of_day else dt.time(0, 0, 0))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# The first Sentinel-2 satellite's launch: no input of the band contract was acquired before it.
SENTINEL2_FIRST_LAUNCH = dt.date(2015, 6, 23)


def scene_time(inputs: Mapping[str, Any], finished_at: str | None = None) -> dict[str, Any]:
    """The item's time properties from the manifest's ``inputs``.

    One scene with a date: ``datetime``. Several dated scenes (a mosaic): ``start_datetime`` /
    ``end_datetime`` over them. No scene date (a composite): the date window the run asked for
    (``date_window``), an open side completed from the input's ``acquired_range``; then
    ``landslide:time_basis`` says so. No date at all (an ``--image`` whose acquisition time is
    unknown): STAC still needs an interval, so the only bounds that are known are given, the first
    Sentinel-2 launch and the run's end (``finished_at``), and ``landslide:time_basis`` says so.
    """
    dates = sorted(s["acquired"] for s in (inputs.get("scenes") or []) if s.get("acquired"))
    if not dates and inputs.get("acquired"):
        dates = [inputs["acquired"]]
    if len(dates) == 1:
        return {"datetime": _rfc3339(dates[0]), "landslide:time_basis": "scene acquisition time"}
    if dates:
        return {"datetime": None, "start_datetime": _rfc3339(dates[0]),
                "end_datetime": _rfc3339(dates[-1]),
                "landslide:time_basis": f"acquisition times of the {len(dates)} mosaicked scenes"}
    window = list(inputs.get("date_window") or [None, None])
    composite = list(inputs.get("acquired_range") or [None, None])
    start = window[0] or composite[0]
    end = window[1] or composite[1]
    if start is None and end is None and finished_at:
        return {"datetime": None, "start_datetime": _rfc3339(SENTINEL2_FIRST_LAUNCH),
                "end_datetime": _rfc3339(finished_at),
                "landslide:time_basis": "acquisition time unknown: only bounded by the first "
                                        f"Sentinel-2 launch ({SENTINEL2_FIRST_LAUNCH}) and the end of "
                                        "this run; not a scene date"}
    if start is None or end is None:
        raise InputError("the run names no scene date, no date window and no acquired range: "
                         "STAC needs a time")
    start_s, end_s = _rfc3339(start), _rfc3339(end, end_of_day=True)
    if end_s < start_s:
        end_s = _rfc3339(start, end_of_day=True)
    basis = (f"no scene date (the input is a composite of {composite[0]}..{composite[1]}): the "
             f"date window the run asked for ({window[0] or 'open'}..{window[1] or 'open'})")
    if not (window[0] and window[1]):
        basis += ", its open side closed by the composite's range"
    return {"datetime": None, "start_datetime": start_s, "end_datetime": end_s,
            "landslide:time_basis": basis}


# ---------------------------------------------------------------------------------------------
# geometry


def footprint_lonlat(gpkg_path: str | Path, simplify_m: float = 0.0) -> shapely.Geometry:
    """The run's footprint layer (dissolved) in EPSG:4326, simplified by ``simplify_m`` first (in
    the layer's metric CRS) and densified so long edges follow the projection's curvature."""
    import geopandas as gpd

    fp = gpd.read_file(gpkg_path, layer=FOOTPRINT_LAYER, engine="pyogrio")
    geom = shapely.union_all(fp.geometry.values)
    if simplify_m > 0:
        geom = geom.simplify(simplify_m, preserve_topology=True)
    geom = shapely.segmentize(geom, 1000.0)  # vertices every 1 km at most before reprojection
    to_lonlat = Transformer.from_crs(fp.crs, LONLAT, always_xy=True).transform
    return shapely.make_valid(transform_geometry(to_lonlat, geom))


def _rounded(obj: Any, ndigits: int = 7) -> Any:
    """Coordinates rounded to ~1 cm (RFC 7946 suggests no more than that)."""
    if isinstance(obj, float):
        return round(obj, ndigits)
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, ndigits) for v in obj]
    if isinstance(obj, dict):
        return {k: _rounded(v, ndigits) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# the item


def _cog_fields(path: Path, unit: str | None, scale: float | None) -> dict[str, Any]:
    """The projection and raster extension fields of a single-band COG, read from the file."""
    with rasterio.open(path) as src:
        band: dict[str, Any] = {"nodata": NODATA_U8 if src.nodata is None else int(src.nodata),
                                "data_type": src.dtypes[0], "sampling": "area",
                                "spatial_resolution": float(abs(src.transform.a))}
        if scale is not None:
            band.update(scale=scale, offset=0.0)
        if unit is not None:
            band["unit"] = unit
        return {"proj:code": src.crs.to_string(), "proj:shape": [src.height, src.width],
                "proj:transform": [float(v) for v in tuple(src.transform)[:6]],
                "proj:bbox": [float(v) for v in src.bounds], "raster:bands": [band]}


def _lineage(manifest: Mapping[str, Any]) -> str:
    inputs, grid, params = manifest["inputs"], manifest["grid"], manifest["parameters"]
    clean = params.get("clean", {})
    geometry = params.get("geometry") or {}
    outline = (f"outlines simplified at {geometry['simplify_m']:.2f} m"
               + (" and smoothed" if geometry.get("smooth_iterations") else "")
               if geometry.get("simplify_m") else "exact pixel outlines")
    scenes = ", ".join(inputs.get("scene_ids") or []) or "unknown scene"
    return (f"Sentinel-2 scene(s) {scenes} from source {inputs.get('source')} and the DEM "
            f"({inputs.get('dem_path') and 'slope derived from it' or 'none'}) aligned onto a "
            f"{grid['res_m']:g} m grid in {grid['crs']}; detector {manifest['detector']['ref']} run on "
            f"{params.get('overlap_px')} px-overlapping patches and blended; probability thresholded at "
            f"{clean.get('threshold')}, cleaned (opening {clean.get('opening_radius_px')} px, closing "
            f"{clean.get('closing_radius_px')} px, holes under {clean.get('fill_holes_max_area_m2')} m2 "
            f"filled, areas under {clean.get('min_area_m2')} m2 dropped) and vectorized ({outline}) by "
            f"landslide-pipeline {manifest.get('versions', {}).get('landslide-pipeline', '')}.")


def _unit_of_uncertainty(manifest: Mapping[str, Any]) -> str:
    text = str(manifest.get("parameters", {}).get("uncertainty", ""))
    return "bit" if "bit" in text else "1"


def build_item(run_dir: str | Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The STAC Item of a run folder (staged or published: the files are read from ``run_dir``).

    Args:
        run_dir: the folder holding the run's files (``.staging`` before publishing).
        manifest: the run's manifest content.

    Returns:
        The item as a JSON-able dict; hrefs are relative (``./landslides.gpkg``).
    """
    run_dir = Path(run_dir)
    grid = manifest["grid"]
    geom = footprint_lonlat(run_dir / RUN_ASSETS["landslides"][0], simplify_m=grid["res_m"] / 2)
    if geom.is_empty:  # nothing analysed: the ROI asked for stands for the place
        geom = shapely.geometry.shape(manifest["roi_lonlat"])
    detector = manifest["detector"]
    versions = manifest.get("versions", {})
    properties: dict[str, Any] = {
        **scene_time(manifest["inputs"], manifest.get("finished_at")),
        "created": manifest.get("finished_at") or manifest.get("written_at"),
        "description": f"Landslides detected by landslide-pipeline run {manifest['run_id']}",
        "proj:code": grid["crs"],
        "processing:level": PROCESSING_LEVEL,
        "processing:lineage": _lineage(manifest),
        "processing:software": {k: str(v) for k, v in versions.items()},
        "processing:datetime": manifest.get("finished_at"),
        "landslide:run_id": manifest["run_id"],
        "landslide:detector": detector.get("ref"),
        "landslide:scene_ids": list(manifest["inputs"].get("scene_ids") or []),
        "landslide:polygons": int(manifest["counts"]["polygons"]),
        "landslide:landslide_area_m2": float(manifest["counts"]["landslide_area_m2"]),
        "landslide:footprint_area_m2": float(manifest["counts"]["footprint_area_m2"]),
    }
    if manifest["inputs"].get("region"):
        properties["landslide:region"] = manifest["inputs"]["region"]
    properties = {k: v for k, v in properties.items() if v is not None or k == "datetime"}
    unc_unit = _unit_of_uncertainty(manifest)
    cog_meta = {"probability": ("1", 1 / PROB_SCALE), "uncertainty": (unc_unit, 1 / PROB_SCALE),
                "mask": (None, None)}
    assets: dict[str, Any] = {}
    for key, (name, media, roles, title) in RUN_ASSETS.items():
        path = run_dir / name
        if not path.exists():
            if key in OPTIONAL_ASSETS:
                continue
            raise InputError(f"{path} is missing: the item lists every file of a run")
        asset: dict[str, Any] = {"href": f"./{name}", "type": media, "title": title, "roles": list(roles)}
        if key in cog_meta:
            asset.update(_cog_fields(path, *cog_meta[key]))
        assets[key] = asset
    geometry = _rounded(mapping(geom))
    return {
        "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": list(ITEM_EXTENSIONS),
        "id": manifest["run_id"], "geometry": geometry,
        "bbox": _rounded(list(shapely.bounds(geom))), "properties": properties,
        "links": [{"rel": "alternate", "href": "./report.html", "type": MEDIA_HTML, "title": "Run report"}],
        "assets": assets,
    }


def write_item(run_dir: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Build, validate and write ``run_dir/item.json``.

    Raises:
        RuntimeError: the item does not validate (a bug: the message lists the errors).
    """
    item = build_item(run_dir, manifest)
    errors = stac_errors(item)
    if errors:
        raise RuntimeError(f"the run's STAC item does not validate: {'; '.join(errors[:5])}")
    return atomic_write_json(Path(run_dir) / ITEM_NAME, item)


# ---------------------------------------------------------------------------------------------
# the regional collection


def _item_interval(item: Mapping[str, Any]) -> tuple[str, str]:
    p = item["properties"]
    return (p.get("start_datetime") or p["datetime"], p.get("end_datetime") or p["datetime"])


def build_collection(folder: str | Path, region: str, item_paths: Iterable[str | Path],
                     inventory_name: str = "inventory.gpkg") -> dict[str, Any]:
    """The STAC Collection of a region's state folder.

    Args:
        folder: the region's state folder (``collection.json`` goes there; hrefs are relative to it).
        region: the region's name (the collection id is ``landslides-<region>``).
        item_paths: the runs' ``item.json`` files.
        inventory_name: the inventory file in ``folder`` (an asset when it exists).
    """
    folder = Path(folder)
    items = [(Path(p), json.loads(Path(p).read_text())) for p in item_paths]
    links: list[dict[str, Any]] = [{"rel": "root", "href": f"./{COLLECTION_NAME}", "type": MEDIA_JSON}]
    for path, item in items:
        href = os.path.relpath(path.resolve(), folder.resolve())
        links.append({"rel": "item", "href": href if href.startswith(".") else f"./{href}",
                      "type": MEDIA_GEOJSON, "title": item["id"]})
    if items:
        boxes = [it["bbox"] for _, it in items]
        bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes)]
        intervals = [_item_interval(it) for _, it in items]
        interval = [min(i[0] for i in intervals), max(i[1] for i in intervals)]
    else:
        bbox, interval = [-180.0, -90.0, 180.0, 90.0], [None, None]
    assets = {}
    if (folder / inventory_name).exists():
        assets["inventory"] = {"href": f"./{inventory_name}", "type": MEDIA_GEOPACKAGE,
                               "roles": ["data"], "title": "Regional landslide inventory (layers "
                                                           "landslides and scans)"}
    return {
        "type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [],
        "id": f"landslides-{region}", "title": f"Landslide scans of {region}",
        "description": f"Landslide detections of the regional scans of {region} "
                       f"(landslide-pipeline): one item a run, and the merged inventory.",
        "license": "other",
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
        "links": links, "assets": assets,
    }


def write_collection(folder: str | Path, region: str, item_paths: Iterable[str | Path]) -> Path:
    """Build, validate and write ``folder/collection.json`` (replaced atomically).

    Raises:
        RuntimeError: the collection does not validate (a bug).
    """
    collection = build_collection(folder, region, item_paths)
    errors = stac_errors(collection)
    if errors:
        raise RuntimeError(f"the region's STAC collection does not validate: {'; '.join(errors[:5])}")
    return atomic_write_json(Path(folder) / COLLECTION_NAME, collection)


def write_region_collection(folder: str | Path, region: str, run_dirs: Iterable[str | Path]) -> Path:
    """``collection.json`` of a region's state folder over the given runs' items (runs published
    before items existed have none and are left out)."""
    items = [Path(d) / ITEM_NAME for d in run_dirs if d and (Path(d) / ITEM_NAME).exists()]
    return write_collection(folder, region, items)


# ---------------------------------------------------------------------------------------------
# validation (offline)


@lru_cache(maxsize=1)
def _validators() -> dict[str, Any]:
    """jsonschema validators of the STAC 1.1.0 Item and Collection from pystac's bundled schemas."""
    from jsonschema import Draft7Validator
    from jsonschema_specifications import REGISTRY as METASCHEMAS
    from pystac.validation.local_validator import get_local_schema_cache
    from referencing import Resource

    cache = get_local_schema_cache()
    registry = METASCHEMAS.with_resources(
        (uri, Resource.from_contents(schema)) for uri, schema in cache.items())
    base = f"https://schemas.stacspec.org/v{STAC_VERSION}"
    return {"Feature": Draft7Validator(cache[f"{base}/item-spec/json-schema/item.json"], registry=registry),
            "Collection": Draft7Validator(cache[f"{base}/collection-spec/json-schema/collection.json"],
                                          registry=registry)}


def _path(error) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


_EPSG = re.compile(r"^[A-Z]+:\S+$")


def _extension_errors(obj: Mapping[str, Any]) -> list[str]:
    """The projection/raster/processing fields used here, checked by their documented shapes."""
    errors = []
    used = set(obj.get("stac_extensions", []))
    places = [("properties", obj.get("properties", {}))] + [
        (f"assets/{k}", a) for k, a in obj.get("assets", {}).items()]
    for where, fields in places:
        names = set(fields)
        if any(n.startswith("proj:") for n in names) and PROJECTION_EXTENSION not in used:
            errors.append(f"{where}: proj: fields without the projection extension")
        if any(n.startswith("raster:") for n in names) and RASTER_EXTENSION not in used:
            errors.append(f"{where}: raster: fields without the raster extension")
        if any(n.startswith("processing:") for n in names) and PROCESSING_EXTENSION not in used:
            errors.append(f"{where}: processing: fields without the processing extension")
        if "proj:code" in fields and not _EPSG.match(str(fields["proj:code"])):
            errors.append(f"{where}/proj:code: {fields['proj:code']!r} is not AUTHORITY:CODE")
        shape = fields.get("proj:shape")
        if shape is not None and not (len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
            errors.append(f"{where}/proj:shape: want [rows, cols] of positive integers, got {shape}")
        tr = fields.get("proj:transform")
        if tr is not None and not (len(tr) in (6, 9) and all(isinstance(v, (int, float)) for v in tr)):
            errors.append(f"{where}/proj:transform: want 6 or 9 numbers, got {tr}")
        for i, band in enumerate(fields.get("raster:bands", [])):
            if band.get("data_type") not in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                             "uint64", "float16", "float32", "float64", "cint16",
                                             "cint32", "cfloat32", "cfloat64", "other"):
                errors.append(f"{where}/raster:bands/{i}: unknown data_type {band.get('data_type')!r}")
            for key in ("scale", "offset", "spatial_resolution"):
                if key in band and not isinstance(band[key], (int, float)):
                    errors.append(f"{where}/raster:bands/{i}/{key}: not a number")
        software = fields.get("processing:software")
        if software is not None and not (isinstance(software, dict)
                                         and all(isinstance(v, str) for v in software.values())):
            errors.append(f"{where}/processing:software: want a map of name -> version string")
    return errors


def stac_errors(obj: Mapping[str, Any]) -> list[str]:
    """Why ``obj`` (an Item or a Collection, as a dict) is not valid STAC 1.1.0; [] when it is.

    Offline: the core and GeoJSON JSON Schemas come from the installed pystac package; extension
    fields are checked by :func:`_extension_errors`.
    """
    kind = obj.get("type")
    validators = _validators()
    if kind not in validators:
        return [f"type {kind!r} is neither Feature (item) nor Collection"]
    errors = [f"{_path(e)}: {e.message[:300]}" for e in validators[kind].iter_errors(dict(obj))]
    return errors + _extension_errors(obj)
