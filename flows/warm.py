"""A warm process for one-off scans: the imports are done once, and each scan is a fork of it.

A fresh ``landslide scan`` spends about 6 s importing torch, segmentation-models-pytorch, dask,
xarray and matplotlib before it reads a pixel (``python -m benchmarks.cli_latency --scan``). So a
scan starts, once it has finished, a warm process in the background
(``python -m flows.warm_server``). It imports all that once and waits on a Unix socket. The next
``landslide scan`` connects, with the same Python, the same environment and the same code. It hands
over its arguments, its working directory and its stdin/stdout/stderr, and the warm process forks.

The child runs exactly ``flows.cli.main(argv)``, writing straight to the caller's terminal. Its
exit status goes back to the caller, which exits with it. The caller forwards SIGINT, SIGTERM and
SIGHUP (Ctrl-C, a closed terminal) to the child, and a caller that dies takes its child down.
Nothing but the start-up changes: same code, same outputs. The manifest's
``execution.warm_process`` names the warm process a run was forked from (null for a run in its own
process).

- The warm process is matched by a key: the interpreter, ``sys.path``, the environment (except
  ``PWD``-like variables) and every source file's size and mtime. A change of any of them means a new
  warm process; the old one is unused and exits when idle.
- It exits after ``LANDSLIDE_WARM_IDLE_S`` seconds without a scan (default 900).
- ``LANDSLIDE_WARM=0`` turns all of this off; the test suite does that, except for the tests of
  this module.
- Sockets live in ``$LANDSLIDE_WARM_DIR`` (default ``/tmp/landslide-warm-<uid>``, mode 0700), one
  per key. ``landslide warm`` shows the warm processes; ``landslide warm --stop`` stops them.
- Where no warm process answers (the first scan, after a change, while one is still importing),
  the scan runs in its own process as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("flows", "tasks", "models")
VOLATILE_ENV = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "PYTEST_CURRENT_TEST", "LANDSLIDE_CLI_PID",
                          "LANDSLIDE_WARM_FORK"})
FORK_MARK = "LANDSLIDE_WARM_FORK"  # set in a forked scan: "<warm pid> <warm start time>"
DEFAULT_IDLE_S = 900.0
# what a scan imports that is slow to import; a warm process imports these before it listens
WARM_IMPORTS = ("flows.interrupts", "flows.logs", "tasks.run.plan", "tasks.run.pipeline",
                "tasks.run.report", "models.detectors", "segmentation_models_pytorch", "matplotlib.pyplot")


def enabled() -> bool:
    return os.environ.get("LANDSLIDE_WARM", "1").strip().lower() not in ("0", "false", "no", "off")


def in_warm_fork() -> bool:
    return FORK_MARK in os.environ


def socket_dir() -> Path:
    return Path(os.environ.get("LANDSLIDE_WARM_DIR") or f"/tmp/landslide-warm-{os.getuid()}")


def _private_dir() -> Path | None:
    """The socket folder, created 0700; None if it is not this user's alone (then no warm process)."""
    folder = socket_dir()
    try:
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700, parents=True)
        st = folder.stat()
    except OSError:  # not writable, say: no warm process, the scan runs as before
        return None
    return folder if st.st_uid == os.getuid() and not st.st_mode & 0o077 else None


_AT_START: dict = {}


def remember_start() -> None:
    """Note this process's environment as the command starts, before anything imported changes
    ``os.environ``: the warm process it may start is matched on that."""
    _AT_START.setdefault("env", dict(os.environ))


