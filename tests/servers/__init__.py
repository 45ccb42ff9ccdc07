"""Local test servers speaking the STAC / Sentinel Hub / HTTP-range wire protocols (see README.md)."""
