"""CLI for scheduled-style regional scans and their inventory.

    landslide regional-scan --region iburi-2018 --state-dir state --runs-dir runs/iburi-2018
"""

from __future__ import annotations

import argparse

from flows import options
from tasks.core import defaults


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    add_change(sub)
    reg = sub.add_parser(
        "regional-scan", help="scan a region's scenes not processed yet and update its inventory",
        description="Under the region's lock: merge what an interrupted run left, scan each scene of "
                    "the region not yet processed with this detector (oldest first) into "
                    "RUNS_DIR/<run_id>/, and merge its landslides into STATE_DIR/REGION/inventory.gpkg "
                    "(layers landslides: first_seen, last_seen, detections, status new|known; scans). "
                    "With nothing new it returns at once. The Prefect deployments in prefect.yaml "
                    "run the same flow on a schedule.")
    options.add_region(reg, required=True)
    reg.add_argument("--state-dir", default="state", help="per-region state and inventory (state)")
    reg.add_argument("--runs-dir", default="runs", help="where run folders go (runs)")
    options.add_catalog(reg)
    options.add_checkpoint(reg)
    reg.add_argument("--iou-threshold", type=float, default=defaults.IOU_THRESHOLD,
                     help=f"IoU at which a detection updates a known landslide ({defaults.IOU_THRESHOLD:g})")
    reg.add_argument("--lock-wait-s", type=float, default=0.0,
                     help="wait this long for another run of the region before refusing (0)")
    options.add_format(reg)


def add_change(sub: argparse._SubParsersAction) -> None:
    ch = sub.add_parser(
        "change", help="keep only post-event landslides not already detected before the event",
        description="Drop post-event polygons of which at least --max-pre-overlap of the area was "
                    "already detected on a pre-event scene of the same place (same detector), and "
                    "write the rest, with their pre_overlap fraction, to --out. With an event date "
                    "(--event-date, else the post run's event mode, else the event_date of the post "
                    "run's region in the catalog) the pre run's scenes must end before it and the "
                    "post run's must not.")
    ch.add_argument("--post", required=True, help="post-event run folder (or its landslides.gpkg)")
    ch.add_argument("--pre", required=True, help="pre-event run folder (or its landslides.gpkg)")
    ch.add_argument("--out", required=True, help="GeoPackage to write")
    ch.add_argument("--max-pre-overlap", type=float, default=0.5,
                    help="drop a polygon at or above this covered fraction (0.5)")
    ch.add_argument("--event-date", metavar="YYYY-MM-DD",
                    help="check the runs' dates against this event date (default: the post run's, "
                         "or its region's event_date in the catalog)")
    options.add_catalog(ch)


def cmd_change(args: argparse.Namespace) -> int:
    import datetime as dt

    from tasks.core.errors import InputError
    from tasks.inventory.change import change_event_date, new_since_pre

    given = None
    if args.event_date is not None:
        try:
            given = dt.date.fromisoformat(args.event_date)
        except ValueError:
            raise InputError(f"--event-date wants YYYY-MM-DD, got {args.event_date!r}") from None
    event = change_event_date(args.post, given, args.catalog)
    r = new_since_pre(args.post, args.pre, args.out, args.max_pre_overlap, event)
    if r.event_check:
        print(r.event_check)
    print(f"kept {r.kept} polygons ({r.kept_area_m2 / 1e6:.3f} km2), removed {r.removed} already "
          f"present before the event ({r.removed_area_m2 / 1e6:.3f} km2) -> {r.out}")
    return 0


def cmd_regional_scan(args: argparse.Namespace) -> int:
    from flows.regional import regional_scan_flow
    from models.detectors import load_detector
    from tasks.core.errors import InputError
    from tasks.sources.catalog import load_catalog

    if not 0 < args.iou_threshold <= 1:
        raise InputError(f"--iou-threshold must be in (0, 1], got {args.iou_threshold}")
    load_catalog(args.catalog).region(args.region)  # unknown regions fail before Prefect starts
    load_detector(args.detector, "cpu")
    from tasks.vector.export import check_formats

    check_formats(args.formats)  # parquet needs pyarrow: refused before Prefect starts
    result = regional_scan_flow(args.region, args.state_dir, args.runs_dir, args.detector,
                                args.catalog, args.iou_threshold, args.lock_wait_s,
                                options={"formats": args.formats} if args.formats else None)
    print(result["summary"])
    return 0


HANDLERS = {"regional-scan": cmd_regional_scan, "change": cmd_change}
