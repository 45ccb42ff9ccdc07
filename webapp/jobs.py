"""Scans started from the web app: each one is the ``landslide scan`` command in a child process.

The app never runs a second code path: a job is exactly the CLI (``python -m flows.cli scan ...
--json``), so it runs as the same Prefect flow when a Prefect server is configured
(``PREFECT_API_URL``: the compose stack) and as the same steps in-process otherwise, refuses the same
mistakes with the same one-line ``error:`` message, and writes the same run folder. The page polls
the job's files, so it stays responsive while the scan works and survives a browser reload.

A job's folder (``JOBS_DIR/<job_id>/``) holds ``argv.json`` (the command), ``stderr.log`` (the
scan's log lines and progress bars, as a terminal would show them), ``result.json`` (the scan's
``--json`` summary) and ``returncode`` (written when the process ended).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

# (pattern in a log line, stage shown to the user), in pipeline order; the last one seen wins
STAGES: tuple[tuple[str, str], ...] = (
    (r"^scan \S+: ", "loading the detector and planning"),
    (r"resuming the interrupted run", "resuming an interrupted run"),
    (r"tasks\.raster\.terrain|tasks\.sources\.", "reading the scene and the DEM"),
    (r"^align:|tasks\.raster\.align", "aligning the bands on the grid"),
    (r"^blocks:|inference:", "segmenting"),
    (r"tasks\.vector\.vectorize", "drawing polygons"),
    (r"tasks\.raster\.quicklook|tasks\.run\.report", "writing the quicklook and the report"),
    (r"landslide - run \S+:", "published"),
)
_PROGRESS = re.compile(r"^(?P<name>[\w -]+):\s+(?P<pct>\d+)%\|")


@dataclass(frozen=True)
class JobState:
    job_id: str
    status: str  # running, succeeded, failed
    stage: str
    progress: tuple[str, int] | None  # (bar name, percent) of the latest progress bar
    error: str | None  # the scan's one-line error, without the "error: " prefix
    result: dict | None  # the scan's --json summary
    out: str
    log_tail: list[str]


def _lines(text: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def stage_of(lines: list[str]) -> str:
    """The pipeline stage the scan's log lines have reached (pure)."""
    stage = "starting"
    for line in lines:
        for pattern, name in STAGES:
            if re.search(pattern, line):
                stage = name
    return stage


def progress_of(lines: list[str]) -> tuple[str, int] | None:
    """(bar name, percent) of the last progress bar update in the log (pure)."""
    for line in reversed(lines):
        m = _PROGRESS.match(line.strip())
        if m:
            return m["name"].strip(), int(m["pct"])
    return None


def error_of(lines: list[str]) -> str | None:
    """The scan's ``error: ...`` line, as the CLI printed it (pure)."""
    for line in reversed(lines):
        if line.startswith("error: "):
            return line.removeprefix("error: ").strip()
    return None


class JobStore:
    """Scan jobs under one folder; safe to use from Streamlit's script threads."""

    def __init__(self, root: str | Path, python: str | None = None):
        self.root = Path(root)
        self.python = python or sys.executable
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def start(self, scan_args: list[str], out: str | Path, env: dict[str, str] | None = None) -> str:
        """Start ``landslide scan SCAN_ARGS --out OUT --json`` and return the job id."""
        job_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        folder = self.root / job_id
        folder.mkdir(parents=True)
        argv = [self.python, "-m", "flows.cli", "scan", *scan_args, "--out", str(out), "--json"]
        (folder / "argv.json").write_text(json.dumps({"argv": argv, "out": str(out)}, indent=2))
        stderr = open(folder / "stderr.log", "wb")
        stdout = open(folder / "result.json.part", "wb")
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        stderr.close()
        stdout.close()
        with self._lock:
            self._procs[job_id] = proc
        threading.Thread(target=self._wait, args=(job_id, proc), daemon=True).start()
        return job_id

    def _wait(self, job_id: str, proc: subprocess.Popen) -> None:
        rc = proc.wait()
        folder = self.root / job_id
        part = folder / "result.json.part"
        if rc == 0 and part.exists():
            os.replace(part, folder / "result.json")
        (folder / "returncode").write_text(str(rc))

    def jobs(self) -> list[str]:
        """Job ids, newest first."""
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if (p / "argv.json").exists()), reverse=True)

    def state(self, job_id: str) -> JobState:
        folder = self.root / job_id
        out = json.loads((folder / "argv.json").read_text())["out"]
        try:
            text = (folder / "stderr.log").read_text(errors="replace")
        except OSError:
            text = ""
        lines = _lines(text)
        rc_path = folder / "returncode"
        if rc_path.exists():
            rc = int(rc_path.read_text().strip() or 1)
            status = "succeeded" if rc == 0 else "failed"
        else:
            with self._lock:
                proc = self._procs.get(job_id)
            # a job of an earlier app process: its child went on alone; without our Popen we
            # know only whether the run got published or its log still moves
            if proc is not None:
                status, rc = "running", None
            elif (Path(out) / "manifest.json").exists():
                status, rc = "succeeded", 0
            else:
                status, rc = ("running", None) if _alive_log(folder) else ("failed", None)
        result = None
        if status == "succeeded" and (folder / "result.json").exists():
            try:
                result = json.loads((folder / "result.json").read_text())
            except ValueError:
                result = None
        error = error_of(lines)
        if status == "failed" and error is None:
            error = ("the scan stopped without a message (exit status "
                     f"{rc if rc is not None else 'unknown: the app was restarted while it ran'})")
        return JobState(job_id=job_id, status=status, stage=stage_of(lines), progress=progress_of(lines),
                        error=error, result=result, out=out, log_tail=lines[-12:])

    def cancel(self, job_id: str) -> bool:
        """Interrupt a running scan as Ctrl-C would (it cleans its staging and exits 130)."""
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is None or proc.poll() is not None:
            return False
        import signal

        proc.send_signal(signal.SIGINT)
        return True


def _alive_log(folder: Path, recent_s: float = 120.0) -> bool:
    """Whether the job's log changed in the last ``recent_s`` seconds."""
    import time

    try:
        return time.time() - (folder / "stderr.log").stat().st_mtime < recent_s
    except OSError:
        return False
