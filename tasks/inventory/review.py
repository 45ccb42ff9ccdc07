"""Review decisions on detected landslides, stored in the GeoPackage that holds the polygons.

A reviewer confirms a polygon (a landslide), rejects it (no landslide there) or leaves a note. The
same functions serve a regional inventory (``STATE_DIR/R/inventory.gpkg``, polygons keyed by
``inventory_id``) and a single run's ``landslides.gpkg`` (keyed by ``landslide_id``); the key is
chosen by what the file's ``landslides`` layer holds (``inventory_id`` first: an inventory also
carries the ``landslide_id`` of the latest detection).

What a decision writes:

- on the polygon (layer ``landslides``): ``review_status`` (``unreviewed`` | ``confirmed`` |
  ``rejected``; a note keeps it), ``reviewed_by``, ``reviewed_at`` (UTC, milliseconds, GeoPackage
  datetime text) and ``review_note`` (the latest note given; a decision without one keeps it);
- one row in the attribute table ``reviews`` (no geometry; ``gpkg_contents.data_type =
  'attributes'``), append-only: the key, ``decision``, ``review_status`` after it, ``reviewed_by``,
  ``review_note``, ``reviewed_at``. Its ``fid`` orders the entries as they were committed.

A file written before reviews existed has neither: it reads as unreviewed, and the first decision
adds the columns (``ALTER TABLE ... ADD COLUMN``, existing rows ``unreviewed``), the table, their
``gpkg_data_columns`` documentation and ``gpkg_contents`` entries.

Atomicity. One call is one SQLite transaction on the GeoPackage (``BEGIN IMMEDIATE``: the write
lock is taken before anything is read, so two writers queue instead of failing half-way; a busy
timeout makes them wait): the polygons' UPDATEs, the ``reviews`` INSERTs and ``last_change`` commit
together or not at all, and a crash leaves SQLite's rollback journal, which the next opener rolls
back. ``tasks.inventory.merge.merge_run`` does not update in place: it reads the inventory,
writes a new GeoPackage and renames it over the old one, so a decision committed between its read
and its rename would vanish. Both therefore hold the same advisory lock, ``flock`` on
``.NAME.gpkg.lock`` beside the GeoPackage (:func:`gpkg_write_lock`), around the whole write; merge
copies ``reviews`` and the polygons' review columns into the new file under it. Writers outside the
project (QGIS editing the layer) do not take that lock; SQLite still keeps the file consistent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.core.errors import InputError
from tasks.core.files import folder_lock
from tasks.vector.fields import (
    INVENTORY_FIELDS,
    LANDSLIDE_FIELDS,
    LAYER_DESCRIPTIONS,
    REVIEW_FIELDS,
    REVIEWED_AREA_FIELDS,
    REVIEWS_FIELDS,
)
from tasks.vector.geopackage import (
    create_attributes_table,
    document_table,
    gpkg_timestamp,
    register_gpkg_functions,
    touch_last_change,
)
from tasks.vector.vectorize import LANDSLIDES_LAYER

log = logging.getLogger(__name__)

REVIEWS_LAYER = "reviews"
UNREVIEWED, CONFIRMED, REJECTED = "unreviewed", "confirmed", "rejected"
REVIEW_STATUSES = (UNREVIEWED, CONFIRMED, REJECTED)
# decision -> the polygon's review_status after it (None: a note keeps the status)
DECISIONS: dict[str, str | None] = {"confirm": CONFIRMED, "reject": REJECTED, "note": None}
REVIEW_COLUMNS = ("review_status", "reviewed_by", "reviewed_at", "review_note")
INVENTORY_KEY, RUN_KEY = "inventory_id", "landslide_id"
KEY_COLUMNS = (INVENTORY_KEY, RUN_KEY)  # the first one the landslides layer has is the key
# SQLite column types GDAL maps to its field types (TEXT -> String, DATETIME -> DateTime)
_REVIEW_COLUMN_SQL = {"review_status": f"TEXT DEFAULT '{UNREVIEWED}'", "reviewed_by": "TEXT",
                      "reviewed_at": "DATETIME", "review_note": "TEXT"}
LOCK_WAIT_S = 120.0  # a review waits this long for a merge (or another review) to finish
BUSY_TIMEOUT_S = 30.0  # SQLite's wait for a writer that does not take our lock (QGIS)
_LOCK_POLL_S = 0.02


def _reviews_columns_sql(key: str) -> str:
    return (f'"{key}" INTEGER NOT NULL, "decision" TEXT NOT NULL, "review_status" TEXT NOT NULL, '
            '"reviewed_by" TEXT NOT NULL, "review_note" TEXT, "reviewed_at" DATETIME NOT NULL')


@dataclass(frozen=True)
class ReviewEntry:
    """One row of the ``reviews`` layer."""

    entry_id: int  # the row's fid: commit order
    polygon_id: int  # inventory_id (inventory) or landslide_id (a run's landslides.gpkg)
    decision: str  # confirm | reject | note
    review_status: str  # the polygon's status after the entry
    reviewed_by: str
    review_note: str | None
    reviewed_at: dt.datetime  # UTC

    def as_dict(self) -> dict:
        d = asdict(self)
        d["reviewed_at"] = self.reviewed_at.isoformat(timespec="milliseconds")
        return d


@dataclass(frozen=True)
class PolygonReview:
    """A polygon of the ``landslides`` layer with its review state (no geometry)."""

    polygon_id: int
    review_status: str
    reviewed_by: str | None
    reviewed_at: dt.datetime | None
    review_note: str | None
    status: str | None  # inventory: new | known; None in a run's landslides.gpkg
    area_m2: float | None
    mean_prob: float | None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["reviewed_at"] = (self.reviewed_at.isoformat(timespec="milliseconds")
                            if self.reviewed_at else None)
        return d


def lock_path(gpkg_path: str | Path) -> Path:
    """The advisory lock file of a GeoPackage that reviews and merges write: ``.NAME.lock``."""
    p = Path(gpkg_path)
    return p.with_name(f".{p.name}.lock")


@contextlib.contextmanager
def gpkg_write_lock(gpkg_path: str | Path, wait_s: float | None = LOCK_WAIT_S,
                    what: str = "another process is writing") -> Iterator[Path]:
    """Hold the GeoPackage's write lock (``flock``, released when the process dies; the file is
    removed on a clean release). Reviews and ``merge_run`` both take it for their whole write.

    Raises:
        FolderBusyError (an InputError): still held by another process after ``wait_s``.
    """
    with folder_lock(lock_path(gpkg_path), busy=f"{what} {Path(gpkg_path).name}", wait_s=wait_s,
                     poll_s=_LOCK_POLL_S, remove=True) as p:
        yield p


# ------------------------------------------------------------------------------------- schema


def _table_columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]


def _has_table(con: sqlite3.Connection, table: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                       (table,)).fetchone() is not None


def _key_column(con: sqlite3.Connection, path: Path) -> str:
    columns = _table_columns(con, LANDSLIDES_LAYER)
    if not columns:
        raise InputError(f"{path} has no '{LANDSLIDES_LAYER}' layer: review a regional inventory "
                         "(STATE_DIR/REGION/inventory.gpkg) or a run's landslides.gpkg")
    for key in KEY_COLUMNS:
        if key in columns:
            return key
    raise InputError(f"{path}: layer '{LANDSLIDES_LAYER}' has neither {INVENTORY_KEY} nor "
                     f"{RUN_KEY}; it was not written by landslide-pipeline")


def _landslide_fields(key: str) -> dict:
    return INVENTORY_FIELDS if key == INVENTORY_KEY else {**LANDSLIDE_FIELDS, **REVIEW_FIELDS}


def _ensure_schema(con: sqlite3.Connection, key: str, now: dt.datetime, where: str) -> bool:
    """Inside the caller's transaction: the review columns on ``landslides`` and the ``reviews``
    table, documented. Returns True when anything was added."""
    have = set(_table_columns(con, LANDSLIDES_LAYER))
    missing = [c for c in REVIEW_COLUMNS if c not in have]
    for col in missing:
        con.execute(f'ALTER TABLE "{LANDSLIDES_LAYER}" ADD COLUMN "{col}" {_REVIEW_COLUMN_SQL[col]}')
    if missing:
        row = con.execute("SELECT description FROM gpkg_contents WHERE table_name = ?",
                          (LANDSLIDES_LAYER,)).fetchone()
        document_table(con, LANDSLIDES_LAYER, row[0] if row and row[0] else "",
                       _landslide_fields(key), where=where)
    created = create_attributes_table(con, REVIEWS_LAYER, _reviews_columns_sql(key), now)
    if created:
        document_table(con, REVIEWS_LAYER, LAYER_DESCRIPTIONS[REVIEWS_LAYER],
                       {c: d for c, d in REVIEWS_FIELDS.items() if c not in set(KEY_COLUMNS) - {key}},
                       where=where)
    return bool(missing) or created


# ------------------------------------------------------------------------------------- writing


def resolve_gpkg(path: str | Path) -> Path:
    """``path``, or for a folder the ``landslides.gpkg`` (a run) or ``inventory.gpkg`` (a region's
    state folder) in it."""
    p = Path(path)
    if p.is_dir():
        for name in ("landslides.gpkg", "inventory.gpkg"):
            if (p / name).is_file():
                return p / name
        raise InputError(f"{p} is a folder without landslides.gpkg or inventory.gpkg: give the "
                         "GeoPackage to review")
    return p


def _connect_rw(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise InputError(f"{path} does not exist: give a regional inventory "
                         "(STATE_DIR/REGION/inventory.gpkg) or a run's landslides.gpkg")
    # autocommit mode (isolation_level None): this module issues BEGIN IMMEDIATE / COMMIT itself
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.DatabaseError:
        con.close()
        raise InputError(f"{path} is not a GeoPackage (not an SQLite database)") from None
    if app_id != 0x47504B47:  # "GPKG"
        con.close()
        raise InputError(f"{path} is not a GeoPackage (SQLite application_id is not 'GPKG')")
    register_gpkg_functions(con)
    return con


@contextlib.contextmanager
def _write_transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to ``path`` inside ``BEGIN IMMEDIATE``: committed when the block ends, rolled
    back on any exception (the file then stays as it was), closed either way."""
    con = _connect_rw(path)
    try:
        con.execute("BEGIN IMMEDIATE")
        yield con
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()


