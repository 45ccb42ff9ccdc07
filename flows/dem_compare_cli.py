"""CLI: compare two DEMs (elevation and slope, B - A) over a region or bbox on the scan's grid.

    landslide dem-compare --a data/iburi_2018/dem/AW3D30_DSM.tif --b glo30.tif --region iburi-2018
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows import options


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    cmp = sub.add_parser(
        "dem-compare", help="elevation and slope differences of two DEMs (B - A) by slope class",
        description="Warp DEM A and DEM B onto the analysis grid a scan would use (UTM, --res-m), "
                    "with the scan's slope (Horn, in metres) and resampling, and report the "
                    "elevation difference B - A (m) and the slope difference B - A (deg): count, bias, "
                    "MAE, RMSE, median, p95 of |d|, overall and by slope class of A. Pixels where "
                    "either DEM has no data are left out and counted. Vertical datums are recorded, "
                    "not converted. See docs/dem_comparison.md.",
        epilog="Example: landslide dem-compare --a data/iburi_2018/dem/AW3D30_DSM.tif --b glo30.tif "
               "--region iburi-2018 --out dem_compare.md")
    cmp.add_argument("--a", required=True, metavar="A.tif", help="the reference DEM (classes by its slope)")
    cmp.add_argument("--b", required=True, metavar="B.tif", help="the DEM compared with A")
    options.add_region(cmp, help="a region of the catalog: its bbox is the area compared")
    options.add_bbox(cmp, help="area in EPSG:4326 degrees (west,south,east,north); with --region, "
                               "restricts the region's bbox")
    options.add_catalog(cmp)
    cmp.add_argument("--res-m", type=float, default=10.0, metavar="M",
                     help="pixel size of the analysis grid in metres (default: 10, as a scan)")
    cmp.add_argument("--json", action="store_true", help="print the report as JSON (default: Markdown)")
    cmp.add_argument("--out", metavar="FILE", help="also write the report: .json or .md")


def cmd_dem_compare(args: argparse.Namespace) -> int:
    from tasks.core.errors import InputError
    from tasks.core.files import atomic_write_text
    from tasks.raster.dem_compare import compare_dem_files, report_markdown, roi_from
    from tasks.sources.catalog import load_catalog
    from tasks.vector.classes import SLOPE_CLASSES_DEG

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".json", ".md"):
        raise InputError(f"--out {out}: the report is written as .json or .md")
    region_bbox = None
    if args.region:
        region = load_catalog(args.catalog).region(args.region)
        if region.bbox is None:
            raise InputError(f"region {args.region!r} has no bbox (an aoi only); give --bbox W,S,E,N")
        region_bbox = region.bbox
    roi = roi_from(region_bbox, args.bbox, args.region)
    report = compare_dem_files(args.a, args.b, roi, SLOPE_CLASSES_DEG, res_m=args.res_m).report
    as_json = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    print(as_json if args.json else report_markdown(report), end="")
    if out is not None:
        atomic_write_text(out, as_json if out.suffix.lower() == ".json" else report_markdown(report))
    return 0


HANDLERS = {"dem-compare": cmd_dem_compare}
