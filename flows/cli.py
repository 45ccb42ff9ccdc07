"""``landslide``: the command line.

    landslide scan --region iburi-2018 --out runs/iburi
    landslide regions
    landslide models
    landslide train ...      (see `landslide train --help`)
    landslide evaluate ...   (see `landslide evaluate --help`)
    landslide dev-server stac|sentinelhub   (local test servers; see `landslide dev-server --help`)

User mistakes print one line ``error: ...`` on stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from flows import options
from tasks.core import defaults

EXIT_INPUT = 2
EXIT_FAILED = 1


def _offline_defaults() -> None:
    """Prefect/HF settings for machines without internet (users can override them)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,models")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one ``error:`` line (exit 2), not a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_INPUT, f"error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    """``landslide-pipeline X.Y.Z (Python A.B.C)`` from the installed metadata (imports nothing heavy)."""
    import platform
    from importlib import metadata

    try:
        version = metadata.version("landslide-pipeline")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown (not installed)"
    return f"landslide-pipeline {version} (Python {platform.python_version()})"


def _command_modules() -> tuple:
    """The modules that add subcommands (``add_subcommands(sub)``) and their ``HANDLERS``, in the
    order ``--help`` lists them."""
    from flows import (
        app_cli,
        dataset_cli,
        dem_cli,
        dem_compare_cli,
        dev_server_cli,
        patch_cli,
        regional_cli,
        review_cli,
        train_cli,
        warm_cli,
    )

    return (train_cli, dataset_cli, dev_server_cli, regional_cli, review_cli, dem_cli, dem_compare_cli,
            patch_cli, app_cli, warm_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="landslide",
        description="Find landslides in Sentinel-2 imagery and write polygons to a GeoPackage.",
        epilog="Example: landslide scan --region iburi-2018 --out runs/iburi",
    )
    parser.add_argument("--version", action="version", version=_version(),
                        help="print the package version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    scan = sub.add_parser(
        "scan", help="one-off scan of a region/ROI -> run folder with landslides.gpkg",
        description=f"Scan a region or ROI: align bands + DEM on a UTM grid ({defaults.RES_M:g} m unless "
                    "--res-m), tile, predict, stitch, clean, vectorize. Writes landslides.gpkg (layers "
                    "landslides, footprint), probability.tif, uncertainty.tif, mask.tif (COGs), "
                    "manifest.json, quicklook.png, report.html and item.json (STAC) into --out, "
                    "plus the --format exports.")
    where = scan.add_argument_group("where and when")
    options.add_region(where)
    where.add_argument("--source", help="a source of the catalog (default: the region's)")
    options.add_bbox(where)
    where.add_argument("--aoi", metavar="FILE[:LAYER]",
                       help="ROI polygon(s): GeoJSON, GeoPackage (file.gpkg:layer), shapefile or any "
                            "vector file GDAL reads, in any CRS it declares (reprojected)")
    where.add_argument("--start", metavar="YYYY-MM-DD", help="first acquisition date to consider")
    image = scan.add_argument_group(
        "one raster file (--image)",
        "Scan a multi-band raster (GeoTIFF or any file GDAL reads) without a catalog entry; the ROI is "
        "the whole image unless --bbox/--aoi. Excludes --region, --source, --catalog, --event-date, "
        "--start/--end. See README 'Scan a GeoTIFF directly'.")
    image.add_argument("--image", metavar="FILE", help="the raster to scan")
    image.add_argument("--bands", dest="image_bands", metavar="B02,B03,...",
                       help="Sentinel-2 name of each band of --image, in band order (default: the "
                            "file's band descriptions)")
    image.add_argument("--dem", metavar="FILE", help="DEM raster in metres covering --image (SLOPE "
                                                     "and DEM channels, terrain attributes)")
    image.add_argument("--acquired", metavar="YYYY-MM-DD[THH:MM[:SS]]",
                       help="acquisition time of --image, UTC (default: the file's metadata, else "
                            "recorded as unknown)")
    where.add_argument("--end", metavar="YYYY-MM-DD", help="last acquisition date to consider")
    event = scan.add_argument_group(
        "event mode (pre/post)",
        "With --event-date the scan takes the best scene after the date and the best scene before "
        "it, runs a bi-temporal detector (the default one unless --checkpoint) on both, and adds "
        "each polygon's pre-to-post change (pre_scene_id, change_index, mean_change). "
        "See docs/event_mode.md.")
    event.add_argument("--event-date", metavar="YYYY-MM-DD",
                       help="the event (earthquake, storm) date; replaces --start/--end")
    event.add_argument("--pre-days", type=int, default=defaults.PRE_DAYS, metavar="N",
                       help=f"pre-event window: the N days before the event ({defaults.PRE_DAYS})")
    event.add_argument("--post-days", type=int, default=defaults.POST_DAYS, metavar="N",
                       help="post-event window: the event date and the N days after it "
                            f"({defaults.POST_DAYS})")
    where.add_argument("--cache-dir", metavar="DIR",
                       help="download cache of remote sources (default $LANDSLIDE_CACHE or "
                            "~/.cache/landslide-pipeline); a rerun makes no new requests")
    options.add_catalog(where)
    what = scan.add_argument_group("detector")
    options.add_checkpoint(what)
    options.add_device(what)
    options.add_batch_size(what)
    options.add_overlap(what)
    # scan-only options below; their defaults are the scan's, from tasks.core.defaults
    what.add_argument("--res-m", type=float, default=defaults.RES_M,
                      help=f"analysis grid pixel size in m ({defaults.RES_M:g})")
    what.add_argument("--block-px", type=int, default=defaults.BLOCK_PX,
                      help=f"block side in pixels: bounds memory, not the result ({defaults.BLOCK_PX})")
    what.add_argument("--workers", type=int, default=defaults.WORKERS, metavar="N",
                      help="run blocks on a local Dask cluster of N single-thread worker processes "
                           f"({defaults.WORKERS}: no cluster)")
    what.add_argument("--dask-address", metavar="tcp://HOST:PORT",
                      help="run blocks on an existing Dask scheduler (workers must see --out)")
    post = scan.add_argument_group("cleanup")
    options.add_threshold(post)
    post.add_argument("--opening-radius-px", type=int, default=defaults.OPENING_RADIUS_PX,
                      help=f"morphological opening radius ({defaults.OPENING_RADIUS_PX})")
    post.add_argument("--closing-radius-px", type=int, default=defaults.CLOSING_RADIUS_PX,
                      help=f"morphological closing radius ({defaults.CLOSING_RADIUS_PX})")
    post.add_argument("--fill-holes-max-area-m2", type=float, default=defaults.FILL_HOLES_MAX_AREA_M2,
                      help="fill holes smaller than this inside detections "
                           f"({defaults.FILL_HOLES_MAX_AREA_M2:g}; 0 disables)")
    post.add_argument("--min-area-m2", type=float, default=defaults.MIN_AREA_M2,
                      help=f"drop detections smaller than this ({defaults.MIN_AREA_M2:g} m2 = "
                           f"{defaults.MIN_AREA_M2 / defaults.RES_M ** 2:g} pixels at {defaults.RES_M:g} m)")
    shape_g = scan.add_argument_group("polygon outlines")
    shape_g.add_argument("--simplify-m", type=float, default=defaults.SIMPLIFY_M, metavar="M",
                         help="simplify the pixel outlines, shared corners kept, moving no point "
                              "more than M metres (default: half the pixel diagonal, "
                              f"{defaults.RES_M * 2 ** 0.5 / 2:.2f} m at {defaults.RES_M:g} m; 0 keeps "
                              "the exact pixel outline)")
    shape_g.add_argument("--smooth", action="store_true",
                         help=f"round the simplified outlines ({defaults.SMOOTH_ITERATIONS} passes of "
                              "Chaikin corner cutting; see README)")
    run = scan.add_argument_group("run")
    run.add_argument("--out", default="runs/{run_id}", help="run folder (default runs/<run_id>)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a finished run in --out, or start an interrupted one over "
                          "(without it, rerunning the same command into --out resumes an "
                          "interrupted run, skipping finished blocks)")
    run.add_argument("--wait", action="store_true",
                     help="when another scan is writing into --out, wait for it instead of refusing")
    run.add_argument("--keep-work", action="store_true", help="keep intermediate rasters in --out/.work")
    options.add_format(run)
    run.add_argument("--orchestration", choices=("auto", "prefect", "in-process"), default="auto",
                     help="run the scan as a Prefect flow (against PREFECT_API_URL, or a temporary "
                          "local server that costs 6-8 s), or its same steps in this process "
                          "without Prefect; auto (default): Prefect when a server is configured "
                          "(PREFECT_API_URL in the environment or the active Prefect profile), else "
                          "in-process. The manifest records which")
    options.add_no_progress(run)
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")

    regions = sub.add_parser("regions", help="list the catalog's regions and sources",
                             description="List the regions and sources of the catalog.")
    options.add_catalog(regions)

    models_p = sub.add_parser("models", help="list architectures and shipped checkpoints",
                              description="List the source paper's 12 architectures and the shipped "
                                          "checkpoints in models/checkpoints: network, size, bands, "
                                          "labels (real or weak) and the metrics each card records.")
    models_p.add_argument("--json", action="store_true")

    for module in _command_modules():
        module.add_subcommands(sub)
    return parser