def _clean_ids(polygon_ids: Iterable[int]) -> list[int]:
    ids: list[int] = []
    for v in polygon_ids:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise InputError(f"a polygon id is a whole number, got {v!r}")
        try:
            i = int(v)
        except ValueError:
            raise InputError(f"a polygon id is a whole number, got {v!r}") from None
        if i not in ids:
            ids.append(i)
    if not ids:
        raise InputError("no polygon id given: name at least one (--id N)")
    return ids


def _update_polygon(con: sqlite3.Connection, key: str, polygon_id: int, status: str | None,
                    reviewer: str, note: str | None, stamp: str) -> str:
    """The polygon's review columns after one entry; returns its review_status."""
    if status is None:  # a note: the status stays (NULL, from a tool that inserted the row: unreviewed)
        con.execute(f'UPDATE "{LANDSLIDES_LAYER}" SET review_status = COALESCE(review_status, ?), '
                    f'reviewed_by = ?, reviewed_at = ?, review_note = ? WHERE "{key}" = ?',
                    (UNREVIEWED, reviewer, stamp, note, polygon_id))
    else:
        con.execute(f'UPDATE "{LANDSLIDES_LAYER}" SET review_status = ?, reviewed_by = ?, '
                    f'reviewed_at = ?, review_note = COALESCE(?, review_note) WHERE "{key}" = ?',
                    (status, reviewer, stamp, note, polygon_id))
    row = con.execute(f'SELECT review_status FROM "{LANDSLIDES_LAYER}" WHERE "{key}" = ?',
                      (polygon_id,)).fetchone()
    return row[0]


