"""``data_catalog.yaml``: named sources and regions, validated by pydantic (``extra="forbid"``).

A typo in the YAML is an error naming the key and the file, not a silently ignored setting.
Relative paths in the catalog are relative to the catalog file's folder.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.core.bands import SPECTRAL_BAND_NAMES, normalize_band_name, validate_bands
from tasks.core.errors import InputError
from tasks.core.grid import check_bbox

CATALOG_ENV = "LANDSLIDE_CATALOG"
CATALOG_FILENAME = "data_catalog.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalScene(_Strict):
    """One acquisition (or composite) of a local source.

    Band files are given per band (``bands``) or with a template (``band_template`` containing
    ``{band}``; ``band_tokens`` maps a contract name such as ``B02`` to the token in the file name,
    e.g. ``B2``). Bands may have different resolutions and CRSs: they are all warped onto the
    analysis grid. Several bands may live in one multi-band file: ``band_indexes`` gives each such
    band's 1-based band number in its file (bands it does not name are band 1 of their file).

    The acquisition time is ``acquired`` (one scene), ``acquired_range`` (a composite) or, when
    nothing records it, ``acquired_unknown: true``: the scan then writes no date (never a guessed
    one), and such a scene is chosen only when no date window (``--start``/``--end``) is given.
    """

    scene_id: str
    acquired: dt.datetime | None = Field(
        default=None, description="acquisition time (UTC) of a single scene")
    acquired_range: tuple[dt.date, dt.date] | None = Field(
        default=None, description="first and last date of a composite whose scene dates are unknown")
    acquired_unknown: bool = Field(
        default=False, description="true when no acquisition time is known (none is invented)")
    band_template: str | None = None
    band_tokens: dict[str, str] = Field(default_factory=dict)
    bands: dict[str, str] = Field(default_factory=dict)
    band_indexes: dict[str, int] = Field(
        default_factory=dict, description="band -> its 1-based band number in a multi-band file "
                                          "(default 1)")
    available_bands: tuple[str, ...] | None = Field(
        default=None, description="bands this scene has (required with band_template)")
    nodata: float | None = Field(default=None, description="overrides the files' nodata value")
    processing_baseline: str | None = Field(
        default=None, description="e.g. '02.01'; >= 04.00 means DN carry a +1000 offset")
    cloud_mask: "LocalCloudMask | None" = Field(
        default=None, description="a cloud mask file of this scene (path + the values that mean cloud); "
                                  "used instead of the cloud detector")
    b8a: str | None = Field(
        default=None, description="path of the scene's B8A band: not part of the band contract, read "
                                  "only by the s2cloudless cloud detector (without it B08 stands in)")
    sun_azimuth_deg: float | None = Field(
        default=None, ge=0, lt=360, description="mean sun azimuth of the scene (metadata); default: "
                                                "computed from 'acquired' and the scene centre")
    sun_zenith_deg: float | None = Field(
        default=None, ge=0, lt=90, description="mean sun zenith of the scene (metadata); as sun_azimuth_deg")

    @field_validator("acquired")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value

    @model_validator(mode="after")
    def _check(self) -> "LocalScene":
        if (self.acquired is not None) + (self.acquired_range is not None) + self.acquired_unknown != 1:
            raise ValueError("give exactly one of 'acquired' (a date-time), 'acquired_range' "
                             "([first, last] dates of a composite) or 'acquired_unknown: true'")
        if self.acquired_range and self.acquired_range[0] > self.acquired_range[1]:
            raise ValueError("acquired_range must be [first, last]")
        if not self.bands and not self.band_template:
            raise ValueError("give 'bands' (band -> path) or 'band_template' (a path with {band})")
        if self.band_template and "{band}" not in self.band_template:
            raise ValueError("band_template must contain '{band}'")
        if self.band_template and not self.available_bands:
            raise ValueError("band_template needs 'available_bands' (the bands the files exist for)")
        for name in (list(self.bands) + list(self.band_tokens) + list(self.band_indexes)
                     + list(self.available_bands or ())):
            if normalize_band_name(name) not in SPECTRAL_BAND_NAMES:
                raise ValueError(f"{name!r} is not a Sentinel-2 band of the contract")
        if (self.sun_azimuth_deg is None) != (self.sun_zenith_deg is None):
            raise ValueError("give sun_azimuth_deg and sun_zenith_deg together (the scene metadata's mean "
                             "sun angles) or neither")
        for name, index in self.band_indexes.items():
            if index < 1:
                raise ValueError(f"band_indexes[{name!r}] must be a band number >= 1, got {index}")
        return self

    @property
    def band_names(self) -> tuple[str, ...]:
        names = set(self.bands) | set(self.available_bands or ())
        return validate_bands(names)

    def band_path(self, band: str, root: Path) -> Path:
        """Path of one band's file (``band`` in contract spelling)."""
        band = normalize_band_name(band)
        explicit = {normalize_band_name(k): v for k, v in self.bands.items()}
        if band in explicit:
            raw = explicit[band]
        else:
            tokens = {normalize_band_name(k): v for k, v in self.band_tokens.items()}
            raw = self.band_template.format(band=tokens.get(band, band))  # type: ignore[union-attr]
        path = Path(os.path.expandvars(raw)).expanduser()
        return path if path.is_absolute() else root / path

    def band_number(self, band: str) -> int:
        """1-based band number of ``band`` in its file (``band_indexes``, else 1)."""
        band = normalize_band_name(band)
        return {normalize_band_name(k): v for k, v in self.band_indexes.items()}.get(band, 1)

    def overlaps(self, start: dt.date | None, end: dt.date | None) -> bool:
        """Whether the scene falls in the window [start, end] (dates inclusive). A scene of unknown
        date falls in no window, only in the open one."""
        if self.acquired_unknown:
            return start is None and end is None
        first, last = self.date_span
        return (start is None or last >= start) and (end is None or first <= end)

    @property
    def date_span(self) -> tuple[dt.date, dt.date]:
        """(first, last) day; a scene of unknown date sorts before every dated one (``date.min``)."""
        if self.acquired is not None:
            day = self.acquired.astimezone(dt.timezone.utc).date()
            return day, day
        if self.acquired_unknown:
            return dt.date.min, dt.date.min
        return self.acquired_range  # type: ignore[return-value]

    @property
    def date_text(self) -> str:
        """``first..last`` for messages (``date unknown`` when it is)."""
        if self.acquired_unknown:
            return "date unknown"
        first, last = self.date_span
        return f"{first}..{last}"


