"""What each field of the GeoPackages means: alias, description and unit, one entry per field.

These dicts are the single source of truth for the human-readable side of the schema. They are
written into each GeoPackage (``gpkg_data_columns``, the GeoPackage schema extension), into the
layers' default QGIS styles (field aliases) and must match README's "Fields of the `landslides`
layer" table (``tests/flows/test_qgis_run.py`` checks both ways).

To add a field to a layer: add its column where the layer is built (e.g.
``LANDSLIDE_COLUMNS`` in ``tasks/vector/vectorize.py``), add one ``FieldDoc`` line here and one row
to the README table.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.vector.classes import CONFIDENCE_HIGH_MIN_PROB, CONFIDENCE_MEDIUM_MIN_PROB


@dataclass(frozen=True)
class FieldDoc:
    """How a field is shown to people.

    Attributes:
        alias: short display name (QGIS field alias; GeoPackage ``gpkg_data_columns.name``/``title``).
        description: one sentence on what the value is and how it was computed.
        unit: the value's unit (``""`` for identifiers and text).
    """

    alias: str
    description: str
    unit: str = ""

    @property
    def full_description(self) -> str:
        """The description with its unit, as stored in ``gpkg_data_columns.description``."""
        return f"{self.description} [{self.unit}]" if self.unit else self.description


# layer `landslides` of a scan's landslides.gpkg, in column order; the last three only in event mode
LANDSLIDE_FIELDS: dict[str, FieldDoc] = {
    "landslide_id": FieldDoc("Landslide ID", "Number of the landslide in this run (1..n, raster order "
                             "of its first pixel)"),
    "area_m2": FieldDoc("Area (m²)", "Area of the written (simplified, smoothed) polygon in the "
                        "analysis CRS", "m²"),
    "perimeter_m": FieldDoc("Perimeter (m)", "Length of the written polygon's outline, holes "
                            "included", "m"),
    "area_px_m2": FieldDoc("Pixel area (m²)", "Raster-exact area: the object's pixel count times "
                           "the pixel area (equals area_m2 with --simplify-m 0)", "m²"),
    "length_m": FieldDoc("Length (m)", "Long side of the written polygon's minimum rotated "
                         "rectangle", "m"),
    "width_m": FieldDoc("Width (m)", "Short side of the written polygon's minimum rotated rectangle",
                        "m"),
    "elongation": FieldDoc("Elongation", "length_m / width_m (1 for a square footprint)",
                           "1 (>= 1)"),
    "mean_prob": FieldDoc("Mean probability", "Mean landslide probability over the polygon's pixels",
                          "1 (0 to 1)"),
    "max_prob": FieldDoc("Max probability", "Highest landslide probability of the polygon's pixels",
                         "1 (0 to 1)"),
    "confidence_class": FieldDoc("Confidence", "Class of mean_prob: high (>= "
                                 f"{CONFIDENCE_HIGH_MIN_PROB:g}), medium (>= "
                                 f"{CONFIDENCE_MEDIUM_MIN_PROB:g}), low (below); 'no value' without a "
                                 "probability; not a calibrated error rate"),
    "uncertainty": FieldDoc("Uncertainty", "Mean per-pixel uncertainty over the polygon: for a single "
                            "model the binary predictive entropy in bits (0 certain, 1 at p = 0.5); "
                            "for an ensemble the standard deviation of the members' probabilities "
                            "(0 to 0.5, unit 1); manifest.json parameters.uncertainty says which",
                            "bit (single model) or 1 (ensemble)"),
    "mean_slope_deg": FieldDoc("Mean slope (°)", "Mean terrain slope from the DEM over the polygon",
                               "degree"),
    "max_slope_deg": FieldDoc("Max slope (°)", "Steepest terrain slope from the DEM among the "
                              "polygon's pixels", "degree"),
    "aspect_deg": FieldDoc("Aspect (°)", "Circular mean of the terrain aspect (direction the slope "
                           "faces, Horn gradient of the DEM on the analysis grid) over the polygon's "
                           "pixels, clockwise from grid north, 0 to 360; empty without a DEM or "
                           "where flat", "degree"),
    "mean_elev_m": FieldDoc("Mean elevation (m)", "Mean DEM elevation over the polygon", "m"),
    "relief_m": FieldDoc("Relief (m)", "Highest minus lowest DEM elevation among the polygon's pixels",
                         "m"),
    "dem": FieldDoc("DEM", "Elevation model the slope, aspect, elevation and relief attributes come "
                    "from: the STAC DEM product (e.g. 'cop-dem-glo-30: Copernicus DEM GLO-30') or the "
                    "local DEM file's name; empty when the source has none"),
    "centroid_lon": FieldDoc("Centroid longitude", "Longitude of the polygon's centroid, WGS 84 "
                             "(EPSG:4326)", "degree east"),
    "centroid_lat": FieldDoc("Centroid latitude", "Latitude of the polygon's centroid, WGS 84 "
                             "(EPSG:4326)", "degree north"),
    "scene_id": FieldDoc("Scene", "Sentinel-2 scene (or mosaic) the polygon was detected on"),
    "acquired": FieldDoc("Acquired (UTC)", "Acquisition time of that scene; empty when unknown", "UTC"),
    "acquired_note": FieldDoc("Acquisition note", "Why acquired is empty, e.g. 'composite "
                              "2018-08-01..2019-07-31, no scene date'; empty when acquired is set"),
    "model": FieldDoc("Model", "Detector that found it: checkpoint card name@sha256 prefix"),
    "run_id": FieldDoc("Run", "Identifier of the scan run (run_id in manifest.json)"),
    "detected_at": FieldDoc("Detected at (UTC)", "Time the run vectorized the polygon", "UTC"),
    "pre_scene_id": FieldDoc("Pre-event scene", "Event mode: the pre-event scene compared against"),
    "change_index": FieldDoc("Change index", "Event mode: the spectral index mean_change is of"),
    "mean_change": FieldDoc("Mean change", "Event mode: mean post-minus-pre change of that index over "
                            "the polygon", "index units"),
}

# layer `footprint` of a scan's landslides.gpkg
FOOTPRINT_FIELDS: dict[str, FieldDoc] = {
    "area_m2": FieldDoc("Analysed area (m²)", "Area that was actually analysed", "m²"),
    "status": FieldDoc("Status", "'analysed', or why nothing was ('no valid data: ...')"),
    "scene_id": FieldDoc("Scene", "Sentinel-2 scene (or mosaic) of the run"),
    "run_id": FieldDoc("Run", "Identifier of the scan run (run_id in manifest.json)"),
}

# layer `landslides` of a regional inventory: the scan's fields of the latest detection plus these
INVENTORY_FIELDS: dict[str, FieldDoc] = {
    **LANDSLIDE_FIELDS,
    "inventory_id": FieldDoc("Inventory ID", "Identifier of the landslide in the regional inventory, "
                             "stable across runs"),
    "first_seen": FieldDoc("First seen (UTC)", "Acquisition time of the first scene it was detected in",
                           "UTC"),
    "last_seen": FieldDoc("Last seen (UTC)", "Acquisition time of the latest scene it was detected in",
                          "UTC"),
    "detections": FieldDoc("Detections", "How many runs detected it", "count"),
    "status": FieldDoc("Status", "'new' when the latest merged run added it, else 'known'"),
}

# review state of a polygon (tasks/inventory/review.py): columns of an inventory's `landslides`
# layer (every merge writes them) and of a run's `landslides` layer once a polygon was reviewed
REVIEW_FIELDS: dict[str, FieldDoc] = {
    "review_status": FieldDoc("Review status", "'unreviewed', 'confirmed' (a reviewer saw a landslide) "
                              "or 'rejected' (a reviewer saw no landslide); the latest confirm/reject "
                              "decision of the reviews layer"),
    "reviewed_by": FieldDoc("Reviewed by", "Who made the latest review entry of the polygon"),
    "reviewed_at": FieldDoc("Reviewed at (UTC)", "Time of the latest review entry of the polygon",
                            "UTC"),
    "review_note": FieldDoc("Review note", "The latest note a reviewer left on the polygon"),
}
INVENTORY_FIELDS.update(REVIEW_FIELDS)

# layer `reviews` (no geometry): one row per review entry, append-only; the polygon's id column is
# `inventory_id` in an inventory and `landslide_id` in a run's landslides.gpkg
REVIEWS_FIELDS: dict[str, FieldDoc] = {
    "inventory_id": FieldDoc("Inventory ID", "The reviewed landslide (inventory_id of the landslides "
                             "layer)"),
    "landslide_id": FieldDoc("Landslide ID", "The reviewed landslide (landslide_id of the landslides "
                             "layer)"),
    "decision": FieldDoc("Decision", "'confirm', 'reject', or 'note' (a note that keeps the status)"),
    "review_status": FieldDoc("Review status after", "The polygon's review_status after this entry"),
    "reviewed_by": FieldDoc("Reviewed by", "Who made the entry"),
    "review_note": FieldDoc("Review note", "The reviewer's note; empty when none was given"),
    "reviewed_at": FieldDoc("Reviewed at (UTC)", "Time the entry was saved", "UTC"),
}

# layer `scans` of a regional inventory: one row per merged run
SCAN_FIELDS: dict[str, FieldDoc] = {
    "run_id": FieldDoc("Run", "Identifier of the merged scan run"),
    "scenes": FieldDoc("Scenes", "Comma-separated scene ids of the run"),
    "acquired": FieldDoc("Acquired (UTC)", "Latest acquisition time of the run's detections", "UTC"),
    "model": FieldDoc("Model", "Detector of the run: checkpoint card name@sha256 prefix"),
    "detections": FieldDoc("Detections", "Polygons the run detected", "count"),
    "new": FieldDoc("New", "Detections added to the inventory as new landslides", "count"),
    "known": FieldDoc("Known", "Detections that updated a known landslide", "count"),
    "merged_at": FieldDoc("Merged at (UTC)", "Time the run was merged into the inventory", "UTC"),
}

# layer `reviewed_area` of a labels file from `landslide export-labels`
REVIEWED_AREA_FIELDS: dict[str, FieldDoc] = {
    "confirmed": FieldDoc("Confirmed", "Confirmed polygons (layer confirmed)", "count"),
    "rejected": FieldDoc("Rejected", "Rejected polygons (layer rejected)", "count"),
    "area_m2": FieldDoc("Reviewed area (m²)", "Area where the labels are known: confirmed and "
                        "rejected polygons, without where the two overlap", "m²"),
}

LAYER_DESCRIPTIONS: dict[str, str] = {
    "landslides": "Landslides detected by the scan: one polygon per 4-connected object of the "
                  "cleaned mask, with probability, uncertainty, terrain and provenance attributes",
    "footprint": "Area actually analysed by the scan; outside it, no polygon means 'not looked at'",
    "inventory_landslides": "Regional landslide inventory: every landslide ever detected in the "
                            "region, attributes of its latest detection, status new/known",
    "scans": "Scan runs merged into the regional inventory, each with its analysed footprint",
    "reviews": "Review decisions on the landslides, one row per entry, oldest first (append-only); "
               "each polygon's latest state is in its review_* columns",
    "labels_confirmed": "Polygons a reviewer confirmed as landslides (landslide ground)",
    "labels_rejected": "Polygons a reviewer rejected: looked at, no landslide (known background)",
    "labels_reviewed_area": "Where the labels are known: confirmed and rejected polygons (their "
                            "overlaps left out); everything else was not reviewed and is unknown, "
                            "not background",
}
