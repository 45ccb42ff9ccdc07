"""``python -m flows.warm_server SOCKET``: the warm process of flows/warm.py (started by a scan;
not a command for users). Each scan it forks runs ``flows.cli.main``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows import warm
from flows.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.warm_server", description=__doc__.split("\n\n")[0])
    p.add_argument("socket", type=Path, help="the Unix socket to listen on")
    args = p.parse_args(argv)
    idle_s = float(os.environ.get("LANDSLIDE_WARM_IDLE_S", warm.DEFAULT_IDLE_S))
    return warm.serve(args.socket, idle_s, cli_main)


if __name__ == "__main__":
    sys.exit(main())
