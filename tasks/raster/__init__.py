"""Raster preparation: slope from the DEM (``terrain``), alignment of every layer on the 10 m
analysis grid (``align``), and the bi-temporal pre/post stack of event mode (``event_stack``)."""
