"""GeoPackage conventions that desktop GIS read: version, layer and field documentation, default
styles and lineage, written with SQLite into a GeoPackage that GDAL has just created.

- ``GPKG_DATASET_OPTIONS`` / ``GPKG_LAYER_OPTIONS``: GeoPackage 1.2 (GDAL 3.6 and QGIS 3.22 LTR
  warn on 1.4 files) and datetimes with milliseconds (the GeoPackage format; GDAL 3.6 warns on
  values without them). Pass them to every ``to_file(..., driver="GPKG")`` of a layer we publish.
- :func:`document_layers`: ``gpkg_contents.description``, field aliases and descriptions in
  ``gpkg_data_columns`` (the GeoPackage schema extension, registered in ``gpkg_extensions``), and a
  default style per layer in ``layer_styles``, the table QGIS itself creates when a style is saved
  as default into a GeoPackage (QGIS 3.22, through OGR; same columns and types here). QGIS applies
  a ``useAsDefault`` style when the layer is opened.
- :func:`write_lineage`: one JSON document in ``gpkg_metadata`` (the metadata extension), referenced
  for the whole GeoPackage in ``gpkg_metadata_reference``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

from tasks.core.errors import InputError
from tasks.vector.fields import FieldDoc
from tasks.vector.styles import LayerDocs

log = logging.getLogger(__name__)

GPKG_DATASET_OPTIONS: dict[str, str] = {"VERSION": "1.2"}
GPKG_LAYER_OPTIONS: dict[str, str] = {"DATETIME_PRECISION": "MILLISECOND"}
GPKG_1_2_USER_VERSION = 10200  # PRAGMA user_version of a GeoPackage 1.2 file

SCHEMA_EXTENSION = "http://www.geopackage.org/spec120/#extension_schema"
METADATA_EXTENSION = "http://www.geopackage.org/spec120/#extension_metadata"
# md_standard_uri of our lineage document (a JSON object, see write_lineage)
LINEAGE_STANDARD_URI = "urn:landslide-pipeline:lineage:1"
LINEAGE_MIME_TYPE = "application/json"

# Column names and types as QGIS 3.22 creates the table (QgsOgrProviderUtils::saveStyle via OGR).
_LAYER_STYLES_SQL = """CREATE TABLE IF NOT EXISTS "layer_styles" (
  "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "f_table_catalog" TEXT(256),
  "f_table_schema" TEXT(256), "f_table_name" TEXT(256), "f_geometry_column" TEXT(256),
  "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, "useAsDefault" BOOLEAN,
  "description" TEXT, "owner" TEXT(30), "ui" TEXT(30),
  "update_time" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"""

# GeoPackage 1.2, clause 2.3 (schema extension) and 2.4 (metadata extension)
_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS gpkg_data_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, name TEXT, title TEXT, description TEXT,
  mime_type TEXT, constraint_name TEXT,
  CONSTRAINT pk_gdc PRIMARY KEY (table_name, column_name),
  CONSTRAINT gdc_tn UNIQUE (table_name, name));
CREATE TABLE IF NOT EXISTS gpkg_data_column_constraints (
  constraint_name TEXT NOT NULL, constraint_type TEXT NOT NULL, value TEXT, min NUMERIC,
  min_is_inclusive BOOLEAN, max NUMERIC, max_is_inclusive BOOLEAN, description TEXT,
  CONSTRAINT gdcc_ntv UNIQUE (constraint_name, constraint_type, value));
"""
_METADATA_SQL = """
CREATE TABLE IF NOT EXISTS gpkg_metadata (
  id INTEGER CONSTRAINT m_pk PRIMARY KEY ASC NOT NULL,
  md_scope TEXT NOT NULL DEFAULT 'dataset', md_standard_uri TEXT NOT NULL,
  mime_type TEXT NOT NULL DEFAULT 'text/xml', metadata TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS gpkg_metadata_reference (
  reference_scope TEXT NOT NULL, table_name TEXT, column_name TEXT, row_id_value INTEGER,
  timestamp DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  md_file_id INTEGER NOT NULL, md_parent_id INTEGER,
  CONSTRAINT crmr_mfi_fk FOREIGN KEY (md_file_id) REFERENCES gpkg_metadata(id),
  CONSTRAINT crmr_mpi_fk FOREIGN KEY (md_parent_id) REFERENCES gpkg_metadata(id));
"""


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """One transaction on an existing GeoPackage; committed on success, rolled back on error."""
    if not path.is_file():
        raise InputError(f"{path} does not exist; write the GeoPackage's layers first")
    con = sqlite3.connect(path)
    try:
        with con:
            yield con
    finally:
        con.close()


def _register_extension(con: sqlite3.Connection, table: str, extension: str, definition: str) -> None:
    con.execute("""CREATE TABLE IF NOT EXISTS gpkg_extensions (table_name TEXT, column_name TEXT,
                   extension_name TEXT NOT NULL, definition TEXT NOT NULL, scope TEXT NOT NULL,
                   CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name))""")
    con.execute("DELETE FROM gpkg_extensions WHERE table_name = ? AND column_name IS NULL "
                "AND extension_name = ?", (table, extension))
    con.execute("INSERT INTO gpkg_extensions VALUES (?, NULL, ?, ?, 'read-write')",
                (table, extension, definition))


def _table_columns(con: sqlite3.Connection, table: str) -> tuple[list[str], str | None]:
    """The attribute columns of a feature table (no FID, no geometry) and its geometry column."""
    row = con.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?",
                      (table,)).fetchone()
    geom = row[0] if row else None
    info = con.execute(f'PRAGMA table_info("{table}")').fetchall()  # (cid, name, type, notnull, dflt, pk)
    if not info:
        raise InputError(f"the GeoPackage has no table {table!r}")
    return [r[1] for r in info if not r[5] and r[1] != geom], geom