class LocalCloudMask(_Strict):
    """A cloud mask file of a local scene: a one-band raster (any CRS/resolution; warped with nearest
    neighbour) and the values that mean cloud (``cloud_values``) or an inclusive range (``cloud_range``)."""

    path: str
    cloud_values: tuple[int, ...] = ()
    cloud_range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> "LocalCloudMask":
        if bool(self.cloud_values) == (self.cloud_range is not None):
            raise ValueError("give exactly one of cloud_values (e.g. [1]) or cloud_range ([lo, hi])")
        if self.cloud_range and self.cloud_range[0] > self.cloud_range[1]:
            raise ValueError("cloud_range must be [lo, hi]")
        return self


class _ShadowOptions(_Strict):
    """Cloud-shadow projection settings (tasks/raster/clouds.py), shared by every source with a cloud mask."""

    cloud_shadows: bool = Field(default=True, description="also mask the clouds' projected shadows")
    cloud_heights_m: tuple[float, float] = Field(
        default=(300.0, 3000.0), description="cloud heights [low, high] the shadow is searched over")
    shadow_nir_max_dn: float = Field(
        default=1500.0, gt=0, description="a shadow candidate is shadow only where B08 is below this "
                                          "(TOA reflectance x 10000)")

    @field_validator("cloud_heights_m")
    @classmethod
    def _heights(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError("cloud_heights_m must be [low, high] with 0 <= low <= high (metres)")
        return value


class _CloudDetectorOptions(_ShadowOptions):
    """The cloud detector's settings (tasks/raster/clouds.py), shared by local and stac sources."""

    cloud_detector: Literal["auto", "s2cloudless", "none"] = Field(
        default="auto", description="cloud (and shadow) mask from the scene's own bands where the scene "
                                    "gives no cloud_mask file: 'auto' runs s2cloudless when the scene has "
                                    "its bands, 's2cloudless' requires them, 'none' never runs it")
    cloud_threshold: float = Field(default=0.4, gt=0, lt=1, description="s2cloudless probability "
                                                                        "above which a pixel is cloud")
    cloud_dilation_m: float = Field(default=160.0, ge=0, description="clouds grown by this distance")


class LocalSource(_CloudDetectorOptions):
    """Rasters on disk: per-band files per scene, and a DEM.

    The DEM is a file (``dem``) or the DEM collection of a ``stac`` source of the same catalog
    (``dem_source``: its ``dem_collection``, fetched for the ROI when the scan is planned).
    """

    kind: Literal["local"]
    description: str = ""
    scenes: tuple[LocalScene, ...]
    dem: str | None = Field(default=None, description="DEM raster (metres); SLOPE and DEM come from it")
    dem_source: str | None = Field(
        default=None, description="name of a 'stac' source of this catalog whose dem_collection gives "
                                  "the DEM over the ROI (instead of a 'dem' file)")
    dem_nodata: float | None = None
    dem_name: str = "DEM"

    @model_validator(mode="after")
    def _one_dem(self) -> "LocalSource":
        if self.dem is not None and self.dem_source is not None:
            raise ValueError("give 'dem' (a file) or 'dem_source' (a stac source's DEM collection), not both")
        return self

    @field_validator("scenes")
    @classmethod
    def _unique(cls, scenes: tuple[LocalScene, ...]) -> tuple[LocalScene, ...]:
        ids = [s.scene_id for s in scenes]
        if not ids:
            raise ValueError("a local source needs at least one scene")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate scene_id in {ids}")
        return scenes


class StacSource(_CloudDetectorOptions):
    """A STAC API (pystac-client search, COG window reads of the assets)."""

    kind: Literal["stac"]
    description: str = ""
    url: str = Field(description="STAC API root, e.g. https://earth-search.aws.element84.com/v1")
    collection: str = "sentinel-2-l1c"
    assets: dict[str, str] = Field(
        default_factory=lambda: dict(STAC_EARTH_SEARCH_L1C_ASSETS),
        description="contract band -> asset key of the collection")
    dem_url: str | None = Field(default=None, description="STAC API of the DEM (default: url)")
    dem_collection: str | None = Field(
        default="cop-dem-glo-30", description="DEM collection: one of STAC_DEM_PRODUCTS (alos-dem, "
                                              "cop-dem-glo-30, cop-dem-glo-90); None = no DEM")
    dem_asset: str | None = Field(default=None, description="asset key of the DEM raster (default: the "
                                                            "product's, 'data' for all three)")
    sign: Literal["planetary-computer"] | None = Field(
        default=None, description="sign asset hrefs with SAS tokens (Planetary Computer's token API) "
                                  "before reading them; None = read them as they are")
    sas_url: str | None = Field(
        default=None, description="token API root for 'sign' (default: Planetary Computer's "
                                  "https://planetarycomputer.microsoft.com/api/sas/v1)")
    dem_sign: Literal["planetary-computer", "none"] | None = Field(
        default=None, description="signing of the DEM's hrefs; None = as 'sign' when the DEM comes from "
                                  "the same API (no dem_url), unsigned when dem_url names another one")
    max_cloud_pct: float = Field(default=30.0, ge=0, le=100)
    cloud_mask_asset: str | None = Field(
        default=None, description="asset key of a per-pixel cloud mask of the collection (e.g. 'scl' "
                                  "of Earth Search sentinel-2-l2a); None: no cloud mask is applied")
    cloud_mask_values: tuple[int, ...] = Field(
        default=(), description="values of that asset that are cloud (SCL: 3, 8, 9, 10)")
    b8a_asset: str | None = Field(
        default="nir08", description="asset key of B8A, read only by the cloud detector (Earth Search: "
                                     "nir08); None or absent from the item: B08 stands in")
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    max_mosaic_scenes: int = Field(
        default=6, ge=1, le=255, description="most scenes of a per-pixel mosaic when no single scene "
                                             "covers the ROI (tasks.sources.mosaic); 1 = never mosaic")

    @field_validator("assets")
    @classmethod
    def _bands(cls, assets: dict[str, str]) -> dict[str, str]:
        out = {}
        for band, key in assets.items():
            name = normalize_band_name(band)
            if name not in SPECTRAL_BAND_NAMES:
                raise ValueError(f"{band!r} is not a Sentinel-2 band of the contract")
            out[name] = key
        return out

    @field_validator("dem_collection")
    @classmethod
    def _dem_product(cls, value: str | None) -> str | None:
        if value is not None and value not in STAC_DEM_PRODUCTS:
            raise ValueError(f"dem_collection {value!r} is not a known DEM product; use one of "
                             f"{', '.join(sorted(STAC_DEM_PRODUCTS))} or null (no DEM)")
        return value

    @model_validator(mode="after")
    def _cloud_mask(self) -> "StacSource":
        if bool(self.cloud_mask_asset) != bool(self.cloud_mask_values):
            raise ValueError("cloud_mask_asset and cloud_mask_values go together (e.g. scl with [3, 8, 9, 10])")
        if self.sas_url and not (self.sign or self.dem_sign == "planetary-computer"):
            raise ValueError("sas_url is only used with sign: planetary-computer (or dem_sign)")
        return self

    @property
    def dem_product(self) -> "DemProduct | None":
        """The DEM collection's product facts (asset, nodata, units, vertical datum); None = no DEM."""
        return STAC_DEM_PRODUCTS[self.dem_collection] if self.dem_collection else None

    @property
    def dem_asset_key(self) -> str:
        """``dem_asset``, else the DEM product's asset key."""
        product = self.dem_product
        return self.dem_asset or (product.asset if product else "data")

    @property
    def token_api(self) -> str:
        """Root of the SAS token API used by ``sign`` / ``dem_sign``."""
        return self.sas_url or PLANETARY_COMPUTER_SAS_URL

    @property
    def signs_dem(self) -> bool:
        """Whether the DEM's hrefs are signed (``dem_sign``, else ``sign`` for a DEM from the same API)."""
        if self.dem_sign is not None:
            return self.dem_sign == "planetary-computer"
        return self.sign is not None and self.dem_url is None


class SentinelHubSource(_ShadowOptions):
    """Sentinel Hub Catalog + Process APIs through the ``sentinelhub`` package.

    The cloud mask is Sentinel Hub's ``CLM``; its clouds' shadows are projected as for the detector's
    (``cloud_shadows``, ``cloud_heights_m``, ``shadow_nir_max_dn``; tasks/raster/clouds.py).

    Credentials never come from this file: ``SH_CLIENT_ID`` / ``SH_CLIENT_SECRET`` in the
    environment (names configurable) or a Prefect Secret block holding ``id:secret``.
    """

    kind: Literal["sentinelhub"]
    description: str = ""
    base_url: str = "https://services.sentinel-hub.com"
    token_url: str | None = None  # default: <base_url>/auth/realms/main/protocol/openid-connect/token
    collection: str = "sentinel-2-l1c"
    dem_collection: str | None = "COPERNICUS_30"
    max_cloud_pct: float = Field(default=30.0, ge=0, le=100)
    client_id_env: str = "SH_CLIENT_ID"
    client_secret_env: str = "SH_CLIENT_SECRET"
    secret_block: str | None = Field(default=None, description="Prefect Secret block 'id:secret'")
    cloud_mask: bool = Field(default=True, description="request the CLM cloud mask with the bands; "
                                                       "cloud pixels and their projected shadows "
                                                       "(cloud_shadows) are not analysed")
    max_retries: int = Field(default=4, ge=0)
    timeout_s: float = Field(default=120.0, gt=0)
    max_mosaic_scenes: int = Field(
        default=6, ge=1, le=255, description="most scenes of a per-pixel mosaic when no single scene "
                                             "covers the ROI (tasks.sources.mosaic); 1 = never mosaic")


PLANETARY_COMPUTER_SAS_URL = "https://planetarycomputer.microsoft.com/api/sas/v1"


@dataclass(frozen=True)
class DemProduct:
    """What a STAC DEM collection's rasters hold (facts of the product, not of one API).

    Attributes:
        collection: STAC collection id (the same on Planetary Computer and Earth Search).
        name: the product's name, as recorded in the manifest.
        asset: asset key of the elevation raster.
        nodata: the product's no-data value, used when a file carries no nodata tag; None = the product
            has none (Copernicus DEM: sea is 0 m, not no data).
        units: of the values.
        vertical_datum: the geoid the heights refer to.
        res_arcsec: nominal posting.
    """

    collection: str
    name: str
    asset: str
    nodata: float | None
    units: str
    vertical_datum: str
    res_arcsec: float


# Sources of the facts: the Copernicus DEM product handbook and the real GLO-30 COG in
# ../shared/data/cop_dem_glo30_n00e006 (float32 m, no nodata tag, sea = 0, EGM2008 heights); JAXA's
# AW3D30 product description (int16 m DSM, -9999 = no data, EGM96 heights) and Planetary Computer's
# `alos-dem` collection (asset `data`). No alos-dem metadata is in the repository's fixtures: check
# a live item's raster:bands before relying on the nodata value.
STAC_DEM_PRODUCTS: dict[str, DemProduct] = {
    "alos-dem": DemProduct("alos-dem", "ALOS World 3D 30 m DSM (AW3D30)", "data", -9999.0, "m",
                           "EGM96 geoid", 1.0),
    "cop-dem-glo-30": DemProduct("cop-dem-glo-30", "Copernicus DEM GLO-30", "data", None, "m",
                                 "EGM2008 geoid", 1.0),
    "cop-dem-glo-90": DemProduct("cop-dem-glo-90", "Copernicus DEM GLO-90", "data", None, "m",
                                 "EGM2008 geoid", 3.0),
}


# Earth Search v1 `sentinel-2-l1c` asset keys (see ../shared/data/api_fixtures/stac)
STAC_EARTH_SEARCH_L1C_ASSETS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B09": "nir09", "B10": "cirrus",
    "B11": "swir16", "B12": "swir22"}

