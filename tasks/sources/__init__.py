"""Where pixels come from: ``data_catalog.yaml`` (``catalog``), local rasters, STAC APIs and
Sentinel Hub, per-pixel mosaics, cloud masks, scene listing for regional scans, and the scenes
before and after an event date (``event``)."""