def _insert_entry(con: sqlite3.Connection, key: str, polygon_id: int, decision: str,
                  status_after: str, reviewer: str, note: str | None, stamp: str) -> int:
    cur = con.execute(f'INSERT INTO "{REVIEWS_LAYER}" ("{key}", decision, review_status, reviewed_by, '
                      'review_note, reviewed_at) VALUES (?, ?, ?, ?, ?, ?)',
                      (polygon_id, decision, status_after, reviewer, note, stamp))
    return int(cur.lastrowid)


def record_review(gpkg_path: str | Path, polygon_ids: Sequence[int], decision: str, reviewer: str,
                  note: str | None = None, *, now: dt.datetime | None = None,
                  lock_wait_s: float | None = LOCK_WAIT_S) -> list[ReviewEntry]:
    """Save one decision on one or more polygons, atomically (all of them or none).

    Args:
        gpkg_path: a regional inventory or a run's ``landslides.gpkg``.
        polygon_ids: ``inventory_id`` values (inventory) or ``landslide_id`` values (run).
        decision: ``confirm``, ``reject`` or ``note`` (a note keeps the status; it needs ``note``).
        reviewer: who decides (free text, e.g. a user name).
        note: free text stored with the entry and as the polygon's ``review_note``.
        now: the entry's time (default: now, UTC); stored with millisecond precision.
        lock_wait_s: how long to wait for a merge or another review holding the file.

    Returns:
        the ``reviews`` rows written, in order.

    Raises:
        InputError: an unknown decision or id, no reviewer, a note decision without text, a file
            that is not a GeoPackage with a ``landslides`` layer, or the file busy after
            ``lock_wait_s``.
    """
    path = resolve_gpkg(gpkg_path)
    if decision not in DECISIONS:
        raise InputError(f"unknown review decision {decision!r}: use one of {', '.join(DECISIONS)}")
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise InputError("no reviewer name: say who decides (--by NAME, or set $USER)")
    note = note.strip() if note and note.strip() else None
    if decision == "note" and note is None:
        raise InputError("a note-only review needs the note's text (--note TEXT)")
    ids = _clean_ids(polygon_ids)
    now = now or dt.datetime.now(dt.timezone.utc)
    stamp = gpkg_timestamp(now)
    status = DECISIONS[decision]
    with gpkg_write_lock(path, lock_wait_s, "a merge or another review is writing"):
        with _write_transaction(path) as con:
            key = _key_column(con, path)
            known = {r[0] for r in con.execute(
                f'SELECT "{key}" FROM "{LANDSLIDES_LAYER}" WHERE "{key}" IN '
                f'({",".join("?" * len(ids))})', ids)}
            unknown = [i for i in ids if i not in known]
            if unknown:
                n = con.execute(f'SELECT COUNT(*), MIN("{key}"), MAX("{key}") FROM '
                                f'"{LANDSLIDES_LAYER}"').fetchone()
                raise InputError(f"{path}: no polygon with {key} {', '.join(map(str, unknown))} "
                                 f"(the layer has {n[0]} polygons, {key} {n[1]}..{n[2]}); "
                                 "`landslide reviews GPKG --polygons` lists them")
            _ensure_schema(con, key, now, path.name)
            entries = []
            for pid in ids:
                after = _update_polygon(con, key, pid, status, reviewer, note, stamp)
                fid = _insert_entry(con, key, pid, decision, after, reviewer, note, stamp)
                entries.append(ReviewEntry(fid, pid, decision, after, reviewer, note,
                                           _parse_time(stamp)))
            touch_last_change(con, LANDSLIDES_LAYER, now)
            touch_last_change(con, REVIEWS_LAYER, now)
    log.info("%s: %s %s by %s", path, decision, ", ".join(map(str, ids)), reviewer)
    return entries


