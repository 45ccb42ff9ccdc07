"""Read ahead: an iterator's items produced by a background thread into a bounded queue.

The GPU path reads the next batches of patches (disk, decompression, padding: numpy and GDAL
release the GIL) while the device runs the current one. ``depth`` bounds the items held, so
memory stays bounded. ``depth`` 0 returns the iterable itself: the CPU path runs as before.

An exception in the producer is raised again in the consumer at the point where the item would
have come; a consumer that stops early (an exception, ``break``, ``close()``) stops the producer
before the next item, and the thread is joined before the generator finishes.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable[T], depth: int) -> Iterable[T]:
    """``items`` read up to ``depth`` ahead by a background thread (``depth`` 0: ``items`` itself).

    Raises:
        ValueError: ``depth`` < 0.
    """
    if depth < 0:
        raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    if depth == 0:
        return items
    return _prefetched(items, depth)


def _prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        """Put unless the consumer has gone; False when it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Raised(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
