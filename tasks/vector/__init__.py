"""From probabilities to polygons: threshold and morphology (``clean``), polygons with
attributes and the footprint (``vectorize``)."""
