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

from tasks.core.errors import InputError

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


def uncompressed(profile: Mapping[str, Any]) -> dict[str, Any]:
    """``profile`` without compression (nor its predictor and level)."""
    return {k: v for k, v in profile.items() if k not in ("compress", "zstd_level", "predictor")}


def compressed_like(profile: Mapping[str, Any], stack: Any) -> dict[str, Any]:
    """``profile`` for a work raster derived from the open ``stack``: uncompressed when the stack
    was written uncompressed (the disk has room, ``tasks.raster.align.compress_stack``)."""
    return uncompressed(profile) if stack.compression is None else dict(profile)


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


class FolderBusyError(InputError):
    """Another process holds a folder's lock."""


_HELD_LOCKS: dict[Path, int] = {}  # lock files this process holds -> nesting depth


def _lock_holder(text: str) -> dict[str, str]:
    """``pid 123 host h since t`` -> {"pid": "123", "host": "h", "since": "t"}."""
    words = text.split()
    return {k: v for k, v in zip(words[::2], words[1::2]) if k in ("pid", "host", "since")}


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another process"
    except FileNotFoundError:
        return "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def folder_lock(path: str | Path, *, busy: str, wait_s: float | None = 0.0, poll_s: float = 0.5,
                on_wait=None, reentrant: bool = False, remove: bool = False,
                busy_error: type[FolderBusyError] | None = None) -> Iterator[Path]:
    """Hold the lock file ``path`` exclusively (``flock``) for the block.

    The file names the holder (``pid N host H since T``). The kernel releases an ``flock`` when its
    process dies, so a lock left by a killed run is free; taking it over is logged with the dead
    holder's pid and host.

    Args:
        path: the lock file (created with its folder).
        busy: what the refusal says is going on (``"another scan is writing into --out X"``).
        wait_s: seconds to wait for another holder; None waits as long as it takes.
        on_wait: called once with the holder's text when the lock is busy and we wait.
        reentrant: a process that holds the lock already (any thread) enters again (the scan CLI
            locks its run folder, then the flow it starts locks it too).
        remove: delete the lock file on a clean release (a waiter that locked the deleted file
            notices, because the path no longer leads to the file it locked, and tries again).
        busy_error: the ``FolderBusyError`` subclass to raise (``RegionBusyError`` for regions).

    Raises:
        FolderBusyError (or ``busy_error``): still held by another process after ``wait_s`` (the
            holder is named).
    """
    import fcntl
    import logging
    import socket
    import time

    path = Path(path).resolve()
    if reentrant and path in _HELD_LOCKS:  # this process holds it already
        _HELD_LOCKS[path] += 1
        try:
            yield path
        finally:
            _HELD_LOCKS[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    acquired = False
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    break
                # the holder deleted the file (maybe its folder too) as it left: lock a new one
                os.close(fd)
                fd = -1
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                continue
            except BlockingIOError:
                holder = _read_holder(path)
                if deadline is not None and time.monotonic() >= deadline:
                    how = f" (waited {wait_s:g} s)" if wait_s else ""
                    raise (busy_error or FolderBusyError)(
                        f"{busy}: {path.parent} is locked by {holder}{how}") from None
                if not waited and on_wait is not None:
                    on_wait(holder)
                waited = True
                time.sleep(poll_s)
        old = _lock_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        host = socket.gethostname()
        if old.get("pid"):
            same_host = old.get("host", host) == host
            gone = same_host and old["pid"].isdigit() and not _pid_alive(int(old["pid"]))
            if gone:
                logging.getLogger(__name__).warning(
                    "took over the lock %s left by pid %s on %s (that process is no longer running)",
                    path, old["pid"], old.get("host", host))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} host {host} since {utc_now_iso()}\n".encode(), 0)
        _HELD_LOCKS[path] = 1
        acquired = True
        yield path
    finally:
        if acquired:
            del _HELD_LOCKS[path]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # a clean release leaves no holder behind
                if remove:
                    path.unlink()
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the flock
