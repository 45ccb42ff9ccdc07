"""One interface for patch datasets on disk (L4S h5 patches, GeoTIFF chips, ...).

Every layout hands out :class:`Sample` objects in the same units and channel order, so training,
evaluation and inference never care where a patch came from:

- ``image``: ``(14, H, W)`` float32 in the physical units of the band contract (``tasks/core/bands.py``):
  Sentinel-2 bands as reflectance x 10000, SLOPE in degrees, DEM in metres. Channels a layout does
  not carry are NaN (never zero: a zero would look like a real, dark measurement).
- ``labels``: ``(H, W)`` uint8, 1 = landslide, 0 = background, 255 = ignore; ``None`` when the
  dataset has no labels.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from models.metrics import IGNORE
from tasks.core.bands import BAND_NAMES, indices_of, normalize_band_name, validate_bands
from tasks.core.errors import InputError

log = logging.getLogger(__name__)

#: How many file names an error message lists before it says "and N more".
MAX_NAMED = 3


@dataclass(frozen=True)
class Sample:
    """One patch of a dataset.

    Attributes:
        image: ``(14, H, W)`` float32, physical units, contract order; NaN where a channel is absent.
        labels: ``(H, W)`` uint8 (1 landslide, 0 background, 255 ignore) or ``None``.
        name: a name unique within its dataset (the file path relative to the dataset root, no suffix).
        crs: the coordinate reference system when the layout is georeferenced (chips), else ``None``.
        transform: the affine pixel-to-CRS transform when georeferenced, else ``None``.
    """

    image: np.ndarray
    labels: np.ndarray | None
    name: str
    crs: object | None = None
    transform: object | None = None


def name_files(paths: Sequence[object], limit: int = MAX_NAMED) -> str:
    """``"a.h5, b.h5, c.h5 and 4 more"``: a short list of offending files for one-line errors."""
    shown = ", ".join(str(p) for p in paths[:limit])
    rest = len(paths) - limit
    return shown + (f" and {rest} more" if rest > 0 else "")


def select_bands(sample: Sample, bands: Iterable[str],
                 available: Sequence[str] = BAND_NAMES) -> np.ndarray:
    """The channels ``bands`` of a sample, as ``(len(bands), H, W)`` in contract order.

    Band names are canonicalized (``"b4"`` -> ``"B04"``) and returned in stack order (B01 .. DEM),
    the order every checkpoint consumes (``tasks.core.bands.validate_bands``).

    Raises:
        InputError: an unknown band name, a band listed twice, or a band the dataset lacks.
    """
    wanted = validate_bands(bands)
    avail = {normalize_band_name(b) for b in available}
    missing = [b for b in wanted if b not in avail]
    if missing:
        have = " ".join(b for b in BAND_NAMES if b in avail)
        raise InputError(
            f"dataset has no {', '.join(missing)} (it has {have}); choose a model whose bands are a "
            "subset of these, or a dataset layout that carries the missing bands")
    return sample.image[indices_of(wanted)]


class PatchDataset(abc.ABC):
    """A list of patches, all in the band contract's units (see the module docstring).

    Subclasses set ``bands_available`` and ``has_labels`` and implement ``__len__``,
    ``__getitem__`` and ``source_files`` (the file(s) behind patch ``i``, for messages).
    """

    #: the contract bands this layout really carries; the others are NaN in ``Sample.image``
    bands_available: tuple[str, ...] = BAND_NAMES
    #: whether every patch has a label raster
    has_labels: bool = False

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, i: int) -> Sample: ...

    @abc.abstractmethod
    def source_files(self, i: int) -> tuple[Path, ...]:
        """The file(s) patch ``i`` is read from (image first)."""

    @abc.abstractmethod
    def _read_raw_image(self, i: int) -> np.ndarray:
        """Patch ``i``'s available channels as stored (before unit conversion), for scans."""

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def select_bands(self, sample: Sample, bands: Iterable[str]) -> np.ndarray:
        """``(len(bands), H, W)`` in contract order; refuses bands this dataset lacks.

        Raises:
            InputError: an unknown band or one not in ``bands_available``.
        """
        return select_bands(sample, bands, self.bands_available)

    def require_labels(self, purpose: str = "evaluation") -> None:
        """Refuse clearly when labels are needed but the dataset has none.

        Raises:
            InputError: ``has_labels`` is False.
        """
        if not self.has_labels:
            raise InputError(f"{self.describe()} has no labels: {purpose} needs them "
                             f"({self.labels_hint()}); prediction on its images still works")

    def describe(self) -> str:
        """A short name of the dataset for messages."""
        return type(self).__name__

    def labels_hint(self) -> str:
        """Where this layout expects its labels (for messages)."""
        return f"1 landslide, 0 background, {IGNORE} ignore"

    def check_finite(self) -> list[Path]:
        """Scan every patch and list the image files holding NaN or +-inf values.

        Reads each file once (no unit conversion); logs one line with the count. Use it before a
        long training run to find broken patches in one go instead of one exception at a time.
        """
        bad = [self.source_files(i)[0] for i in range(len(self)) if self._count_nonfinite(i)]
        log.info("check_finite: %d of %d patches hold NaN/inf%s", len(bad), len(self),
                 f" ({name_files(bad)})" if bad else "")
        return bad

    def _count_nonfinite(self, i: int) -> int:
        """NaN/inf values in patch ``i`` that are not declared no-data (layouts may override)."""
        return int((~np.isfinite(self._read_raw_image(i))).sum())

    def _refuse_nonfinite(self, raw: np.ndarray, path: Path, ok: np.ndarray | None = None) -> None:
        """Raise when ``raw`` holds NaN/inf outside the declared no-data pixels ``ok``."""
        bad = ~np.isfinite(raw)
        if ok is not None:
            bad &= ~ok
        if bad.any():
            n = int(bad.sum())
            raise InputError(f"{path} holds {n} NaN/inf values; remove or repair the file "
                             "(list all such files with check_finite())")


def check_label_values(labels: np.ndarray, allowed: Iterable[int], path: Path,
                       fix: str = "fix the file") -> None:
    """Raise InputError when a label raster holds values outside ``allowed``."""
    bad = np.setdiff1d(np.unique(labels), np.asarray(list(allowed)))
    if bad.size:
        raise InputError(f"{path} holds label values {bad.tolist()[:5]}; allowed are "
                         f"{sorted(int(a) for a in allowed)}: {fix}")
