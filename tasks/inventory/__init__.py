"""The regional landslide inventory (``merge``), the processed-scene state of a region
(``region_state``), pre/post change (``change``) and a run scored against a reference inventory
(``accuracy``)."""