def cmd_scan(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from tasks.core.errors import InputError
    from tasks.run.request import new_run_id, precheck_request

    run_id = new_run_id()
    try:
        request = _scan_request(args, run_id)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        flag = {"image_bands": "bands"}.get(field, field).replace("_", "-")
        raise InputError(f"--{flag}: {first['msg'].removeprefix('Value error, ')}") from None
    # options, catalog, region, output folder and checkpoint name: refused in well under a second,
    # before torch, the raster stack or Prefect are imported
    precheck_request(request)
    mode, why = _orchestration(args.orchestration)
    from flows.interrupts import exit_cleanly_on_interrupt, mark_process, reap_orphaned_servers
    from flows.logs import log_to_stderr

    # Ctrl-C from here on: one line, the server and workers stopped, staging removed, exit 130;
    # in-process, the pipeline's log lines go to stderr as a Prefect run would show them
    with exit_cleanly_on_interrupt(request.out), \
            (log_to_stderr() if mode == "in-process" else contextlib.nullcontext()):
        print(f"scan {run_id}: {_where(request)} -> {request.out} ({mode}; loading the detector and "
              "planning)", file=sys.stderr, flush=True)
        from tasks.run.outputs import run_folder_lock
        from tasks.run.plan import plan_scan

        def waiting(holder: str) -> None:
            print(f"waiting: another scan ({holder}) is writing into {request.out}", file=sys.stderr)

        mark_process()  # what this scan starts (Prefect's server, Dask workers) carries its pid
        reap_orphaned_servers()  # what scans killed with kill -9 left running
        try:
            # one run per folder: the lock is held from planning to publishing (the flow re-enters it)
            with run_folder_lock(request.out, wait=request.wait, on_wait=waiting):
                plan = plan_scan(request)  # every user mistake surfaces here, before Prefect starts
                if plan.resumed:
                    print(f"resuming the interrupted run {plan.run_id} in {request.out}", file=sys.stderr)
                # the flow's plan step finds this plan (same run id) and uses it as it is
                return _run_scan(args, request.model_copy(update={"run_id": plan.run_id}), mode, why)
        finally:
            from flows import warm

            warm.start_in_background()  # the next scan forks from it: no start-up (flows/warm.py)


def _where(request) -> str:
    parts = ([f"image {request.image}"] if request.image else
             [f"region {request.region}"] if request.region else [f"source {request.source}"])
    if request.bbox:
        parts.append("bbox " + ",".join(f"{v:g}" for v in request.bbox))
    if request.aoi:
        parts.append(f"aoi {request.aoi}")
    return ", ".join(parts)


def _scan_request(args: argparse.Namespace, run_id: str):
    """The ScanRequest of the parsed options (each option's ``dest`` is the request field)."""
    from tasks.run.request import ScanRequest

    given = {name: getattr(args, name) for name in ScanRequest.model_fields if hasattr(args, name)}
    return ScanRequest(**{**given, "out": args.out.replace("{run_id}", run_id),
                          "progress": not args.no_progress, "run_id": run_id})


def configured_prefect_api_url() -> str | None:
    """The Prefect server a user has configured: ``PREFECT_API_URL`` in the environment, else in the
    active profile of ``$PREFECT_HOME/profiles.toml`` (read as TOML: Prefect is not imported)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return (profiles.get("profiles", {}).get(active, {}) or {}).get("PREFECT_API_URL") or None


def _orchestration(choice: str) -> tuple[str, str]:
    """(``prefect`` or ``in-process``, why)."""
    if choice != "auto":
        return choice, f"--orchestration {choice}"
    url = configured_prefect_api_url()
    if url:
        return "prefect", f"Prefect server configured ({url})"
    return "in-process", ("no Prefect server configured (PREFECT_API_URL): the scan's steps ran in "
                          "this process; --orchestration prefect makes it a flow run")


def _run_scan(args: argparse.Namespace, request, mode: str, why: str) -> int:
    options = request.model_dump(mode="json", exclude={"region", "bbox", "aoi", "start", "end",
                                                       "detector", "out"})
    params = dict(out=request.out, region=request.region,
                  bbox=list(request.bbox) if request.bbox else None, aoi=request.aoi,
                  start=args.start, end=args.end, detector=request.detector, options=options)
    if mode == "prefect":
        from flows.scan import scan_flow

        result = scan_flow(**params)
    else:
        from flows.warm import warm_process_record
        from tasks.run.pipeline import scan_in_process

        result = scan_in_process(**params, reason=why, process=warm_process_record())
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        c = result["counts"]
        if not c["valid_fraction"]:  # 0 polygons here means "not looked at", never "none found"
            print(f"nothing was analysed ({c['footprint_status']}): 0 landslide polygons -> "
                  f"{result['out']}/landslides.gpkg")
        else:
            print(f"{c['polygons']} landslide polygons ({c['landslide_area_m2'] / 1e6:.3f} km2) "
                  f"-> {result['out']}/landslides.gpkg")
    return 0


def cmd_regions(args: argparse.Namespace) -> int:
    from tasks.sources.catalog import load_catalog

    catalog = load_catalog(args.catalog)
    print("regions:")
    for name, region in sorted(catalog.regions.items()):
        print(f"  {name:20s} source={region.source}  bbox={list(region.bbox) if region.bbox else region.aoi}"
              f"  {region.description}")
    print("sources:")
    for name, source in sorted(catalog.sources.items()):
        print(f"  {name:20s} kind={source.kind}")
    return 0


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.0f} kB"


def _print_card(summary) -> None:
    default = "  (default)" if summary.default else ""
    print(f"  {summary.name}{default}")
    params = f", {summary.parameters / 1e6:.2f} M parameters" if summary.parameters else ""
    dtype = f" {summary.weights_dtype}" if summary.weights_dtype else ""
    print(f"      network  {summary.network}{params}, {_size_text(summary.size_bytes)}{dtype}")
    if summary.members:
        print(f"      members  {', '.join(summary.members)}")
    print(f"      bands    {' '.join(summary.bands)}")
    text = summary.labels_text
    if not text.lower().startswith(summary.labels):
        text = f"{summary.labels}: {text}"
    print(f"      labels   {text[:160]}{'...' if len(text) > 160 else ''}")
    if summary.dataset or summary.split:
        print(f"      data     {summary.dataset}; {summary.split}")
    for m in summary.metrics:
        figures = "  ".join(f"{label} {value:.3f}" for label, value in
                            (("F1", m.f1), ("IoU", m.iou), ("P", m.precision), ("R", m.recall))
                            if value is not None)
        print(f"      {m.name + ':':<9s}{figures}  [{m.basis}]")


def cmd_models(args: argparse.Namespace) -> int:
    from models.cards import PAPER_MODEL_NAMES, summarize_checkpoints

    summaries = summarize_checkpoints()
    if args.json:
        print(json.dumps({"architectures": list(PAPER_MODEL_NAMES),
                          "checkpoints": [s.as_dict() for s in summaries]}, indent=2))
        return 0
    print("architectures (train with `landslide train --model NAME`):")
    for name in PAPER_MODEL_NAMES:
        print(f"  {name}")
    print("shipped checkpoints (use with `landslide scan --checkpoint NAME`; metrics are those the "
          "card records, on the data and split it names):")
    for summary in summaries:
        _print_card(summary)
    return 0


def _exception_chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _environment_error(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for what the machine refused (a full disk, a file name too long), wherever in GDAL,
    SQLite or Python it surfaced; None for anything else (a bug: exit 1)."""
    import errno

    for e in _exception_chain(exc):
        code, text = getattr(e, "errno", None), str(e)
        if code == errno.ENOSPC or "No space left on device" in text or "database or disk is full" in text:
            out = getattr(args, "out", None)
            if out and "{run_id}" not in out:
                from tasks.run.outputs import disk_full_message

                return disk_full_message(out)
            return "no space left on device; nothing was published: free space and run the command again"
        if code == errno.ENAMETOOLONG or "File name too long" in text:
            name = getattr(e, "filename", None)
            return (f"a file name is too long for the file system{f' ({name})' if name else ''}: "
                    "use shorter folder or file names (at most 255 bytes a component)")
    return None


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["scan"]:  # a warm process with everything imported runs it, where one answers
        from flows import warm

        warm.remember_start()
        code = warm.run_in_warm_process(argv)
        if code is not None:
            return code
    parser = build_parser()
    args = parser.parse_args(options.join_negative_values(argv))
    if args.command is None:
        parser.print_help()
        return EXIT_INPUT
    from tasks.core.errors import LandslideError

    handlers = {"scan": cmd_scan, "regions": cmd_regions, "models": cmd_models}
    for module in _command_modules():
        handlers.update(module.HANDLERS)
    try:
        return handlers[args.command](args)
    except LandslideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("error: interrupted; nothing was published", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI boundary: a bug or an environment failure, not a user mistake
        line = _environment_error(exc, args)
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
            return EXIT_INPUT
        import logging

        logging.getLogger("landslide").debug("unexpected failure", exc_info=True)
        print(f"error: {type(exc).__name__}: {exc} (nothing was published; the log above has "
              "details)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