def copy_reviews(src_gpkg: str | Path, dst_gpkg: str | Path, key: str = INVENTORY_KEY) -> int:
    """Copy the ``reviews`` table of ``src_gpkg`` (if any) row for row, ``fid`` kept, into
    ``dst_gpkg``, creating it there (empty when the source has none) with its documentation.
    ``merge_run`` calls it on the new inventory before renaming it into place. Returns the rows
    copied."""
    src, dst = Path(src_gpkg), Path(dst_gpkg)
    rows: list[tuple] = []
    last = None
    if src.is_file():
        with contextlib.closing(_connect_ro(src)) as con:
            if _has_table(con, REVIEWS_LAYER):
                cols = ["fid", key, "decision", "review_status", "reviewed_by", "review_note",
                        "reviewed_at"]
                rows = con.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM '
                                   f'"{REVIEWS_LAYER}" ORDER BY fid').fetchall()
                last = con.execute("SELECT last_change FROM gpkg_contents WHERE table_name = ?",
                                   (REVIEWS_LAYER,)).fetchone()
    with _write_transaction(dst) as con:
        now = dt.datetime.now(dt.timezone.utc)
        create_attributes_table(con, REVIEWS_LAYER, _reviews_columns_sql(key), now)
        document_table(con, REVIEWS_LAYER, LAYER_DESCRIPTIONS[REVIEWS_LAYER],
                       {c: d for c, d in REVIEWS_FIELDS.items() if c not in set(KEY_COLUMNS) - {key}},
                       where=dst.name)
        con.executemany(f'INSERT INTO "{REVIEWS_LAYER}" (fid, "{key}", decision, review_status, '
                        'reviewed_by, review_note, reviewed_at) VALUES (?, ?, ?, ?, ?, ?, ?)', rows)
        if rows and last and last[0]:  # unchanged content keeps its last_change
            con.execute("UPDATE gpkg_contents SET last_change = ? WHERE table_name = ?",
                        (last[0], REVIEWS_LAYER))
    return len(rows)


