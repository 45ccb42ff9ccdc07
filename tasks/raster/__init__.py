"""Raster preparation: slope from the DEM (``terrain``) and alignment of every layer on the
10 m analysis grid (``align``)."""