def gpkg_timestamp(when: dt.datetime) -> str:
    """``when`` as GeoPackage datetime text: UTC, milliseconds, ``Z`` (``2026-12-04T07:35:42.378Z``),
    the form GDAL writes with ``DATETIME_PRECISION=MILLISECOND`` and ``gpkg_contents.last_change``
    takes."""
    if when.tzinfo is None:
        raise InputError(f"a GeoPackage datetime needs a time zone, got the naive {when.isoformat()}")
    utc = when.astimezone(dt.timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def document_table(con: sqlite3.Connection, table: str, description: str,
                   fields: Mapping[str, FieldDoc], where: str = "") -> str | None:
    """Inside the caller's transaction: ``table``'s ``gpkg_contents.description`` and one
    ``gpkg_data_columns`` row per documented column (earlier rows of the table replaced), with the
    schema extension registered. Returns the table's geometry column (None: an attribute table).

    Raises:
        InputError: the GeoPackage has no table ``table``.
    """
    for statement in _SCHEMA_SQL.split(";"):  # not executescript: it would COMMIT the caller's work
        if statement.strip():
            con.execute(statement)
    for t in ("gpkg_data_columns", "gpkg_data_column_constraints"):
        _register_extension(con, t, "gpkg_schema", SCHEMA_EXTENSION)
    columns, geom = _table_columns(con, table)
    con.execute("UPDATE gpkg_contents SET description = ? WHERE table_name = ?", (description, table))
    con.execute("DELETE FROM gpkg_data_columns WHERE table_name = ?", (table,))
    undocumented = [c for c in columns if c not in fields]
    if undocumented:
        log.warning("%s layer %s: no alias/description for %s (add them to "
                    "tasks/vector/fields.py)", where, table, ", ".join(undocumented))
    con.executemany(
        "INSERT INTO gpkg_data_columns (table_name, column_name, name, title, description) "
        "VALUES (?, ?, ?, ?, ?)",
        [(table, c, fields[c].alias, fields[c].alias, fields[c].full_description)
         for c in columns if c in fields])
    return geom


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                       (name,)).fetchone() is not None


def create_attributes_table(con: sqlite3.Connection, table: str, columns_sql: str,
                            now: dt.datetime) -> bool:
    """Inside the caller's transaction: create the attribute table (a layer without geometry)
    ``table`` unless it exists, and register it in ``gpkg_contents`` as ``attributes`` (GeoPackage
    1.2, clause 2.4.2: the table has an ``INTEGER PRIMARY KEY AUTOINCREMENT`` column, ``fid`` as
    GDAL names it). ``columns_sql``: the other columns' definitions. Returns True when created."""
    if _has_table(con, table):
        return False
    con.execute(f'CREATE TABLE "{table}" ("fid" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
                f'{columns_sql})')
    _register_attributes(con, table, now)
    _register_layer_styles(con, now)
    return True


def _register_attributes(con: sqlite3.Connection, table: str, now: dt.datetime) -> None:
    con.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
                "last_change) VALUES (?, 'attributes', ?, '', ?)", (table, table, gpkg_timestamp(now)))


def _register_layer_styles(con: sqlite3.Connection, now: dt.datetime | None = None) -> None:
    """Register ``layer_styles`` in ``gpkg_contents`` as ``attributes`` once the GeoPackage has an
    attribute table registered there. GDAL then no longer opens unregistered tables, and QGIS 3.x
    found no default style at all (checked with PyQGIS on an inventory with a ``reviews`` table);
    QGIS itself, creating ``layer_styles`` through OGR, registers it the same way."""
    if not _has_table(con, "layer_styles"):
        return
    registered = {r[0]: r[1] for r in con.execute("SELECT table_name, data_type FROM gpkg_contents")}
    if "layer_styles" in registered or "attributes" not in registered.values():
        return
    _register_attributes(con, "layer_styles", now or dt.datetime.now(dt.timezone.utc))


_ENVELOPE_DOUBLES = {0: 0, 1: 4, 2: 6, 3: 6, 4: 8}  # GeoPackage binary header, envelope indicator