LocalScene.model_rebuild()

Source = Annotated[Union[LocalSource, StacSource, SentinelHubSource], Field(discriminator="kind")]


class Region(_Strict):
    """A named area: a bbox in EPSG:4326 or a GeoJSON file, and the source that covers it.

    ``event_date`` (optional): the date of the event the region is watched for. Regional scans
    then leave out the scenes that end before it, and ``landslide change`` checks its pre and post
    runs against it.
    """

    source: str
    description: str = ""
    bbox: tuple[float, float, float, float] | None = None
    aoi: str | None = None
    start: dt.date | None = None
    end: dt.date | None = None
    event_date: dt.date | None = None

    @model_validator(mode="after")
    def _check(self) -> "Region":
        if self.bbox is not None:
            check_bbox(self.bbox)
        return self


class Catalog(_Strict):
    """The whole ``data_catalog.yaml``."""

    version: Literal[1] = 1
    sources: dict[str, Source]
    regions: dict[str, Region] = Field(default_factory=dict)
    root: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _refs(self) -> "Catalog":
        for name, region in self.regions.items():
            if region.source not in self.sources:
                raise ValueError(f"region {name!r} names unknown source {region.source!r}; "
                                 f"sources are {', '.join(sorted(self.sources))}")
        for name, source in self.sources.items():
            ref = getattr(source, "dem_source", None)
            if ref is None:
                continue
            key = f"sources.{name}.dem_source"
            stac = self.dem_stac_sources()
            target = self.sources.get(ref)
            if target is None:
                raise ValueError(f"{key}: unknown source {ref!r}; stac sources with a DEM collection: "
                                 f"{', '.join(stac) or '(none)'}")
            if not isinstance(target, StacSource):
                raise ValueError(f"{key}: source {ref!r} is of kind {target.kind!r}; name a 'stac' source "
                                 f"with a dem_collection ({', '.join(stac) or 'none in this catalog'})")
            if target.dem_collection is None:
                raise ValueError(f"{key}: source {ref!r} has no dem_collection; set one "
                                 f"({', '.join(sorted(STAC_DEM_PRODUCTS))}) or name another source")
        return self

    def dem_stac_sources(self) -> list[str]:
        """Names of the stac sources that have a DEM collection (sorted)."""
        return sorted(n for n, s in self.sources.items() if isinstance(s, StacSource) and s.dem_collection)

    def region(self, name: str) -> Region:
        if name not in self.regions:
            raise InputError(f"unknown region {name!r}; regions in the catalog: "
                             f"{', '.join(sorted(self.regions)) or '(none)'} "
                             f"(add it to data_catalog.yaml under 'regions:')")
        return self.regions[name]

    def source(self, name: str) -> LocalSource | StacSource | SentinelHubSource:
        if name not in self.sources:
            raise InputError(f"unknown source {name!r}; sources in the catalog: "
                             f"{', '.join(sorted(self.sources))}")
        return self.sources[name]

    def resolve(self, path: str | None) -> Path | None:
        if path is None:
            return None
        p = Path(os.path.expandvars(path)).expanduser()
        return p if p.is_absolute() else (self.root / p).resolve()


