"""The regional landslide inventory (``merge``), the processed-scene state of a region
(``region_state``), pre/post change (``change``), a run scored against a reference inventory
(``accuracy``) and reviewers' decisions on detected polygons (``review``)."""