# ------------------------------------------------------------------------------------- reading


def _connect_ro(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise InputError(f"{path} does not exist: give a regional inventory "
                         "(STATE_DIR/REGION/inventory.gpkg) or a run's landslides.gpkg")
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        con.execute("PRAGMA application_id").fetchone()
    except sqlite3.DatabaseError:
        con.close()
        raise InputError(f"{path} is not a GeoPackage (not an SQLite database)") from None
    return con


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    t = dt.datetime.fromisoformat(text)
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def review_key(gpkg_path: str | Path) -> str:
    """The id column reviews use in this file: ``inventory_id`` or ``landslide_id``."""
    path = resolve_gpkg(gpkg_path)
    with contextlib.closing(_connect_ro(path)) as con:
        return _key_column(con, path)


def list_polygons(gpkg_path: str | Path, review_status: str | None = None) -> list[PolygonReview]:
    """The polygons with their review state, by id (a file without review columns: all
    ``unreviewed``). ``review_status`` keeps only those in that state.

    Raises:
        InputError: an unknown ``review_status``; not a GeoPackage with a ``landslides`` layer.
    """
    if review_status is not None and review_status not in REVIEW_STATUSES:
        raise InputError(f"unknown review status {review_status!r}: use one of "
                         f"{', '.join(REVIEW_STATUSES)}")
    path = resolve_gpkg(gpkg_path)
    with contextlib.closing(_connect_ro(path)) as con:
        key = _key_column(con, path)
        have = set(_table_columns(con, LANDSLIDES_LAYER))
        cols = [key, *(c if c in have else "NULL" for c in (*REVIEW_COLUMNS, "status", "area_m2",
                                                             "mean_prob"))]
        rows = con.execute(f'SELECT {", ".join(cols)} FROM "{LANDSLIDES_LAYER}" '
                           f'ORDER BY "{key}"').fetchall()
    out = [PolygonReview(int(r[0]), r[1] or UNREVIEWED, r[2], _parse_time(r[3]), r[4], r[5],
                         None if r[6] is None else float(r[6]), None if r[7] is None else float(r[7]))
           for r in rows]
    return [p for p in out if review_status is None or p.review_status == review_status]


def review_history(gpkg_path: str | Path, polygon_id: int | None = None) -> list[ReviewEntry]:
    """The ``reviews`` rows in commit order (one polygon's with ``polygon_id``); empty for a file
    nobody reviewed yet."""
    path = resolve_gpkg(gpkg_path)
    with contextlib.closing(_connect_ro(path)) as con:
        key = _key_column(con, path)
        if not _has_table(con, REVIEWS_LAYER):
            return []
        sql = (f'SELECT fid, "{key}", decision, review_status, reviewed_by, review_note, reviewed_at '
               f'FROM "{REVIEWS_LAYER}"')
        args: tuple = ()
        if polygon_id is not None:
            sql += f' WHERE "{key}" = ?'
            args = (int(polygon_id),)
        rows = con.execute(sql + " ORDER BY fid", args).fetchall()
    return [ReviewEntry(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], _parse_time(r[6])) for r in rows]


# ------------------------------------------------------------------------------------- export

LABEL_LAYERS = (CONFIRMED, REJECTED, "reviewed_area")
_EXPORT_COLUMNS = ("area_m2", "mean_prob", "status", *REVIEW_COLUMNS)


@dataclass(frozen=True)
class LabelExport:
    out: Path
    key: str
    confirmed: int
    rejected: int
    unreviewed: int
    reviewed_area_m2: float
    conflict_area_m2: float  # where a confirmed and a rejected polygon overlap: left out


