"""The command line's shared options, each defined once (the pattern of rasterio's ``rio/options.py``).

argparse has no option objects, so each shared option is a function ``add_NAME(parser, **overrides)``
that adds it to a parser or an argument group with its flags, dest, type, default and help written
here, once; ``overrides`` go to ``add_argument`` for the subcommand that needs, e.g., ``required=True``,
another ``dest`` its handler already reads, or a narrower help. Each returns the argparse action.

Scan defaults come from ``tasks.core.defaults`` and help texts format them from there. Light on
purpose: nothing heavier than ``argparse`` and ``tasks.core.defaults`` (no numpy, torch, rasterio,
prefect, nothing else of ``tasks``), so ``landslide --help`` stays fast.

Not shared here, on purpose: options that share a spelling but not a meaning, e.g. training's
``--batch-size`` (``flows.train_cli``), the ensemble card's ``--threshold``, and every ``--out`` and
``--data-dir``.
"""

from __future__ import annotations

import argparse
from typing import Any

from tasks.core import defaults

# options whose value may start with '-' (a western or southern coordinate); see join_negative_values
NEGATIVE_VALUE_OPTIONS = ("--bbox",)


def _add(parser: Any, flags: tuple[str, ...], overrides: dict[str, Any], **spec: Any) -> argparse.Action:
    """``parser.add_argument(*flags, **spec)`` with ``overrides`` taking precedence over ``spec``."""
    return parser.add_argument(*flags, **{**spec, **overrides})


# ---------------------------------------------------------------------------------------------
# value parsers


def parse_bbox(text: str) -> list[float]:
    """``"minx,miny,maxx,maxy"`` -> four floats (the ``type`` of ``--bbox``); the order of the
    corners is checked later, with the other ROI checks (``tasks.core.grid.check_bbox``)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bbox {text!r}: expected minx,miny,maxx,maxy numbers") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--bbox {text!r}: expected 4 numbers minx,miny,maxx,maxy")
    return values


def parse_batch_size(text: str) -> int | str:
    """``"16"`` -> 16, ``"auto"`` -> ``"auto"`` (the ``type`` of the scan's ``--batch-size``; the
    plan resolves ``auto`` to a number once: ``models.detectors.auto_batch_size``)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-size {text!r}: expected a whole number or 'auto'") from None


def parse_formats(text: str) -> list[str]:
    """``"geojson,csv"`` -> ``["geojson", "csv"]`` (the ``type`` of ``--format``, which repeats)."""
    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in defaults.EXPORT_FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--format {text!r}: choose from "
                                         f"{', '.join(defaults.EXPORT_FORMATS)} (comma-separated or repeated)")
    return names


