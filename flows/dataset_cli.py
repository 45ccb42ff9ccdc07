"""CLI: training datasets from a landslide inventory (any vector file, any CRS).

    landslide make-dataset --region iburi-2018 \\
        --labels ../shared/data/iburi_2018_inventory_west/iburi_2018_inventory_west.gpkg \\
        --class scar=collapse_scars --class deposit=deposits --mapped-area mapped_area \\
        --bbox 141.8903,42.6824,141.93,42.7695 --attribution "..." --out build/iburi_real

See docs/datasets_from_inventories.md.
"""

from __future__ import annotations

import argparse

from flows import options
from tasks.core import defaults

VAL_FRACTION = 0.25  # tasks.datasets.inventory.DEFAULT_VAL_FRACTION (a test keeps them equal)
GAP_PX = defaults.PATCH_PX  # tasks.datasets.inventory.DEFAULT_GAP_PX


def _date(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    mk = sub.add_parser(
        "make-dataset", help="a train/val dataset from a landslide inventory (polygons) on a region's scene",
        description="Align the region's scene on the analysis grid (as a scan does) and rasterise the "
                    "inventory's polygons onto it: 1 where a polygon of a chosen class covers the pixel "
                    "(its centre, or any part with --all-touched), 0 elsewhere inside the mapped area, "
                    "255 (ignored) outside it and where the scene has no data. The labelled area is cut "
                    "along --split-axis into OUT/train and OUT/val (separate rasters, a --gap-px band "
                    "between them in neither), each with image.tif, labels.tif and dataset.json: the "
                    "layout `landslide train/evaluate/compare` read. See docs/datasets_from_inventories.md.",
        epilog="Example (Iburi 2018): landslide make-dataset --region iburi-2018 --labels "
               "iburi_2018_inventory_west.gpkg --class scar=collapse_scars --class deposit=deposits "
               "--mapped-area mapped_area --attribution ATTRIBUTION.txt --out build/iburi_real")
    where = mk.add_argument_group("scene")
    options.add_region(where, required=True)
    options.add_bbox(where)
    options.add_catalog(where)
    where.add_argument("--bands", type=lambda s: [b.strip() for b in s.split(",") if b.strip()],
                       metavar="B02,B03,...",
                       help="spectral bands to stack (default: every band a local scene has; "
                            "B02,B03,B04,B08 for remote sources); SLOPE and DEM come with a DEM")
    where.add_argument("--cache-dir", metavar="DIR", help="download cache of remote sources")
    where.add_argument("--event-date", type=_date, metavar="YYYY-MM-DD",
                       help="bi-temporal images for event-mode detectors: the post-event scene "
                            "(14 channels) and the pre-event one (PRE_B01..PRE_B12), chosen as "
                            "`landslide scan --event-date` chooses them")
    where.add_argument("--pre-days", type=int, default=defaults.PRE_DAYS, metavar="N",
                       help=f"pre-event window: the N days before --event-date ({defaults.PRE_DAYS})")
    where.add_argument("--post-days", type=int, default=defaults.POST_DAYS, metavar="N",
                       help=f"post-event window: --event-date and the N days after ({defaults.POST_DAYS})")
    lab = mk.add_argument_group("labels")
    lab.add_argument("--labels", required=True, metavar="FILE",
                     help="the inventory: any vector file OGR reads (GeoPackage, shapefile, "
                          "GeoJSON...), any CRS (reprojected to the grid)")
    lab.add_argument("--class", dest="class_specs", action="append", default=[],
                     metavar="NAME=LAYER[+LAYER]",
                     help="a class made of one or more layers of --labels (repeatable), e.g. "
                          "--class scar=collapse_scars --class deposit=deposits")
    lab.add_argument("--label-layer", dest="label_layers", action="append", default=[],
                     metavar="LAYER", help="a layer of --labels as a class of the same name (repeatable)")
    lab.add_argument("--classes", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                     metavar="A,B",
                     help="which classes count as landslide (default: all defined; without "
                          "--class/--label-layer the names are layers of --labels)")
    lab.add_argument("--mapped-area", metavar="LAYER|FILE",
                     help="the area the inventory covers: a layer of --labels, or another vector "
                          "file; outside it labels are 255 (default: the whole ROI counts as mapped)")
    lab.add_argument("--mapped-area-layer", metavar="LAYER",
                     help="the layer of a --mapped-area FILE that has several")
    lab.add_argument("--all-touched", action="store_true",
                     help="burn every pixel a polygon touches (default: pixels whose centre it covers)")
    lab.add_argument("--attribution", action="append", default=[], metavar="TEXT|FILE",
                     help="attribution the labels' licence requires (repeatable; a file's text or "
                          "the text itself), written to OUT/ATTRIBUTION.txt and dataset.json; "
                          "required when a README beside --labels sets attribution terms")
    split = mk.add_argument_group("split")
    split.add_argument("--split-axis", choices=["lat", "lon"], default="lat",
                       help="lat: validation is the southern part; lon: the eastern part (lat)")
    split.add_argument("--val-fraction", type=float, default=VAL_FRACTION, metavar="F",
                       help=f"share of the labelled rows (columns) that is validation ({VAL_FRACTION:g})")
    split.add_argument("--gap-px", type=int, default=GAP_PX, metavar="N",
                       help=f"pixels between training and validation, in neither ({GAP_PX} = one patch)")
    out = mk.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    out.add_argument("--name", help="dataset name recorded in dataset.json and model cards "
                                    "(default: LABELS-STEM-REGION)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    options.add_no_progress(out)
    out.add_argument("--json", action="store_true", help="print dataset.json")


def cmd_make_dataset(args: argparse.Namespace) -> int:
    import json

    from tasks.datasets.inventory import build_inventory_dataset

    s = build_inventory_dataset(
        args.out, args.labels, args.region, class_specs=args.class_specs,
        label_layers=args.label_layers, classes=args.classes, mapped_area=args.mapped_area,
        mapped_area_layer=args.mapped_area_layer, all_touched=args.all_touched,
        val_fraction=args.val_fraction, split_axis=args.split_axis, gap_px=args.gap_px,
        catalog_path=args.catalog, bbox=args.bbox, bands=args.bands, name=args.name,
        attribution=args.attribution, overwrite=args.overwrite, cache_dir=args.cache_dir,
        progress=not args.no_progress, event_date=args.event_date, pre_days=args.pre_days,
        post_days=args.post_days)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    for part in ("train", "val"):
        c, b = s[part], s["spatial_split"][f"{part}_lonlat"]
        classes = ", ".join(f"{k} {v}" for k, v in c["class_px"].items())
        print(f"{part}: {c['landslide_px']} landslide px ({classes}), {c['background_px']} "
              f"background px, {c['ignored_px']} ignored px; lon {b[0]:.4f}..{b[2]:.4f}, "
              f"lat {b[1]:.4f}..{b[3]:.4f}")
    print(f"split: {s['split']}")
    print(f"-> {s['out']}")
    return 0


HANDLERS = {"make-dataset": cmd_make_dataset}
