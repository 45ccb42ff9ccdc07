"""A threaded static HTTP file server with byte ranges and scripted faults, bound to 127.0.0.1.

Serves a folder the way object stores serve COGs: ``Accept-Ranges: bytes``, ``206 Partial Content``
with ``Content-Range`` for ``Range: bytes=a-b`` / ``a-`` / ``-n``, ``416`` for unsatisfiable ranges,
and ``HEAD``. GDAL's ``/vsicurl/`` (rasterio over http) reads COG windows through it.

Faults are scripted with a :class:`FaultControl`: "the next N matching requests answer 429 / 500 /
a truncated body / after a delay". Every request is logged (:class:`RequestRecord`) so tests can
assert what the client really did (e.g. only ranged reads, one 429 served).

Run by hand::

    python -m devservers.static_files --dir /some/folder --port 8082
"""

from __future__ import annotations

import argparse
import http.server
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

LOGGER = logging.getLogger(__name__)

FAULT_MODES = ("429", "500", "401", "403", "truncate", "delay")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Fault:
    """One scripted fault.

    Attributes:
        mode: "429" (with Retry-After), "500", "401", "403", "truncate" (Content-Length promises the full
            body, half of it is sent, then the connection closes) or "delay" (sleep, then answer
            normally).
        retry_after: value of the Retry-After header for "429" (seconds for plain HTTP clients;
            the Sentinel Hub server sends milliseconds, as the real service and its client do).
        delay_s: sleep before answering for "delay".
        path_prefix: only requests whose path starts with this are affected ("" = all).
    """

    mode: str
    retry_after: str = "1"
    delay_s: float = 2.0
    path_prefix: str = ""