def default_catalog_path() -> Path:
    """``$LANDSLIDE_CATALOG``, else ``./data_catalog.yaml``, else the one beside the package."""
    if os.environ.get(CATALOG_ENV):
        return Path(os.environ[CATALOG_ENV])
    here = Path.cwd() / CATALOG_FILENAME
    if here.exists():
        return here
    return Path(__file__).resolve().parents[2] / CATALOG_FILENAME  # the repository root


def _format_validation_error(err: ValidationError, path: Path) -> str:
    """One line for the most telling problem: a misspelled (unknown) key first, since it usually
    also causes the "Field required" of the key it was meant to be; the count of the others."""
    errors = err.errors()

    def loc_of(e: dict) -> str:
        return ".".join(str(p) for p in e["loc"]
                        if not str(p).startswith(("LocalSource", "StacSource", "SentinelHubSource"))
                        and str(p) not in ("local", "stac", "sentinelhub"))

    first = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    loc = loc_of(first)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        parent, _, key = loc.rpartition(".")
        missing = [loc_of(e).rpartition(".")[2] for e in errors
                   if e["type"] == "missing" and loc_of(e).rpartition(".")[0] == parent]
        close = difflib.get_close_matches(key, missing, n=1) if missing else []
        hint = (f"did you mean '{close[0]}'?" if close else "misspelled?")
        return f"{path}: unknown key '{loc}' ({hint}){more}; see the documented keys in README.md"
    if first["type"] == "union_tag_invalid":
        return f"{path}: '{loc}': source kind must be one of local, sentinelhub, stac{more}"
    if not loc:  # a check across sources (Catalog._refs): its message names the key itself
        return f"{path}: {first['msg'].removeprefix('Value error, ')}{more}"
    return f"{path}: '{loc}': {first['msg']}{more}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a YAML error (PyYAML's marks are 0-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file.

    Raises:
        InputError: the file is missing, not YAML, or does not match the schema (one line naming
            the offending key).
    """
    path = Path(path) if path is not None else default_catalog_path()
    if not path.exists():
        raise InputError(f"catalog {path} not found; pass --catalog PATH or set ${CATALOG_ENV}")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a mapping with 'sources:' and 'regions:'")
    try:
        catalog = Catalog(**raw, root=path.resolve().parent)
    except ValidationError as exc:
        raise InputError(_format_validation_error(exc, path)) from None
    return catalog
