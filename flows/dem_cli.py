"""CLI: a DEM for an area on its own, from a stac source's DEM collection.

    landslide dem --bbox 141.93,42.70,141.98,42.74 --source pc-l2a-alos --out dem.tif
"""

from __future__ import annotations

import argparse

from flows import options


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    dem = sub.add_parser(
        "dem", help="fetch and mosaic a DEM over a bbox from a stac source's DEM collection",
        description="Search the DEM collection (dem_collection: alos-dem, cop-dem-glo-30 or "
                    "cop-dem-glo-90) of a stac source of the catalog over --bbox, read the bbox's window "
                    "(plus a 4-pixel margin) of every intersecting item as a scan does (signed hrefs "
                    "with sign/dem_sign, the download cache), mosaic them and write a Cloud-Optimized "
                    "GeoTIFF in the DEM's own CRS and posting (no resampling), nodata as the product "
                    "(none for Copernicus DEM, whose sea is 0 m), units metres. Prints one line: "
                    "product, size, path. --source is required: name a stac source with a "
                    "dem_collection, or a local source with dem_source (its DEM source is used).",
        epilog="Example: landslide dem --bbox 141.93,42.70,141.98,42.74 --source pc-l2a-alos --out dem.tif")
    options.add_bbox(dem, required=True, help="area in EPSG:4326 degrees (west,south,east,north)")
    dem.add_argument("--source", required=True, metavar="NAME",
                     help="a stac source of the catalog with a dem_collection (or a local source "
                          "with dem_source); required: no source is guessed")
    options.add_catalog(dem)
    dem.add_argument("--out", required=True, metavar="FILE", help="GeoTIFF (COG) to write")
    dem.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    dem.add_argument("--cache-dir", metavar="DIR",
                     help="download cache (default: $LANDSLIDE_CACHE, else ~/.cache/landslide-pipeline)")


def cmd_dem(args: argparse.Namespace) -> int:
    from tasks.sources.dem import check_dem_request, write_area_dem
    from tasks.sources.remote import cache_root

    request = check_dem_request(args.catalog, args.source, args.bbox, args.out, args.overwrite)
    result = write_area_dem(request, cache_root(args.cache_dir))
    nodata = "none" if result.nodata is None else f"{result.nodata:g}"
    print(f"{result.product.get('collection')} ({result.product.get('product')}): {result.width} x "
          f"{result.height} px, {result.dtype} metres, {result.crs}, nodata {nodata} -> {result.path}")
    return 0


HANDLERS = {"dem": cmd_dem}
