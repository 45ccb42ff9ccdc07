"""The band contract: the Landslide4Sense channel layout as data.

Channel order, always, in stacks, patches and checkpoints (docs/contracts.md section 1)::

    B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12 SLOPE DEM

Sentinel-2 bands are top-of-atmosphere reflectance x 10000 (L1C digital numbers, harmonized to
processing baseline < 04.00, i.e. without the +1000 offset), SLOPE is degrees (0..90, Horn's method
on the DEM in a metric CRS), DEM is metres.

Event mode (bi-temporal) extends the layout with the pre-event scene's spectral bands, after the 14::

    B01 ... B12 SLOPE DEM  PRE_B01 PRE_B02 ... PRE_B12      (26 channels, EVENT_BAND_NAMES)

``PRE_Bxx`` is band ``Bxx`` of the best scene before the event date, same units, same grid. A
checkpoint whose card lists any ``PRE_`` band is bi-temporal (:func:`is_bitemporal`) and needs an
event date; every other card reads the first 14 channels exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from tasks.core.errors import InputError


@dataclass(frozen=True)
class Band:
    """One channel of the stack."""

    name: str
    description: str
    unit: str
    native_res_m: float | None  # None for derived layers (resolution of the DEM)
    l4s_scale: float  # the L4S h5 files store physical / l4s_scale
    resampling: str  # how the band is brought onto the analysis grid

    pre_event: bool = False  # a band of the pre-event scene (event mode)

    @property
    def is_spectral(self) -> bool:
        return self.native_res_m is not None

    @property
    def source_band(self) -> str:
        """The Sentinel-2 band a source reads for it (``PRE_B04`` -> ``B04``)."""
        return self.name.removeprefix(PRE_PREFIX)


# L4S_SCALE published by the Landslide4Sense maintainers; tests check it against the 14 real patches.
BANDS: tuple[Band, ...] = (
    Band("B01", "coastal aerosol 443 nm", "reflectance x 10000", 60.0, 1111.81, "bilinear"),
    Band("B02", "blue 490 nm", "reflectance x 10000", 10.0, 824.63, "bilinear"),
    Band("B03", "green 560 nm", "reflectance x 10000", 10.0, 663.42, "bilinear"),
    Band("B04", "red 665 nm", "reflectance x 10000", 10.0, 445.17, "bilinear"),
    Band("B05", "red edge 705 nm", "reflectance x 10000", 20.0, 645.86, "bilinear"),
    Band("B06", "red edge 740 nm", "reflectance x 10000", 20.0, 1547.74, "bilinear"),
    Band("B07", "red edge 783 nm", "reflectance x 10000", 20.0, 1960.44, "bilinear"),
    Band("B08", "NIR 842 nm", "reflectance x 10000", 10.0, 1941.32, "bilinear"),
    Band("B09", "water vapour 945 nm", "reflectance x 10000", 60.0, 674.08, "bilinear"),
    Band("B10", "SWIR cirrus 1375 nm", "reflectance x 10000", 60.0, 9.05, "bilinear"),
    Band("B11", "SWIR 1610 nm", "reflectance x 10000", 20.0, 1113.98, "bilinear"),
    Band("B12", "SWIR 2190 nm", "reflectance x 10000", 20.0, 519.90, "bilinear"),
    Band("SLOPE", "terrain slope (Horn)", "degrees", None, 20.29, "bilinear"),
    Band("DEM", "elevation", "metres", None, 772.83, "bilinear"),
)

PRE_PREFIX = "PRE_"
PRE_EVENT_BANDS: tuple[Band, ...] = tuple(
    Band(PRE_PREFIX + b.name, "pre-event " + b.description, b.unit, b.native_res_m, b.l4s_scale,
         b.resampling, pre_event=True)
    for b in BANDS if b.is_spectral)
EVENT_BANDS: tuple[Band, ...] = BANDS + PRE_EVENT_BANDS

BAND_NAMES: tuple[str, ...] = tuple(b.name for b in BANDS)
EVENT_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in EVENT_BANDS)
PRE_EVENT_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in PRE_EVENT_BANDS)
SPECTRAL_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in BANDS if b.is_spectral)
TERRAIN_BAND_NAMES: tuple[str, ...] = ("SLOPE", "DEM")
L4S_SCALE: tuple[float, ...] = tuple(b.l4s_scale for b in BANDS)
RGB_BANDS: tuple[str, ...] = ("B04", "B03", "B02")

_BY_NAME = {b.name: b for b in EVENT_BANDS}
_ALIASES = {"SLOPE_DEG": "SLOPE", "ELEVATION": "DEM", "B8": "B08", "B1": "B01", "B2": "B02",
            "B3": "B03", "B4": "B04", "B5": "B05", "B6": "B06", "B7": "B07", "B9": "B09"}


def normalize_band_name(name: str) -> str:
    """Return the canonical name of a band (``"b4"`` -> ``"B04"``).

    Raises:
        InputError: the name is not one of the 14 channels (B8A is not part of the contract).
    """
    key = str(name).strip().upper()
    pre = key.startswith(PRE_PREFIX)
    base = key.removeprefix(PRE_PREFIX)
    base = _ALIASES.get(base, base)
    key = PRE_PREFIX + base if pre else base
    if key not in _BY_NAME:
        hint = " (B8A is not part of the Landslide4Sense layout; use B08)" if base == "B8A" else ""
        if pre and base in TERRAIN_BAND_NAMES:
            hint = " (terrain does not change with the event: use SLOPE/DEM)"
        raise InputError(
            f"unknown band {name!r}{hint}; valid bands are {', '.join(BAND_NAMES)} and, for "
            f"event mode, {PRE_PREFIX}B01..{PRE_PREFIX}B12"
        )
    return key


def get_band(name: str) -> Band:
    """Look a band up by (case-insensitive) name."""
    return _BY_NAME[normalize_band_name(name)]


def band_index(name: str) -> int:
    """0-based channel index of a band in the stack (14 channels; 26 in event mode, the same 14
    first)."""
    return EVENT_BAND_NAMES.index(normalize_band_name(name))


def is_bitemporal(names: Iterable[str]) -> bool:
    """True when a band list holds a pre-event channel (the detector needs an event date)."""
    return any(get_band(n).pre_event for n in names)


def pre_event_request(names: Iterable[str]) -> tuple[str, ...]:
    """The Sentinel-2 bands to read from the pre-event scene for a band list (``PRE_B04`` -> ``B04``)."""
    return tuple(b.source_band for b in (get_band(n) for n in names) if b.pre_event)


def validate_bands(names: Iterable[str]) -> tuple[str, ...]:
    """Canonicalize a band list, reject duplicates, and return it in contract order.

    A checkpoint may use any subset of the 14 channels; its inputs are always fed in stack order,
    so ``["DEM", "B04"]`` becomes ``("B04", "DEM")``.
    """
    canon = [normalize_band_name(n) for n in names]
    if not canon:
        raise InputError("empty band list; name at least one of " + ", ".join(BAND_NAMES))
    dup = sorted({n for n in canon if canon.count(n) > 1})
    if dup:
        raise InputError(f"band(s) listed twice: {', '.join(dup)}")
    return tuple(n for n in EVENT_BAND_NAMES if n in canon)


def spectral_request(names: Iterable[str]) -> tuple[str, ...]:
    """Validate the bands asked of a data source: contract names, Sentinel-2 bands only.

    Raises:
        InputError: an unknown band, or SLOPE/DEM (derived from the DEM, never read from a source).
    """
    wanted = validate_bands(names) if names else ()
    pre = [b for b in wanted if get_band(b).pre_event]
    if pre:
        raise InputError(f"bands {pre} are read from the pre-event scene of an event-mode scan, "
                         "not asked of a source by that name (ask for "
                         f"{', '.join(get_band(b).source_band for b in pre)})")
    derived = [b for b in wanted if b not in SPECTRAL_BAND_NAMES]
    if derived:
        raise InputError(f"bands {derived} are derived from the DEM, not read from a source")
    return wanted


def indices_of(names: Sequence[str]) -> list[int]:
    """Stack indices of ``names`` (in the order given)."""
    return [band_index(n) for n in names]
