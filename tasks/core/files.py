"""Files: atomic writes, the work rasters' creation profile and UTC timestamps.

Every file the pipeline writes under a final name is written to a temporary name beside it and
renamed into place (``os.replace`` is atomic on one file system), so a reader never sees half a
file and a crash leaves at most a ``*.tmp`` file behind, never a truncated one under the real name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# Rasters that stay in the work folder (block results, prob / uncertainty / mask before encoding,
# the COGs' tiled staging copies) are read back once or twice and then deleted: lossless ZSTD at
# level 1 (measurements in benchmarks/README.md). The published COGs keep DEFLATE.
WORK_COMPRESSION = {"compress": "zstd", "zstd_level": 1}
WORK_BLOCK_PX = 256  # the work rasters' tile size (px)

_UNSET: Any = object()


def work_raster_profile(base: Mapping[str, Any], *, dtype: str, count: int = 1,
                        nodata: float | None = _UNSET, predictor: int | None = None,
                        **options: Any) -> dict[str, Any]:
    """A tiled (256 px) GTiff creation profile with :data:`WORK_COMPRESSION`, for a work raster.

    ``base`` gives the rest (driver, size, crs, transform; a source's ``profile`` works) and is not
    changed. ``nodata`` replaces the base's when given (``None``: no nodata); ``predictor`` is set
    only when given; ``options`` are further creation options (``interleave``, ``BIGTIFF``).
    """
    profile = {**base, "driver": "GTiff", "count": count, "dtype": dtype, "tiled": True,
               "blockxsize": WORK_BLOCK_PX, "blockysize": WORK_BLOCK_PX, **WORK_COMPRESSION}
    if nodata is not _UNSET:
        profile["nodata"] = nodata
    if predictor is not None:
        profile["predictor"] = predictor
    profile.update(options)
    return profile


@contextlib.contextmanager
def atomic_write(path: str | Path, *, unique: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on an
    exception (in the body or the rename) it is removed and ``path`` is left as it was.

    ``unique``: a hidden temporary name of this process and attempt (``.STEM.PID-RANDOM.tmp.EXT``,
    the extension kept), for files that two processes may write at once (a block a Dask worker
    declared dead is still writing). ``suffix`` ends the temporary name; GDAL picks a driver by
    extension, so a raster's temporary name keeps its extension (``.tmp.tif``). Several nested
    ``atomic_write`` blocks rename their files innermost first.
    """
    path = Path(path)
    if unique:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}{path.suffix}")
    elif suffix.endswith(path.suffix) and path.suffix:
        tmp = path.with_name(path.stem + suffix)
    else:
        tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # the body or the rename failed: no temporary file is left behind
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str, *, unique: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, unique=unique) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, content: Any, *, indent: int | None = 2,
                      unique: bool = False) -> Path:
    """Write ``content`` as JSON to ``path`` atomically (values JSON cannot hold as ``str``)."""
    return atomic_write_text(path, json.dumps(content, indent=indent, default=str), unique=unique)


def utc_now() -> dt.datetime:
    """Now in UTC, whole seconds (what the outputs and cards record)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def utc_now_iso() -> str:
    """:func:`utc_now` as ISO 8601 (``2026-12-03T08:32:14+00:00``)."""
    return utc_now().isoformat()
