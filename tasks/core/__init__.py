"""Contracts shared by every layer: bands, errors, grid, tiling, stitching, the patch loop
(``blend``), GDAL settings and atomic file writes. Imports nothing else of the project."""
