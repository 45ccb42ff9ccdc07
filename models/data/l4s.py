"""The Landslide4Sense (L4S) h5 layout.

As released by IARAI (Ghorbanzadeh et al. 2022)::

    ROOT/TrainData/img/image_1.h5 ...   key "img",  (128, 128, 14) float64, channels last,
    ROOT/TrainData/mask/mask_1.h5 ...   key "mask", (128, 128) uint8, 1 landslide, 0 background
    ROOT/ValidData/img/...              (no masks in the 2022 release)
    ROOT/TestData/img/...               (no masks in the 2022 release)
    dataset_train.txt                   one path a line, relative to ROOT: TrainData/img/image_1.h5

Images are stored in L4S's own units, ``physical / L4S_SCALE`` per channel; this reader multiplies
by ``L4S_SCALE`` so every sample is in the band contract's physical units (reflectance x 10000,
degrees, metres) like any other source, and a model card's transform starts from those units.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from models.data.dataset_api import PatchDataset, Sample, check_label_values, name_files
from models.metrics import IGNORE
from tasks.core.bands import BAND_NAMES, L4S_SCALE
from tasks.core.errors import InputError

log = logging.getLogger(__name__)

IMAGE_KEY = "img"
MASK_KEY = "mask"
_IMAGE_RE = re.compile(r"^image_(\d+)\.h5$")
_MASK_RE = re.compile(r"^mask_(\d+)\.h5$")
_SCALE = np.asarray(L4S_SCALE, dtype=np.float64)


def mask_path_for(image_path: Path) -> Path:
    """``.../img/image_7.h5`` -> ``.../mask/mask_7.h5`` (the L4S naming)."""
    m = _IMAGE_RE.match(image_path.name)
    stem = m.group(1) if m else image_path.stem
    return image_path.parent.parent / "mask" / f"mask_{stem}.h5"


def read_split_list(split_list: str | Path) -> list[str]:
    """The non-empty lines of an official ``dataset_*.txt`` (paths relative to the dataset root)."""
    path = Path(split_list)
    if not path.is_file():
        raise InputError(f"split list {path} not found; pass one of the official dataset_*.txt "
                         "files (or split_list=None to read every image under ROOT/img)")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _number(path: Path, pattern: re.Pattern) -> int:
    m = pattern.match(path.name)
    return int(m.group(1)) if m else -1


class L4SDataset(PatchDataset):
    """Landslide4Sense patches read from h5 files.

    Args:
        root: either a split folder holding ``img/`` (and optionally ``mask/``), e.g.
            ``.../TrainData``, or, with ``split_list``, the download root the list's paths are
            relative to (the folder holding ``TrainData/``).
        split_list: an official ``dataset_*.txt`` file, or a sequence of such relative paths;
            ``None`` reads every ``root/img/image_*.h5`` in numeric order.
        on_nonfinite: ``"raise"`` (default) refuses a patch holding NaN/inf; ``"keep"`` passes the
            values through.

    Raises:
        InputError: missing folder, a split list naming missing files, images and masks that do
            not pair up, or a first file with a layout other than (H, W, 14).
    """

    bands_available = BAND_NAMES

    def __init__(self, root: str | Path, split_list: str | Path | Sequence[str] | None = None,
                 on_nonfinite: str = "raise") -> None:
        if on_nonfinite not in ("raise", "keep"):
            raise InputError(f"on_nonfinite={on_nonfinite!r}; use 'raise' or 'keep'")
        self.root = Path(root)
        self.on_nonfinite = on_nonfinite
        if not self.root.is_dir():
            raise InputError(f"L4S root {self.root} is not a folder; point it at the folder holding "
                             "img/ (e.g. .../TrainData) or, with a split list, at the download root")
        self.split_list = split_list
        if split_list is None:
            self.image_paths = self._scan_folder()
        else:
            lines = read_split_list(split_list) if isinstance(split_list, (str, Path)) \
                else [str(s).strip() for s in split_list if str(s).strip()]
            self.image_paths = self._resolve_list(lines)
        self.mask_paths = self._pair_masks()
        self.has_labels = self.mask_paths is not None
        # One file up front catches a wrong layout before a long run; each read checks its own.
        self._read_raw_image(0)
        log.info("L4S dataset %s: %d patches, %s", self.describe(), len(self),
                 "with masks" if self.has_labels else "no masks")

    # -- construction ----------------------------------------------------------------------
    def _scan_folder(self) -> list[Path]:
        img_dir = self.root / "img"
        if not img_dir.is_dir():
            sub = sorted(p.name for p in self.root.glob("*Data") if (p / "img").is_dir())
            hint = (f" (it holds {', '.join(sub)}: point root at one of them, or pass split_list)"
                    if sub else "")
            raise InputError(f"{self.root} has no img/ folder{hint}; the L4S layout is "
                             "ROOT/img/image_N.h5 (+ ROOT/mask/mask_N.h5)")
        paths = sorted(img_dir.glob("*.h5"), key=lambda p: (_number(p, _IMAGE_RE), p.name))
        if not paths:
            raise InputError(f"{img_dir} holds no .h5 files; expected image_N.h5 (key 'img')")
        return paths

    def _resolve_list(self, lines: list[str]) -> list[Path]:
        if not lines:
            raise InputError(f"split list {self.split_list} is empty")
        paths = [p if p.is_absolute() else self.root / p for p in map(Path, lines)]
        missing = [ln for ln, p in zip(lines, paths) if not p.is_file()]
        if missing:
            # The official lists are relative to the download root (TrainData/img/...): the
            # usual mistake is pointing root at TrainData itself.
            raise InputError(
                f"split list {self.split_list} names {len(missing)} of {len(paths)} files missing "
                f"under {self.root}: {name_files(missing)}; point root at the folder the list's "
                "paths are relative to (the one holding TrainData/), or use the matching list")
        return paths

    def _pair_masks(self) -> list[Path] | None:
        masks = [mask_path_for(p) for p in self.image_paths]
        present = [m.is_file() for m in masks]
        if not any(present):
            return None
        if not all(present):
            lonely = [p for p, ok in zip(self.image_paths, present) if not ok]
            raise InputError(
                f"{len(lonely)} of {len(masks)} images have no mask ({name_files(lonely)}); expected "
                f"e.g. {masks[present.index(False)]}: add the masks or remove those images")
        if self.split_list is None:
            mask_dir = masks[0].parent
            expected = {m.name for m in masks}
            extra = sorted((m for m in mask_dir.glob("*.h5") if m.name not in expected),
                           key=lambda p: (_number(p, _MASK_RE), p.name))
            if extra:
                raise InputError(
                    f"{mask_dir} has {len(extra)} masks without an image "
                    f"({name_files(extra)}; {len(masks)} images vs {len(masks) + len(extra)} masks): "
                    "add the images or remove those masks")
        return masks

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.image_paths)

    def describe(self) -> str:
        return f"{self.root}" + (f" ({self.split_list})" if isinstance(self.split_list, (str, Path))
                                 else "")

    def labels_hint(self) -> str:
        return (f"mask/mask_N.h5 beside img/, key '{MASK_KEY}', 1 landslide, 0 background; the 2022 "
                "release ships masks for TrainData only")

    def source_files(self, i: int) -> tuple[Path, ...]:
        img = self.image_paths[i]
        return (img, self.mask_paths[i]) if self.mask_paths else (img,)

    def _read_raw_image(self, i: int) -> np.ndarray:
        return _read_raw_image(self.image_paths[i])

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"patch {i} out of range for {len(self)} patches")
        i %= len(self)
        path = self.image_paths[i]
        raw = self._read_raw_image(i)
        if self.on_nonfinite == "raise":
            self._refuse_nonfinite(raw, path)
        image = _to_physical(raw)
        labels = None
        if self.mask_paths is not None:
            labels = self._read_mask(self.mask_paths[i], image.shape[1:], path)
        return Sample(image=image, labels=labels, name=self._name(path))

    def _read_mask(self, mask_path: Path, hw: tuple[int, ...], image_path: Path) -> np.ndarray:
        mask = _read_h5(mask_path, MASK_KEY)
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.shape != tuple(hw):
            raise InputError(f"{mask_path} is {mask.shape} but {image_path} is {tuple(hw)} pixels; "
                             "image and mask must have the same height and width")
        if not np.isfinite(mask).all():
            raise InputError(f"{mask_path} holds NaN/inf; masks must be 0/1 (or {IGNORE} ignore)")
        check_label_values(mask, (0, 1, IGNORE), mask_path)
        return mask.astype(np.uint8)

    def _name(self, path: Path) -> str:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            rel = path
        return rel.with_suffix("").as_posix()


def _read_raw_image(path: Path) -> np.ndarray:
    """The ``img`` array of one L4S file as stored: (H, W, 14), L4S units."""
    arr = _read_h5(path, IMAGE_KEY)
    if arr.ndim != 3 or arr.shape[-1] != len(BAND_NAMES):
        raise InputError(
            f"{path} key '{IMAGE_KEY}' has shape {arr.shape}; expected (H, W, {len(BAND_NAMES)}) "
            f"channels last ({' '.join(BAND_NAMES)}): re-export it with all "
            f"{len(BAND_NAMES)} channels")
    return arr


def _to_physical(raw: np.ndarray) -> np.ndarray:
    """(H, W, 14) L4S units -> (14, H, W) float32 physical units (reflectance x 10000, deg, m)."""
    # float64 product, then float32: the stored values are DN / scale, so this restores the DN.
    return np.ascontiguousarray((raw * _SCALE).transpose(2, 0, 1), dtype=np.float32)


def read_l4s_patch(path: str | Path) -> np.ndarray:
    """One L4S image patch in the band contract's physical units, as :class:`L4SDataset` reads it.

    Returns:
        (14, H, W) float32, channels in ``BAND_NAMES`` order.

    Raises:
        InputError: a missing file, not HDF5, no ``img`` dataset, a layout other than (H, W, 14),
            or NaN/inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path} is not an HDF5 file; a Landslide4Sense patch is HDF5 with the image "
                         f"under key '{IMAGE_KEY}', (128, 128, {len(BAND_NAMES)})")
    raw = _read_raw_image(path)
    bad = int((~np.isfinite(raw)).sum())
    if bad:
        raise InputError(f"{path} holds {bad} NaN/inf values; an L4S patch has none: repair the file")
    return _to_physical(raw)


def _read_h5(path: Path, key: str) -> np.ndarray:
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise InputError(f"{path} has no dataset '{key}' (keys: {', '.join(f.keys()) or 'none'}); "
                                 f"L4S files store the array under '{key}'")
            return f[key][()]
    except OSError as e:
        raise InputError(f"{path} is not a readable HDF5 file ({e}); re-download it") from e
