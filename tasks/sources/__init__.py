"""Where pixels come from: ``data_catalog.yaml`` (``catalog``), local rasters, STAC APIs and
Sentinel Hub, per-pixel mosaics, cloud masks, and scene listing for regional scans."""
