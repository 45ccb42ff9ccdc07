"""Local servers that speak the STAC API / HTTP-range / Sentinel Hub wire protocols on 127.0.0.1.

They serve crops of the real Sentinel-2 and GLO-30 files in ``../shared/data`` (or
``$LANDSLIDE_SHARED_DATA``) and inject scripted faults. The tests start them through the fixtures in
``tests/servers/conftest.py``; people start them with ``landslide dev-server stac|sentinelhub``
(see ``devservers/README.md``).
"""
