"""CLI: review detected landslides (confirm / reject / note) and export the decisions as labels.

    landslide review state/iburi-2018/inventory.gpkg --id 12 --id 15 --confirm --note "fresh scar"
    landslide reviews state/iburi-2018/inventory.gpkg [--polygons [--status confirmed]] [--json]
    landslide export-labels state/iburi-2018/inventory.gpkg --out labels.gpkg

Storage, atomicity and the labels' meaning: tasks/inventory/review.py and docs/review.md.
"""

from __future__ import annotations

import argparse
import os

GPKG_HELP = ("a regional inventory (STATE_DIR/REGION/inventory.gpkg; ids are inventory_id) or a "
             "run's landslides.gpkg (ids are landslide_id)")


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    rv = sub.add_parser(
        "review", help="confirm or reject detected landslides, or leave a note",
        description="Save a review decision on one or more polygons of GPKG in one transaction: "
                    "their review_status (confirmed | rejected; --note-only keeps it), reviewed_by, "
                    "reviewed_at and review_note, plus one row each in the append-only reviews "
                    "layer. Safe while other reviewers or a regional merge write the same file.",
        epilog="Example: landslide review state/iburi-2018/inventory.gpkg --id 12 --id 15 --confirm")
    rv.add_argument("gpkg", metavar="GPKG", help=GPKG_HELP)
    rv.add_argument("--id", dest="ids", action="append", type=int, required=True, metavar="N",
                    help="polygon id (repeatable)")
    what = rv.add_mutually_exclusive_group(required=True)
    what.add_argument("--confirm", dest="decision", action="store_const", const="confirm",
                      help="a landslide")
    what.add_argument("--reject", dest="decision", action="store_const", const="reject",
                      help="no landslide there")
    what.add_argument("--note-only", dest="decision", action="store_const", const="note",
                      help="leave a note, keep the status (needs --note)")
    rv.add_argument("--note", metavar="TEXT", help="a note stored with the decision")
    rv.add_argument("--by", metavar="NAME", default=None,
                    help="who decides (default: $USER, else the login name)")
    rv.add_argument("--json", action="store_true", help="print the entries written as JSON")

    ls = sub.add_parser(
        "reviews", help="the review history of a GeoPackage, or its polygons with their review state",
        description="Print the reviews layer (oldest first), or with --polygons every polygon's "
                    "review_status, reviewer, time and note (a file never reviewed: all unreviewed).")
    ls.add_argument("gpkg", metavar="GPKG", help=GPKG_HELP)
    ls.add_argument("--polygons", action="store_true", help="the polygons with their review state")
    ls.add_argument("--status", choices=("unreviewed", "confirmed", "rejected"),
                    help="with --polygons: only those in this state")
    ls.add_argument("--id", dest="polygon_id", type=int, metavar="N",
                    help="only this polygon's history")
    ls.add_argument("--json", action="store_true", help="print JSON")

    ex = sub.add_parser(
        "export-labels", help="reviewed polygons as a labels file for landslide make-dataset",
        description="Write layers confirmed (landslides), rejected (looked at: no landslide) and "
                    "reviewed_area (where the labels are known: both, minus their overlaps) to "
                    "--out. Unreviewed ground is unknown, not background: use "
                    "`landslide make-dataset --labels OUT --class landslide=confirmed "
                    "--mapped-area reviewed_area` (1 in confirmed, 0 in rejected, 255 elsewhere).")
    ex.add_argument("gpkg", metavar="GPKG", help=GPKG_HELP)
    ex.add_argument("--out", required=True, metavar="FILE", help="labels GeoPackage to write (.gpkg)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _print_json(value) -> None:
    import json

    print(json.dumps(value, indent=2))


def _login_name() -> str:
    """$USER, else the login name the system knows ("" when none: record_review refuses)."""
    import getpass

    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return ""


def cmd_review(args: argparse.Namespace) -> int:
    from tasks.core.errors import InputError
    from tasks.inventory.review import record_review

    if args.note is not None and not args.note.strip():
        raise InputError("--note is empty: give the note's text or leave --note out")
    reviewer = args.by if args.by is not None else _login_name()
    entries = record_review(args.gpkg, args.ids, args.decision, reviewer, args.note)
    if args.json:
        _print_json([e.as_dict() for e in entries])
        return 0
    for e in entries:
        note = f" ({e.review_note})" if e.review_note else ""
        print(f"{e.polygon_id}: {e.decision} -> {e.review_status} by {e.reviewed_by} at "
              f"{e.reviewed_at.isoformat(timespec='milliseconds')}{note}")
    return 0


def cmd_reviews(args: argparse.Namespace) -> int:
    from tasks.core.errors import InputError
    from tasks.inventory.review import list_polygons, review_history, review_key

    if args.status and not args.polygons:
        raise InputError("--status filters the polygons: add --polygons")
    key = review_key(args.gpkg)
    if args.polygons:
        polys = list_polygons(args.gpkg, args.status)
        if args.polygon_id is not None:
            polys = [p for p in polys if p.polygon_id == args.polygon_id]
        if args.json:
            _print_json({"key": key, "polygons": [p.as_dict() for p in polys]})
            return 0
        counts = {}
        for p in polys:
            counts[p.review_status] = counts.get(p.review_status, 0) + 1
        for p in polys:
            when = p.reviewed_at.isoformat(timespec="milliseconds") if p.reviewed_at else ""
            print(f"{key} {p.polygon_id}: {p.review_status} {p.reviewed_by or ''} {when} "
                  f"{p.review_note or ''}".rstrip())
        print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no polygons")
        return 0
    entries = review_history(args.gpkg, args.polygon_id)
    if args.json:
        _print_json({"key": key, "reviews": [e.as_dict() for e in entries]})
        return 0
    for e in entries:
        note = f" ({e.review_note})" if e.review_note else ""
        print(f"#{e.entry_id} {e.reviewed_at.isoformat(timespec='milliseconds')} {e.reviewed_by}: "
              f"{key} {e.polygon_id} {e.decision} -> {e.review_status}{note}")
    print(f"{len(entries)} review entries")
    return 0


def cmd_export_labels(args: argparse.Namespace) -> int:
    from tasks.inventory.review import export_labels

    r = export_labels(args.gpkg, args.out, args.overwrite)
    conflict = (f"; {r.conflict_area_m2:.0f} m2 where confirmed and rejected polygons overlap "
                "left out" if r.conflict_area_m2 else "")
    print(f"{r.confirmed} confirmed, {r.rejected} rejected polygons ({r.unreviewed} unreviewed "
          f"left out); reviewed area {r.reviewed_area_m2 / 1e6:.4f} km2{conflict} -> {r.out}")
    print(f"next: landslide make-dataset --labels {r.out} --class landslide=confirmed "
          "--mapped-area reviewed_area --region R ...")
    return 0


HANDLERS = {"review": cmd_review, "reviews": cmd_reviews, "export-labels": cmd_export_labels}
