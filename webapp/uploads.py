"""Uploaded files: each browser session gets its own temporary folder, names are sanitised (no path
traversal, no hidden files), sizes are limited, and a file is checked to be what it claims before a
scan sees it. A bad upload is one message for the page, never a traceback."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
PATCH_SUFFIXES = (".h5",)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_CHARS = 120


class UploadError(ValueError):
    """An upload the app refuses; the message is shown as it is."""


def safe_name(name: str) -> str:
    """A file name that is only a name: the last path component, unsafe characters replaced by
    ``_``, no leading dots (``../../etc/passwd`` -> ``passwd``, ``a b.tif`` -> ``a_b.tif``)."""
    base = re.split(r"[\\/]", str(name))[-1]
    cleaned = _SAFE.sub("_", base).lstrip("._")
    if not cleaned:
        raise UploadError(f"the file name {name!r} has no usable characters")
    stem, dot, suffix = cleaned.rpartition(".")
    if len(cleaned) > MAX_NAME_CHARS:
        cleaned = (stem[:MAX_NAME_CHARS - len(suffix) - 1] + "." + suffix) if dot else cleaned[:MAX_NAME_CHARS]
    return cleaned


def session_folder(root: str | Path, session_id: str | None = None) -> Path:
    """A new or existing per-session upload folder under ``root`` (``session_id`` is sanitised)."""
    sid = _SAFE.sub("", session_id or uuid.uuid4().hex)[:64] or uuid.uuid4().hex
    folder = Path(root) / sid
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_upload(folder: Path, name: str, data: bytes, max_bytes: int, suffixes: tuple[str, ...]) -> Path:
    """Write one uploaded file into ``folder`` and return its path.

    Raises:
        UploadError: too large, a suffix not in ``suffixes``, or an unusable name.
    """
    clean = safe_name(name)
    if not clean.lower().endswith(suffixes):
        raise UploadError(f"{clean}: expected a file ending in {', '.join(suffixes)}")
    if len(data) > max_bytes:
        raise UploadError(f"{clean} is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    path = folder / clean
    if path.resolve().parent != folder.resolve():  # belt and braces: safe_name allows no separators
        raise UploadError(f"{clean}: not a plain file name")
    tmp = path.with_name(f".{clean}.part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def check_raster(path: Path) -> tuple[int, list[str | None]]:
    """(band count, band descriptions) of a raster GDAL can open.

    Raises:
        UploadError: the file is not a raster GDAL can read.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            if src.count < 1:
                raise UploadError(f"{path.name} holds no raster band")
            if src.crs is None:
                raise UploadError(f"{path.name} has no coordinate reference system (a georeferenced "
                                  "raster is needed; an L4S .h5 patch goes in the patch upload)")
            return src.count, list(src.descriptions)
    except RasterioIOError:
        raise UploadError(f"{path.name} is not a raster GDAL can read (corrupt, or not an image)") from None


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


UPLOAD_KEEP_S = 2 * 86400.0  # a session's uploads are removed this long after their last change


def prune_sessions(root: str | Path, keep_s: float = UPLOAD_KEEP_S, now: float | None = None) -> list[Path]:
    """Remove the session folders under ``root`` that nothing touched for ``keep_s`` seconds (runs
    scanned from them keep their own outputs; their manifests keep the path they read). Returns
    the removed folders."""
    import time

    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        try:
            newest = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.rglob("*"))])
        except OSError:
            continue
        if now - newest > keep_s:
            remove_folder(folder)
            removed.append(folder)
    return removed
