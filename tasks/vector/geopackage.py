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
import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

from tasks.core.errors import InputError
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


def document_layers(path: str | Path, layers: Mapping[str, LayerDocs]) -> None:
    """Write each layer's description, field documentation and default style into ``path``.

    Idempotent: rows this writes before for a layer are replaced.

    Raises:
        InputError: ``path`` is not a file, or has no table of that name.
    """
    path = Path(path)
    with _connect(path) as con:
        con.executescript(_SCHEMA_SQL)
        con.execute(_LAYER_STYLES_SQL)
        for table in ("gpkg_data_columns", "gpkg_data_column_constraints"):
            _register_extension(con, table, "gpkg_schema", SCHEMA_EXTENSION)
        for layer, docs in layers.items():
            columns, geom = _table_columns(con, layer)
            con.execute("UPDATE gpkg_contents SET description = ? WHERE table_name = ?",
                        (docs.description, layer))
            con.execute("DELETE FROM gpkg_data_columns WHERE table_name = ?", (layer,))
            undocumented = [c for c in columns if c not in docs.fields]
            if undocumented:
                log.warning("%s layer %s: no alias/description for %s (add them to "
                            "tasks/vector/fields.py)", path.name, layer, ", ".join(undocumented))
            con.executemany(
                "INSERT INTO gpkg_data_columns (table_name, column_name, name, title, description) "
                "VALUES (?, ?, ?, ?, ?)",
                [(layer, c, docs.fields[c].alias, docs.fields[c].alias, docs.fields[c].full_description)
                 for c in columns if c in docs.fields])
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
