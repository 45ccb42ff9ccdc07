"""Ctrl-C during a scan, and the Prefect servers a killed scan leaves behind.

**Ctrl-C.** A terminal sends SIGINT to the whole foreground process group, and Prefect's temporary
API server (a uvicorn child of the CLI) is in it: the server stops at once, and Prefect's engine then
spends a minute or more retrying to report the crash to it before the CLI exits 1 with a connection
error. :func:`exit_cleanly_on_interrupt` replaces that: on SIGINT (or SIGTERM) it says in one line
what was kept and how to resume, removes the staging folder, stops the processes this scan started
(the server, local Dask workers), and exits 130 within seconds. Finished blocks stay in
``<out>/.work``: the same command resumes them. A run that was already published is reported as
complete.

**kill -9.** A killed CLI cannot clean up, and its server keeps running (re-parented to init). Each
CLI process marks its environment with ``LANDSLIDE_CLI_PID`` before Prefect starts, so its children
inherit the mark; :func:`reap_orphaned_servers` (run when a scan starts) stops the processes whose
marking CLI is gone, with a log line each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from tasks.run.outputs import FINAL_NAMES, LOCK, STAGING, WORK, discard_partial

log = logging.getLogger("landslide")

MARK = "LANDSLIDE_CLI_PID"
EXIT_INTERRUPTED = 130


def mark_process() -> None:
    """Mark this process's environment (inherited by every child it starts) as a landslide CLI's."""
    os.environ[MARK] = str(os.getpid())


def _children():
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def stop_children(timeout_s: float = 3.0) -> int:
    """Terminate the processes this one started (then kill what is left, and wait for it), looking
    again until none is left: a child may start another while the first ones stop. Returns how
    many were stopped."""
    import time

    import psutil

    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    while kids := [kid for kid in _children() if kid.pid not in seen]:
        seen.update(kid.pid for kid in kids)
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                kid.terminate()
        _, alive = psutil.wait_procs(kids, timeout=max(0.1, deadline - time.monotonic()))
        for kid in alive:
            with contextlib.suppress(psutil.Error):
                kid.kill()
        # reap what was killed too: a process exits with this one's os._exit otherwise still a
        # zombie in the terminal's process group until init collects it
        psutil.wait_procs(alive, timeout=2.0)
        if time.monotonic() > deadline + 2.0:
            break
    return len(seen)


def interrupted_message(out: str | Path) -> str:
    """What an interrupt left in ``out``, and how to go on."""
    out = Path(out)
    if all((out / name).exists() for name in FINAL_NAMES) and not (out / STAGING).exists():
        return f"interrupted after the run was published: {out} is complete"
    blocks = len(list((out / WORK / "blocks").glob("b_*.json"))) if (out / WORK / "blocks").is_dir() else 0
    kept = (f"{blocks} finished block{'s' if blocks != 1 else ''} kept in {out / WORK}" if blocks
            else f"the work so far is kept in {out / WORK}" if (out / WORK).exists() else "nothing was kept")
    return (f"error: interrupted; nothing was published ({kept}); run the same command again to "
            "resume, or add --overwrite to start over")


@contextlib.contextmanager
def exit_cleanly_on_interrupt(out: str | Path) -> Iterator[None]:
    """While the block runs, SIGINT/SIGTERM end the process cleanly within seconds (see the module
    docstring); the previous handlers come back afterwards."""
    def on_signal(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        print(interrupted_message(out), file=sys.stderr, flush=True)
        lock = Path(out) / LOCK
        try:  # only the run holding the folder cleans it (a scan waiting with --wait does not)
            ours = lock.read_text().startswith(f"pid {os.getpid()} ")
        except OSError:
            ours = False
        if ours:
            with contextlib.suppress(Exception):
                discard_partial(out)
            with contextlib.suppress(Exception):  # the flock goes with the process; leave no holder named
                lock.unlink()
        with contextlib.suppress(Exception):
            stop_children()
        sys.stderr.flush()
        # not SystemExit: Prefect's engine would spend a minute reporting the crash to its stopped
        # server. The flock on <out>/.lock goes with the process; completion records are atomic.
        os._exit(EXIT_INTERRUPTED)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def reap_orphaned_servers() -> int:
    """Stop processes started by a landslide CLI that no longer runs (a scan killed with kill -9
    leaves its Prefect server behind); returns how many were stopped."""
    import psutil

    stopped = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            owner = proc.environ().get(MARK)
        except (psutil.Error, OSError):
            continue
        if not owner or not owner.isdigit() or psutil.pid_exists(int(owner)):
            continue
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(proc.cmdline()[:3])
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except psutil.TimeoutExpired:
                proc.kill()
            stopped += 1
            log.warning("stopped pid %d (%s), left running by the killed scan pid %s", proc.pid, cmd, owner)
    return stopped