def join_negative_values(argv: list[str]) -> list[str]:
    """``--bbox -75.7,37.6,...`` -> ``--bbox=-75.7,37.6,...``: argparse would take a value that
    starts with '-' (any western or southern coordinate) for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (arg in NEGATIVE_VALUE_OPTIONS and nxt and nxt.startswith("-")
                and nxt[1:2].replace(".", "").isdigit()):
            out.append(f"{arg}={nxt}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


# ---------------------------------------------------------------------------------------------
# where: catalog, region, ROI


def add_catalog(parser: Any, **overrides: Any) -> argparse.Action:
    """``--catalog PATH`` -> ``args.catalog`` (None: the default resolution of
    ``tasks.sources.catalog.default_catalog_path``)."""
    return _add(parser, ("--catalog",), overrides, metavar="PATH",
                help="catalog file (default: $LANDSLIDE_CATALOG, else ./data_catalog.yaml, else the "
                     "one shipped with the package)")


def add_region(parser: Any, **overrides: Any) -> argparse.Action:
    """``--region NAME`` -> ``args.region``."""
    return _add(parser, ("--region",), overrides, metavar="NAME",
                help="a region of the catalog (see `landslide regions`)")


def add_bbox(parser: Any, **overrides: Any) -> argparse.Action:
    """``--bbox MINX,MINY,MAXX,MAXY`` -> ``args.bbox`` (four floats, or None). The CLI's entry point
    passes argv through ``join_negative_values`` so a negative first coordinate parses."""
    return _add(parser, ("--bbox",), overrides, type=parse_bbox, metavar="MINX,MINY,MAXX,MAXY",
                help="ROI in EPSG:4326 degrees; restricts the region's area")


# ---------------------------------------------------------------------------------------------
# detector and inference


def add_checkpoint(parser: Any, **overrides: Any) -> argparse.Action:
    """``--checkpoint``/``--detector NAME|PATH|index`` -> ``args.detector`` (None: the shipped
    model). Subcommands whose handler reads ``args.checkpoint`` pass ``dest="checkpoint"``."""
    return _add(parser, ("--checkpoint", "--detector"), overrides, dest="detector",
                metavar="NAME|PATH|index",
                help="model card name in models/checkpoints, a path to a .json card (an ensemble "
                     "card too) or to an exported .onnx, or 'index' for the weights-free bare-soil "
                     "rule (default: the shipped model)")


def add_device(parser: Any, **overrides: Any) -> argparse.Action:
    """``--device`` -> ``args.device``."""
    return _add(parser, ("--device",), overrides, default=defaults.DEVICE,
                help=f"auto (CUDA if present, else CPU), cpu, cuda or cuda:N "
                     f"(default: {defaults.DEVICE})")


def add_batch_size(parser: Any, **overrides: Any) -> argparse.Action:
    """``--batch-size N|auto`` -> ``args.batch_size``: inference patches per forward pass. (Training's
    ``--batch-size`` is another quantity with another default; ``flows.train_cli`` defines it.)"""
    return _add(parser, ("--batch-size",), overrides, type=parse_batch_size,
                default=defaults.BATCH_SIZE, metavar="N|auto",
                help=f"patches per forward pass ({defaults.BATCH_SIZE}); 'auto': on a CUDA GPU the "
                     f"largest power of two that fits in its memory, {defaults.BATCH_SIZE} on the "
                     "CPU (resolved once at planning, recorded in the manifest)")


def add_overlap(parser: Any, **overrides: Any) -> argparse.Action:
    """``--overlap PX`` -> ``args.overlap_px``."""
    return _add(parser, ("--overlap",), overrides, type=int, default=defaults.OVERLAP_PX,
                dest="overlap_px", metavar="PX",
                help=f"patch overlap in pixels for seam-free blending ({defaults.OVERLAP_PX})")


def add_threshold(parser: Any, **overrides: Any) -> argparse.Action:
    """``--threshold P`` -> ``args.threshold`` (None: the detector card's). Not the ensemble card's
    ``--threshold`` (the value written into a new card), which ``flows.train_cli`` defines."""
    return _add(parser, ("--threshold",), overrides, type=float,
                help="probability threshold (default: the detector card's)")


# ---------------------------------------------------------------------------------------------
# run


def add_no_progress(parser: Any, **overrides: Any) -> argparse.Action:
    """``--no-progress`` -> ``args.no_progress``."""
    return _add(parser, ("--no-progress",), overrides, action="store_true", help="no progress bars")


def add_format(parser: Any, **overrides: Any) -> argparse.Action:
    """``--format gpkg|geojson|csv|parquet`` (repeatable, or comma-separated) -> ``args.formats``:
    the extra exports of the landslides layer beside landslides.gpkg."""
    return _add(parser, ("--format",), overrides, dest="formats", type=parse_formats, action="extend",
                default=[], metavar="|".join(defaults.EXPORT_FORMATS),
                help="also write the landslides layer as landslides.geojson (EPSG:4326, RFC 7946), "
                     "landslides.csv (WKT in EPSG:4326) or landslides.parquet (GeoParquet, needs "
                     "pyarrow); repeat or comma-separate; default: gpkg only")