@dataclass
class RequestRecord:
    """What one request asked and what the server answered."""

    method: str
    path: str
    status: int
    range: str | None = None
    bytes_sent: int = 0
    fault: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class FaultControl:
    """Thread-safe script of faults plus a request log, shared by a server and a test.

    ``set("500", count=2)`` makes the next two matching requests fail; ``clear()`` removes all
    pending faults. ``records`` is the log of served requests (``clear_log()`` empties it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[list] = []  # [Fault, remaining count]
        self.records: list[RequestRecord] = []

    def set(
        self,
        mode: str,
        count: int = 1,
        *,
        retry_after: str | int | float = "1",
        delay_s: float = 2.0,
        path_prefix: str = "",
    ) -> None:
        """Script ``count`` faults of ``mode`` for the next matching requests (queued after any pending)."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; valid: {', '.join(FAULT_MODES)}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        fault = Fault(mode, str(retry_after), float(delay_s), path_prefix)
        with self._lock:
            self._pending.append([fault, count])

    def clear(self) -> None:
        """Drop all pending faults."""
        with self._lock:
            self._pending.clear()

    def clear_log(self) -> None:
        with self._lock:
            self.records.clear()

    def take(self, path: str, method: str = "GET") -> Fault | None:
        """Consume and return the next fault that applies to ``path``, or None.

        A "truncate" fault waits for a request with a body (not HEAD).
        """
        with self._lock:
            for entry in self._pending:
                fault, remaining = entry
                if fault.mode == "truncate" and method == "HEAD":
                    continue
                if path.startswith(fault.path_prefix):
                    entry[1] = remaining - 1
                    if entry[1] <= 0:
                        self._pending.remove(entry)
                    return fault
        return None

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(n for _, n in self._pending)

    def log(self, record: RequestRecord) -> None:
        with self._lock:
            self.records.append(record)

    def statuses(self, path_prefix: str = "") -> list[int]:
        """Statuses served so far for paths starting with ``path_prefix``, in order."""
        with self._lock:
            return [r.status for r in self.records if r.path.startswith(path_prefix)]


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``Range: bytes=...`` header into an inclusive (start, end) or None if unsatisfiable.

    Raises:
        ValueError: the header is not a single bytes range (the caller answers with the full body).
    """
    match = _RANGE_RE.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise ValueError(f"unsupported Range header {header!r}")
    first, last = match.groups()
    if first == "":  # suffix range: the last n bytes
        n = int(last)
        if n == 0:
            return None
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        return None
    return start, end


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"  # keep-alive, as GDAL/curl expect from object stores

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        LOGGER.debug("static %s - " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _record(self, status: int, sent: int = 0, fault: str | None = None) -> None:
        self.server.faults.log(
            RequestRecord(self.command, self.path, status, self.headers.get("Range"), sent, fault)
        )

    def _plain(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        fault = self.server.faults.take(path, self.command)
        if fault is not None and fault.mode == "delay":
            time.sleep(fault.delay_s)
        elif fault is not None and fault.mode in ("429", "500", "401", "403"):
            status = int(fault.mode)
            extra = {"Retry-After": fault.retry_after} if status == 429 else {}
            self._record(status, fault=fault.mode)
            self._plain(status, f"scripted fault {status}\n".encode(), extra)
            return

        target = self.server.resolve(path)
        if target is None:
            self._record(404)
            self._plain(404, b"not found\n")
            return
        size = target.stat().st_size
        status, start, end = 200, 0, size - 1
        range_header = self.headers.get("Range")
        if range_header:
            try:
                byte_range = parse_range(range_header, size)
            except ValueError:
                byte_range = (0, size - 1)  # multi-range etc.: RFC 9110 allows the full body
            else:
                if byte_range is None:
                    self._record(416)
                    self._plain(416, b"range not satisfiable\n", {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
            start, end = byte_range
        length = end - start + 1
        truncate = fault is not None and fault.mode == "truncate"
        data = b""
        if not head:
            with target.open("rb") as fh:
                fh.seek(start)
                data = fh.read(length)
            if truncate:
                data = data[: len(data) // 2]
        self._record(status, len(data), fault.mode if fault else None)

        self.send_response(status)
        self.send_header("Content-Type", "image/tiff" if target.suffix in (".tif", ".tiff") else
                         "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        self.send_header("Last-Modified", self.date_time_string(int(target.stat().st_mtime)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if truncate:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path, faults: FaultControl) -> None:
        super().__init__(address, _Handler)
        self.root = root.resolve()
        self.faults = faults

    def resolve(self, url_path: str) -> Path | None:
        """Map a URL path to a file under root; None for missing files or escapes outside root."""
        from urllib.parse import unquote

        candidate = (self.root / unquote(url_path).lstrip("/")).resolve()
        if self.root not in candidate.parents and candidate != self.root:
            return None
        return candidate if candidate.is_file() else None


class BackgroundServer:
    """Runs an ``http.server`` instance (``self._server``) in a daemon thread on 127.0.0.1.

    Subclasses build ``self._server`` in ``__init__``; this class starts, stops and acts as a
    context manager.
    """

    _server: http.server.HTTPServer
    _thread: threading.Thread | None = None
    thread_name = "test-server"

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_until_interrupted(stop: threading.Event | None = None) -> None:
    """Block the calling thread (servers run in threads) until Ctrl-C or until ``stop`` is set."""
    stop = stop or threading.Event()
    try:
        while not stop.wait(0.5):  # short waits: Ctrl-C is only seen between them
            pass
    except KeyboardInterrupt:
        pass


class StaticFileServer(BackgroundServer):
    """Serve ``root`` over HTTP on 127.0.0.1 in a background thread.

    Use as a context manager or call ``start()`` / ``stop()``. ``url`` is ``http://127.0.0.1:PORT``;
    ``faults`` is the :class:`FaultControl` (also the request log).
    """

    def __init__(self, root: str | os.PathLike, port: int = 0, faults: FaultControl | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a folder to serve")
        self.faults = faults or FaultControl()
        self._server = _Server(("127.0.0.1", port), self.root, self.faults)
        self.thread_name = "static-files"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def href(self, path: str | os.PathLike) -> str:
        """URL of a file under root (absolute path or relative to root)."""
        rel = Path(path).resolve().relative_to(self.root.resolve()) if Path(path).is_absolute() else Path(path)
        return f"{self.url}/{rel.as_posix()}"



def ranged_statuses(records: Iterable[RequestRecord], path: str) -> list[int]:
    """Statuses of GET requests for ``path`` (helper for assertions)."""
    return [r.status for r in records if r.method == "GET" and r.path == path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="folder to serve")
    parser.add_argument("--port", type=int, default=8082)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with StaticFileServer(args.dir, args.port) as server:
        print(f"serving {args.dir} at {server.url} (Ctrl-C to stop)", flush=True)
        serve_until_interrupted()


if __name__ == "__main__":
    main()
