"""The run's products for people and catalogs, staged before publishing: ``quicklook.png``, the
``--format`` exports of the landslides layer, ``report.html`` and the STAC ``item.json``.

Called by :func:`tasks.run.steps.step_finish` in two steps around the manifest: the quicklook and
the exports first (the manifest lists them), the report and the item after it (both read it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.core.defaults import EXPORT_FILES
from tasks.raster.quicklook import Quicklook, read_quicklook, write_quicklook_png
from tasks.run.report import REPORT_NAME, write_report
from tasks.run.stac import ITEM_NAME, write_item
from tasks.vector.export import export_landslides

QUICKLOOK_NAME = "quicklook.png"
GPKG_NAME = "landslides.gpkg"
MANIFEST_NAME = "manifest.json"

OUTPUT_DESCRIPTIONS = {
    QUICKLOOK_NAME: "PNG, post-event true colour B04/B03/B02, 2-98 % stretch, long side <= 1024 px",
    REPORT_NAME: "self-contained HTML report: map, counts by confidence and slope class, inputs, model card",
    ITEM_NAME: "STAC 1.1.0 Item of this run (footprint, scene time, assets)",
    EXPORT_FILES["geojson"]: "landslides layer as GeoJSON, EPSG:4326 (RFC 7946)",
    EXPORT_FILES["csv"]: "landslides layer as CSV, WKT geometry in EPSG:4326",
    EXPORT_FILES["parquet"]: "landslides layer as GeoParquet, the GeoPackage's CRS",
}


def quicklook_source(stack_record: Mapping[str, Any]) -> str:
    """The aligned stack the quicklook reads: the post-event one in event mode."""
    return stack_record.get("post_stack_path") or stack_record["stack_path"]


def stage_quicklook_and_exports(stage: str | Path, stack_record: Mapping[str, Any],
                                formats: Sequence[str]) -> tuple[Quicklook, dict[str, str]]:
    """Write ``quicklook.png`` and the requested exports into the staging folder.

    Returns:
        The quicklook (the report draws on it) and the manifest's ``outputs`` entries of the files.
    """
    stage = Path(stage)
    quicklook = read_quicklook(quicklook_source(stack_record))
    write_quicklook_png(quicklook, stage / QUICKLOOK_NAME)
    exported = export_landslides(stage / GPKG_NAME, formats, stage)
    names = [QUICKLOOK_NAME, REPORT_NAME, ITEM_NAME, *(p.name for p in exported)]
    return quicklook, {n: OUTPUT_DESCRIPTIONS[n] for n in names}


def stage_report_and_item(stage: str | Path, quicklook: Quicklook) -> None:
    """Write ``report.html`` and ``item.json`` into the staging folder, from the staged manifest."""
    stage = Path(stage)
    manifest = json.loads((stage / MANIFEST_NAME).read_text())
    write_report(stage / REPORT_NAME, stage / GPKG_NAME, manifest, quicklook)
    write_item(stage, manifest)