def key(env: dict | None = None) -> str:
    """What a warm process must share with a scan to run it (see the module docstring)."""
    h = hashlib.sha256()
    env = sorted((k, v) for k, v in (os.environ if env is None else env).items() if k not in VOLATILE_ENV)
    h.update(json.dumps([sys.executable, sys.version, sys.path, env]).encode())
    for name in CODE_DIRS:
        for path in sorted((REPO / name).rglob("*.py")):
            st = path.stat()
            h.update(f"{path.relative_to(REPO)} {st.st_size} {st.st_mtime_ns}\n".encode())
    for entry in sys.path:  # installing or removing a package changes its site-packages folder
        if entry.endswith(("site-packages", "dist-packages")):
            with contextlib.suppress(OSError):
                h.update(f"{entry} {os.stat(entry).st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def socket_path() -> Path:
    remember_start()
    if "key" not in _AT_START:
        _AT_START["key"] = key(_AT_START["env"])
    return socket_dir() / f"{_AT_START['key']}.sock"


# --- messages: 4-byte length + JSON -----------------------------------------------------------

def _send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    data = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.sendall(data)


def _recv_exact(conn: socket.socket, n: int, fds: list[int] | None = None) -> bytes:
    buf = b""
    while len(buf) < n:
        if fds is not None and not buf:
            chunk, got, _, _ = socket.recv_fds(conn, n - len(buf), 3)
            fds.extend(got)
        else:
            chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _recv(conn: socket.socket, fds: list[int] | None = None) -> dict:
    head = _recv_exact(conn, 4, fds)
    return json.loads(_recv_exact(conn, struct.unpack("!I", head)[0]))


# --- the caller's side ------------------------------------------------------------------------

def run_in_warm_process(argv: list[str]) -> int | None:
    """Run ``landslide <argv>`` in a fork of the warm process; its exit status, or None when no
    warm process for this key answers (then the caller runs the command itself)."""
    if not enabled() or in_warm_fork():
        return None
    if _private_dir() is None:
        return None
    path = socket_path()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(10)  # for the hand-over; the scan itself may take hours
        conn.connect(str(path))
        if _peer_uid(conn) != os.getuid():  # never hand the terminal to another user's process
            raise ConnectionError("not this user's warm process")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _send(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}, [0, 1, 2])
        child = int(_recv(conn)["pid"])
        conn.settimeout(None)
    except (OSError, ConnectionError, ValueError, KeyError):
        conn.close()
        return None
    forwarded: list[int] = []

    def forward(signum, frame):  # a closed terminal (SIGHUP) stops the scan as SIGTERM does: cleanly
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM if signum == signal.SIGHUP else signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return int(_recv(conn)["exit"])
            except InterruptedError:
                continue
            except (ConnectionError, OSError, ValueError, KeyError):
                # the warm process went away without a status; after a forwarded Ctrl-C the child
                # has said what it kept and exited 130 itself
                if forwarded:
                    return 130
                print("error: the warm scan process ended without a result (nothing was published "
                      "by it); run the same command again, or set LANDSLIDE_WARM=0", file=sys.stderr)
                return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        conn.close()


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def start_in_background() -> None:
    """Start a warm process for this key unless one answers; returns at once. Best effort: a
    failure to start one (a full disk, say) never fails the scan that asked."""
    if not enabled() or in_warm_fork() or _private_dir() is None:
        return
    try:
        path = socket_path()
        if answers(path):
            return
        # the environment the scan started with (not reaped as a scan's child: no LANDSLIDE_CLI_PID)
        env = {k: v for k, v in _AT_START["env"].items() if k != "LANDSLIDE_CLI_PID"}
        with open(socket_dir() / f"{path.stem}.log", "ab") as log:
            subprocess.Popen([sys.executable, "-m", "flows.warm_server", str(path)], cwd=REPO, env=env,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    except OSError as exc:
        import logging

        logging.getLogger("landslide").debug("no warm process started: %s", exc)


def answers(path: Path) -> bool:
    """Whether a warm process listens on ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        with contextlib.suppress(OSError):
            _send(probe, {"ping": True})
        return True


def running() -> list[dict]:
    """The warm processes answering in the socket folder (any key): pid, key, start time, scans."""
    found = []
    for path in sorted(socket_dir().glob("*.sock")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            try:
                conn.settimeout(2)
                conn.connect(str(path))
                _send(conn, {"status": True})
                found.append({**_recv(conn), "socket": str(path), "current": path == socket_path()})
            except (OSError, ConnectionError, ValueError):
                continue
    return found


def stop_all() -> int:
    """Stop every warm process of this user; returns how many."""
    stopped = 0
    for info in running():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info["pid"]), signal.SIGTERM)
            stopped += 1
    return stopped


# --- the warm process -------------------------------------------------------------------------

def serve(path: Path, idle_s: float, run_command: Callable[[list[str]], int]) -> int:
    """Import, listen on ``path``, fork one child per scan (which runs ``run_command(argv)``: the
    CLI's ``main``), exit after ``idle_s`` without one."""
    import importlib
    import threading

    for name in WARM_IMPORTS:
        importlib.import_module(name)
    if threading.active_count() > 1:  # forking a process with Python threads is not safe
        print(f"warm: {threading.active_count()} threads after the imports; not serving", file=sys.stderr)
        return 1
    import torch

    if torch.cuda.is_initialized():  # a CUDA context does not survive a fork
        print("warm: CUDA was initialised by the imports; not serving", file=sys.stderr)
        return 1
    import fcntl

    lock = open(path.with_suffix(".lock"), "w")  # one warm process per key  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another one got there first
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a warm process that died
    listener.bind(str(path))
    listener.listen(8)
    started = time.time()
    print(f"warm: pid {os.getpid()} serving {path} (idle exit after {idle_s:g} s)", file=sys.stderr,
          flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    # a finished scan wakes the loop at once (its status goes back to the caller without delay)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    sel.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    scans, last_active = 0, time.monotonic()
    try:
        while not stop:
            for sel_key, _ in sel.select(timeout=0.5):
                if sel_key.fileobj is wake_r:
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                elif sel_key.fileobj is listener:
                    conn, _ = listener.accept()
                    pid = _start_scan(conn, (listener, wake_r, wake_w), started, children, scans,
                                      run_command)
                    if pid:
                        sel.register(conn, selectors.EVENT_READ, pid)
                        scans += 1
                else:  # the caller closed its end: it is gone, so its scan stops
                    pid = sel_key.data
                    sel.unregister(sel_key.fileobj)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            for pid, code in _reap():
                conn = children.pop(pid, None)
                if conn is not None:
                    with contextlib.suppress(OSError, KeyError, ValueError):
                        sel.unregister(conn)
                    with contextlib.suppress(OSError):
                        _send(conn, {"exit": code})
                    conn.close()
            if children:
                last_active = time.monotonic()
            elif time.monotonic() - last_active > idle_s:
                print(f"warm: idle for {idle_s:g} s after {scans} scans; exiting", file=sys.stderr)
                break
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # ours: the lock says no other warm process serves this key
        listener.close()
        _stop_children(children)
    return 0


def _stop_children(children: dict[int, socket.socket], timeout_s: float = 15.0) -> None:
    """Stop the scans still running (SIGTERM: each says what it kept and exits 130), and give each
    caller its scan's exit status."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while children and time.monotonic() < deadline:
        for pid, code in _reap():
            conn = children.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    _send(conn, {"exit": code})
                conn.close()
        time.sleep(0.05)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _reap() -> list[tuple[int, int]]:
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, os.waitstatus_to_exitcode(status)))


def _start_scan(conn: socket.socket, own: tuple[socket.socket, ...], started: float,
                children: dict[int, socket.socket], scans: int,
                run_command: Callable[[list[str]], int]) -> int | None:
    """Read one request; answer a ping or a status, or fork the scan's child. Returns its pid.
    ``own``: the warm process's listening socket first, then its other sockets (closed in the child)."""
    listener = own[0]
    fds: list[int] = []
    try:
        conn.settimeout(10)
        request = _recv(conn, fds)
        conn.settimeout(None)
        if request.get("status"):
            _send(conn, {"pid": os.getpid(), "key": Path(listener.getsockname()).stem,
                         "started": started, "scans": scans, "running": len(children)})
        if "argv" not in request or len(fds) != 3:
            raise ValueError("not a scan request")
    except (OSError, ConnectionError, ValueError):
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    pid = os.fork()
    if pid == 0:  # the scan
        try:
            signal.set_wakeup_fd(-1)
            for fd_owner in (*own, *children.values()):
                fd_owner.close()
            _become_the_scan(request, fds, started, run_command)
        finally:
            os._exit(1)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    with contextlib.suppress(OSError):
        _send(conn, {"pid": pid})
    return pid


def _become_the_scan(request: dict, fds: list[int], started: float,
                     run_command: Callable[[list[str]], int]) -> None:
    """In the forked child: take the caller's terminal, folder and environment; run the command."""
    import io
    import random

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    for fd, name in ((1, "stdout"), (2, "stderr")):
        setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                            errors="backslashreplace", line_buffering=True,
                                            write_through=(fd == 2)))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[FORK_MARK] = f"{os.getppid()} {started:.0f}"
    random.seed()
    sys.argv = ["landslide", *request["argv"]]
    code = 1
    try:
        code = run_command(request["argv"])
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the CLI boundary of this process
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code or 0)


def warm_process_record() -> dict | None:
    """For the manifest: the warm process this scan was forked from (None: its own process)."""
    mark = os.environ.get(FORK_MARK)
    if not mark:
        return None
    pid, started = mark.split()
    return {"pid": int(pid), "started": float(started)}