def _gpkg_geometry_parts(blob: bytes | None) -> tuple[bool, tuple[float, ...] | None, bytes] | None:
    """(empty flag, envelope or None, WKB) of a GeoPackage geometry blob (GeoPackage 1.2, 2.1.3)."""
    import struct

    if blob is None or len(blob) < 8 or blob[:2] != b"GP":
        return None
    flags = blob[3]
    order = "<" if flags & 1 else ">"
    n = _ENVELOPE_DOUBLES.get((flags >> 1) & 7, 0)
    env = struct.unpack(f"{order}{n}d", blob[8:8 + 8 * n]) if n else None
    return bool(flags & 0x10), env, blob[8 + 8 * n:]


def _st_is_empty(blob):
    parts = _gpkg_geometry_parts(blob)
    return None if parts is None else int(parts[0])


def _st_bound(i: int):
    def bound(blob):
        parts = _gpkg_geometry_parts(blob)
        if parts is None or parts[0]:
            return None
        if parts[1] is not None:
            return parts[1][i]  # minx, maxx, miny, maxy
        import shapely

        b = shapely.from_wkb(parts[2]).bounds  # minx, miny, maxx, maxy
        return b[(0, 2, 1, 3)[i]]
    return bound


def register_gpkg_functions(con: sqlite3.Connection) -> None:
    """Give a plain ``sqlite3`` connection the SQL functions GDAL's R-tree triggers call
    (``ST_IsEmpty``, ``ST_MinX``, ``ST_MaxX``, ``ST_MinY``, ``ST_MaxY``, read from the GeoPackage
    geometry header): SQLite compiles every trigger of a table an UPDATE may fire, so without them
    any UPDATE of a GDAL-written feature table fails with "no such function"."""
    con.create_function("ST_IsEmpty", 1, _st_is_empty, deterministic=True)
    for i, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        con.create_function(name, 1, _st_bound(i), deterministic=True)


def touch_last_change(con: sqlite3.Connection, table: str, now: dt.datetime) -> None:
    """Inside the caller's transaction: ``gpkg_contents.last_change`` of ``table`` = ``now``
    (GeoPackage readers use it to notice changed content; GDAL sets it on its own writes)."""
    con.execute("UPDATE gpkg_contents SET last_change = ? WHERE table_name = ?",
                (gpkg_timestamp(now), table))


def document_layers(path: str | Path, layers: Mapping[str, LayerDocs]) -> None:
    """Write each layer's description, field documentation and default style into ``path``.

    Idempotent: rows this writes before for a layer are replaced.

    Raises:
        InputError: ``path`` is not a file, or has no table of that name.
    """
    path = Path(path)
    with _connect(path) as con:
        con.execute(_LAYER_STYLES_SQL)
        _register_layer_styles(con)
        for layer, docs in layers.items():
            geom = document_table(con, layer, docs.description, docs.fields, where=path.name)
            con.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner, "
                "ui) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL)",
                (layer, geom or "", docs.style_name, docs.qml, docs.sld,
                 f"default style of {layer}, written by landslide-pipeline"))


def write_lineage(path: str | Path, lineage: Mapping) -> int:
    """Store ``lineage`` (JSON-able: run id, scenes, model, parameters, ...) as the GeoPackage's
    dataset-level metadata; replaces an earlier lineage document. Returns its ``gpkg_metadata.id``.

    Raises:
        InputError: ``path`` is not a file.
    """
    path = Path(path)
    text = json.dumps(dict(lineage), sort_keys=True, default=str)
    with _connect(path) as con:
        con.executescript(_METADATA_SQL)
        for table in ("gpkg_metadata", "gpkg_metadata_reference"):
            _register_extension(con, table, "gpkg_metadata", METADATA_EXTENSION)
        old = [r[0] for r in con.execute("SELECT id FROM gpkg_metadata WHERE md_standard_uri = ?",
                                         (LINEAGE_STANDARD_URI,))]
        con.executemany("DELETE FROM gpkg_metadata_reference WHERE md_file_id = ?", [(i,) for i in old])
        con.executemany("DELETE FROM gpkg_metadata WHERE id = ?", [(i,) for i in old])
        cur = con.execute("INSERT INTO gpkg_metadata (md_scope, md_standard_uri, mime_type, metadata) "
                          "VALUES ('dataset', ?, ?, ?)", (LINEAGE_STANDARD_URI, LINEAGE_MIME_TYPE, text))
        md_id = int(cur.lastrowid)
        con.execute("INSERT INTO gpkg_metadata_reference (reference_scope, table_name, column_name, "
                    "row_id_value, timestamp, md_file_id, md_parent_id) VALUES ('geopackage', NULL, "
                    "NULL, NULL, strftime('%Y-%m-%dT%H:%M:%fZ','now'), ?, NULL)", (md_id,))
    return md_id


def read_lineage(path: str | Path) -> dict | None:
    """The lineage document :func:`write_lineage` stored, or None."""
    with contextlib.closing(sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)) as con:
        has = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'gpkg_metadata'").fetchone()
        row = con.execute("SELECT metadata FROM gpkg_metadata WHERE md_standard_uri = ? "
                          "ORDER BY id DESC", (LINEAGE_STANDARD_URI,)).fetchone() if has else None
    return json.loads(row[0]) if row else None