def export_labels(gpkg_path: str | Path, out_path: str | Path, overwrite: bool = False) -> LabelExport:
    """The reviewed polygons as a labels file for ``landslide make-dataset``.

    Layers (the polygons' CRS): ``confirmed`` and ``rejected`` (the polygons with their id, area,
    probability and review columns) and ``reviewed_area`` (one MultiPolygon): where the labels
    are known. A confirmed polygon is landslide ground, a rejected one is ground a reviewer looked
    at and found no landslide on; everything else is unknown (the detector may have missed
    landslides there, nobody checked), so it is not in ``reviewed_area`` and must not become
    background. ``reviewed_area`` is the union of both minus where a confirmed and a rejected
    polygon overlap (contradicting labels: ignored). With ``make-dataset --class
    landslide=confirmed --mapped-area reviewed_area`` the labels are 1 in confirmed polygons, 0 in
    rejected ones and 255 elsewhere.

    Raises:
        InputError: nothing reviewed yet, ``out_path`` not a ``.gpkg``, the input itself, or an
            existing file without ``overwrite``.
    """
    import geopandas as gpd
    import pandas as pd
    from shapely import MultiPolygon, make_valid
    from shapely.ops import unary_union

    from tasks.core.files import atomic_write
    from tasks.vector.geopackage import GPKG_DATASET_OPTIONS, GPKG_LAYER_OPTIONS

    src, out = resolve_gpkg(gpkg_path), Path(out_path)
    if out.suffix.lower() != ".gpkg":
        raise InputError(f"--out {out} must be a GeoPackage (.gpkg)")
    if out.exists() and out.resolve() == src.resolve():
        raise InputError(f"--out {out} is the reviewed file itself: name another file")
    if out.exists() and not overwrite:
        raise InputError(f"--out {out} already exists; pass --overwrite to replace it")
    key = review_key(src)
    frame = gpd.read_file(src, layer=LANDSLIDES_LAYER)
    status = (frame["review_status"].fillna(UNREVIEWED) if "review_status" in frame
              else pd.Series(UNREVIEWED, index=frame.index))
    cols = [key, *(c for c in _EXPORT_COLUMNS if c in frame.columns)]
    confirmed = frame.loc[status == CONFIRMED, [*cols, "geometry"]].reset_index(drop=True)
    rejected = frame.loc[status == REJECTED, [*cols, "geometry"]].reset_index(drop=True)
    if not len(confirmed) and not len(rejected):
        raise InputError(f"{src}: no polygon is confirmed or rejected yet ({len(frame)} unreviewed); "
                         "review some first (landslide review GPKG --id N --confirm|--reject)")
    yes = make_valid(unary_union(list(confirmed.geometry))) if len(confirmed) else None
    no = make_valid(unary_union(list(rejected.geometry))) if len(rejected) else None
    both = yes.intersection(no) if yes is not None and no is not None else None
    known = unary_union([g for g in (yes, no) if g is not None])
    if both is not None and not both.is_empty:
        known = known.difference(both)
    polys = [g for g in getattr(known, "geoms", [known]) if g.geom_type == "Polygon" and not g.is_empty]
    area = gpd.GeoDataFrame({"confirmed": [len(confirmed)], "rejected": [len(rejected)],
                             "area_m2": [float(known.area)]},
                            geometry=[MultiPolygon(polys)], crs=frame.crs)
    with atomic_write(out, unique=True) as tmp:
        for name, layer in ((CONFIRMED, confirmed), (REJECTED, rejected)):
            gpd.GeoDataFrame(layer, geometry="geometry", crs=frame.crs).to_file(
                tmp, layer=name, driver="GPKG", geometry_type="Polygon",
                dataset_options=GPKG_DATASET_OPTIONS, layer_options=GPKG_LAYER_OPTIONS)
        area.to_file(tmp, layer="reviewed_area", driver="GPKG", geometry_type="MultiPolygon",
                     layer_options=GPKG_LAYER_OPTIONS)
        con = sqlite3.connect(tmp)
        try:
            with con:
                fields = _landslide_fields(key)
                for name in (CONFIRMED, REJECTED):
                    document_table(con, name, LAYER_DESCRIPTIONS[f"labels_{name}"], fields,
                                   where=out.name)
                document_table(con, "reviewed_area", LAYER_DESCRIPTIONS["labels_reviewed_area"],
                               REVIEWED_AREA_FIELDS, where=out.name)
        finally:
            con.close()
    result = LabelExport(out, key, len(confirmed), len(rejected),
                         int((status == UNREVIEWED).sum()), float(known.area),
                         float(both.area) if both is not None else 0.0)
    log.info("%s: %d confirmed, %d rejected polygons -> %s", src, result.confirmed, result.rejected, out)
    return result
