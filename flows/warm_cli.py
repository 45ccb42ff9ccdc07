"""``landslide warm``: show or stop the warm processes that start one-off scans (flows/warm.py)."""

from __future__ import annotations

import argparse
import time

from flows import warm


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "warm", help="show (or --stop) the warm processes that let a scan skip its start-up",
        description="A scan starts, once it has finished, a warm process that has torch, the raster "
                    "stack and the report already imported; the next `landslide scan` with the same "
                    "Python, environment and code is a fork of it and starts in about a second. It "
                    "exits after LANDSLIDE_WARM_IDLE_S seconds without a scan (default 900). "
                    "LANDSLIDE_WARM=0 turns it off. This lists them, one line each, or stops them.",
        epilog="Example: landslide warm --stop")
    p.add_argument("--stop", action="store_true",
                   help="stop every warm process of this user (a scan running in one is interrupted "
                        "as by Ctrl-C: its finished blocks are kept)")


def cmd_warm(args: argparse.Namespace) -> int:
    if args.stop:
        n = warm.stop_all()
        print(f"stopped {n} warm process{'es' if n != 1 else ''}")
        return 0
    found = warm.running()
    if not found:
        state = "" if warm.enabled() else " (LANDSLIDE_WARM is off)"
        print(f"no warm process{state}; the next scan starts one")
    for info in found:
        age_min = (time.time() - float(info["started"])) / 60
        print(f"pid {info['pid']}: up {age_min:.0f} min, {info['scans']} scans, {info['running']} running"
              f"{', matches this environment' if info['current'] else ''} ({info['socket']})")
    return 0


HANDLERS = {"warm": cmd_warm}
