"""Per-region state of scheduled scans: which scenes were processed with which model, which runs
are still to be merged into the inventory, and a lock so only one run of a region works at a time.

``<state_dir>/<region>/`` holds

- ``state.sqlite``: table ``scenes`` (scene_id, acquired, model, run_id, processed_at; one row per
  scene and model) and table ``runs`` (run_id, status ``running`` -> ``published`` ->
  ``merged``, or ``failed``; run folder, scenes, model, timestamps, message);
- ``inventory.gpkg`` (:mod:`tasks.inventory.merge`);
- ``lock``: an ``flock`` held for the whole run.

A scene counts as processed only once its run is merged into the inventory: the scenes rows and
the run's ``merged`` status are written in one SQLite transaction after the inventory file was
replaced. A run killed after publishing its folder but before that is found by
:func:`unmerged_runs` and merged by the next run (merging is idempotent by run id).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import InputError
from tasks.core.files import FolderBusyError, folder_lock, utc_now_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS scenes (
    scene_id TEXT NOT NULL, acquired TEXT, model TEXT NOT NULL, run_id TEXT NOT NULL,
    processed_at TEXT NOT NULL, PRIMARY KEY (scene_id, model));
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, run_dir TEXT, scenes TEXT NOT NULL,
    model TEXT, started_at TEXT NOT NULL, updated_at TEXT NOT NULL, message TEXT);
"""


class RegionBusyError(FolderBusyError):
    """Another run of the same region holds its lock."""


def region_dir(state_dir: str | Path, region: str) -> Path:
    if not region or "/" in region or region.startswith("."):
        raise InputError(f"region name {region!r} cannot name a folder")
    return Path(state_dir) / region


@contextlib.contextmanager
def region_lock(folder: str | Path, wait_s: float = 0.0, poll_s: float = 0.5):
    """Hold ``folder/lock`` exclusively (:func:`tasks.core.files.folder_lock`); wait up to
    ``wait_s`` seconds for another holder.

    Raises:
        RegionBusyError: still held by another process after ``wait_s``.
    """
    with folder_lock(Path(folder) / "lock", wait_s=wait_s, poll_s=poll_s, busy_error=RegionBusyError,
                     busy="another run of this region is in progress; try again when it has "
                          "finished") as path:
        yield path


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str
    run_dir: str | None
    scenes: list[str]
    model: str | None


class RegionState:
    """The SQLite ledger of one region (open it while holding :func:`region_lock`)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "state.sqlite"
        self.db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "RegionState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def processed(self, model: str) -> set[str]:
        """Scene ids already merged with this model."""
        rows = self.db.execute("SELECT scene_id FROM scenes WHERE model = ?", (model,))
        return {r[0] for r in rows}

    def last_acquired(self, model: str) -> str | None:
        row = self.db.execute("SELECT max(acquired) FROM scenes WHERE model = ?", (model,)).fetchone()
        return row[0]

    def start_run(self, run_id: str, scenes: list[str], model: str, run_dir: str) -> None:
        now = utc_now_iso()
        self.db.execute("INSERT INTO runs (run_id, status, run_dir, scenes, model, started_at, "
                        "updated_at) VALUES (?, 'running', ?, ?, ?, ?, ?)",
                        (run_id, run_dir, json.dumps(scenes), model, now, now))

    def set_status(self, run_id: str, status: str, message: str = "") -> None:
        if status not in ("running", "published", "merged", "failed"):
            raise ValueError(f"unknown run status {status!r}")
        self.db.execute("UPDATE runs SET status = ?, updated_at = ?, message = ? WHERE run_id = ?",
                        (status, utc_now_iso(), message, run_id))

    def forget(self, run_id: str) -> None:
        """Drop a run that never published: its scenes stay unprocessed."""
        self.db.execute("DELETE FROM runs WHERE run_id = ? AND status = 'running'", (run_id,))

    def mark_merged(self, run_id: str, scenes: list[tuple[str, str | None]], model: str) -> None:
        """In one transaction: the run is merged and its scenes count as processed."""
        now = utc_now_iso()
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO scenes (scene_id, acquired, model, run_id, processed_at) "
                "VALUES (?, ?, ?, ?, ?)", [(s, a, model, run_id, now) for s, a in scenes])
            self.db.execute("UPDATE runs SET status = 'merged', updated_at = ? WHERE run_id = ?",
                            (now, run_id))

    def unmerged_runs(self) -> list[RunRecord]:
        """Runs whose folder was published but whose merge into the inventory did not finish."""
        rows = self.db.execute("SELECT run_id, status, run_dir, scenes, model FROM runs "
                               "WHERE status = 'published' ORDER BY started_at")
        return [RunRecord(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def runs(self) -> list[RunRecord]:
        rows = self.db.execute("SELECT run_id, status, run_dir, scenes, model FROM runs "
                               "ORDER BY started_at, run_id")
        return [RunRecord(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    @contextlib.contextmanager
    def _transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
