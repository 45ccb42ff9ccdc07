"""From probabilities to polygons and back: threshold and morphology (``clean``), polygons with
attributes and the footprint (``vectorize``), inventory polygons burnt onto the grid
(``rasterize``), per-polygon means of a raster (``zonal``)."""
