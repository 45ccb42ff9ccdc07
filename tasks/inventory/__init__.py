"""The regional landslide inventory (``merge``), the processed-scene state of a region
(``region_state``) and pre/post change (``change``)."""
