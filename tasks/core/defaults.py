"""Every default of a scan, in one place: the CLI's options, the plan (``tasks.run.plan.ScanRequest``),
the cleanup parameters and the block-wise functions all read them from here. A light module (no
numpy, no GDAL), so the CLI can show them in ``--help`` without importing the pipeline.
"""

from __future__ import annotations

RES_M = 10.0  # analysis grid pixel size (m)
PATCH_PX = 128  # patch side of the shipped detectors (a detector's card may say otherwise)
OVERLAP_PX = 32  # patch overlap for seam-free blending (px)
BATCH_SIZE = 16  # patches per forward pass
BLOCK_PX = 2048  # block side (px): bounds memory, not the result
DEVICE = "auto"  # CUDA when present, else CPU
WORKERS = 1  # local Dask worker processes (1: no cluster)

# cleanup (tasks.vector.clean.CleanParams); the threshold defaults to the detector card's
THRESHOLD = 0.5
OPENING_RADIUS_PX = 1
CLOSING_RADIUS_PX = 1
FILL_HOLES_MAX_AREA_M2 = 2000.0
MIN_AREA_M2 = 500.0  # 5 pixels at 10 m

# the polygons' outline (tasks.vector.geometry.GeometryParams)
SIMPLIFY_M = None  # None: half the pixel diagonal, res_m * sqrt(2) / 2 (7.07 m at 10 m); 0: exact pixels
SMOOTH = False  # --smooth: Chaikin corner cutting after simplification
SMOOTH_ITERATIONS = 2  # its passes

IOU_THRESHOLD = 0.3  # a detection this close to a known landslide updates it (regional inventory)

# event mode (--event-date): the date windows searched for the pre- and the post-event scene
PRE_DAYS = 120  # the days before the event
POST_DAYS = 60  # the event date and the days after it

# --format: the landslides layer is always in landslides.gpkg; each other format adds one file beside
# it (tasks.vector.export). Light on purpose: the CLI validates --format against this before any work.
EXPORT_FORMATS = ("gpkg", "geojson", "csv", "parquet")
EXPORT_FILES = {"geojson": "landslides.geojson", "csv": "landslides.csv", "parquet": "landslides.parquet"}
