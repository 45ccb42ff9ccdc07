"""``landslide app``: start the web app (Streamlit) on this machine.

    landslide app                       # http://127.0.0.1:8501, runs in ./runs, inventories in ./state
    landslide app --port 8600 --runs-dir /data/runs --state-dir /data/state
    landslide app --host 0.0.0.0        # listen on every address (explicit: the app has no login)

The app's settings reach its script through ``LANDSLIDE_APP_*`` environment variables
(``webapp/settings.py``), so the same script runs under ``streamlit run`` too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
DEFAULT_MAX_UPLOAD_MB = 200


def add_subcommands(sub) -> None:
    app = sub.add_parser(
        "app", help="start the web app (new scans, results map, runs, inventories, review)",
        description="Start the Streamlit web app. It listens on 127.0.0.1 unless --host says "
                    "otherwise; its health check is GET /_stcore/health.")
    app.add_argument("--host", default=DEFAULT_HOST,
                     help=f"address to listen on ({DEFAULT_HOST}; 0.0.0.0 listens on every address: "
                          "the app has no login, so only do that on a trusted network)")
    app.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    app.add_argument("--runs-dir", default="runs", help="where scans write run folders, and the runs "
                                                        "the app lists (runs)")
    app.add_argument("--state-dir", default="state",
                     help="regional inventories (STATE_DIR/REGION/inventory.gpkg, as landslide "
                          "regional-scan writes them) (state)")
    app.add_argument("--catalog", help="data_catalog.yaml for the region and source lists (default as "
                                       "for landslide scan)")
    app.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                     help=f"largest file a user may upload ({DEFAULT_MAX_UPLOAD_MB} MB)")
    app.add_argument("--basemap-style", metavar="URL",
                     help="a map style URL (MapLibre/Mapbox style JSON) for a basemap under the "
                          "layers; default none: the map needs no internet")
    app.add_argument("--reviewer", help="name recorded with review decisions (default $USER)")


def cmd_app(args: argparse.Namespace) -> int:
    from tasks.core.errors import InputError

    if not 1 <= args.port <= 65535:
        raise InputError(f"--port must be 1..65535, got {args.port}")
    if args.max_upload_mb < 1:
        raise InputError(f"--max-upload-mb must be >= 1, got {args.max_upload_mb}")
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise InputError("the web app needs Streamlit: pip install -c constraints.txt -e \".[app]\"") from None
    script = Path(__file__).resolve().parents[1] / "webapp" / "app.py"
    env = dict(os.environ)
    env.update({
        "LANDSLIDE_APP_RUNS_DIR": str(Path(args.runs_dir).resolve()),
        "LANDSLIDE_APP_STATE_DIR": str(Path(args.state_dir).resolve()),
        "LANDSLIDE_APP_MAX_UPLOAD_MB": str(args.max_upload_mb),
        "LANDSLIDE_APP_PYTHON": sys.executable,
        # the scans the app starts import the project from here, installed or not
        "PYTHONPATH": os.pathsep.join(p for p in (str(script.parents[1]), env.get("PYTHONPATH")) if p),
    })
    for key, value in (("LANDSLIDE_APP_CATALOG", args.catalog), ("LANDSLIDE_APP_BASEMAP_STYLE",
                                                                 args.basemap_style),
                       ("LANDSLIDE_APP_REVIEWER", args.reviewer)):
        if value:
            env[key] = str(Path(value).resolve()) if key == "LANDSLIDE_APP_CATALOG" else value
    argv = [sys.executable, "-m", "streamlit", "run", str(script),
            "--server.address", args.host, "--server.port", str(args.port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", str(args.max_upload_mb),
            "--server.fileWatcherType", "none", "--global.developmentMode", "false",
            "--client.toolbarMode", "viewer", "--client.showErrorDetails", "none", "--theme.base", "light"]
    print(f"landslide app: http://{args.host}:{args.port} (runs {env['LANDSLIDE_APP_RUNS_DIR']}; "
          "Ctrl-C stops it)", file=sys.stderr, flush=True)
    os.execve(sys.executable, argv, env)  # the app's process is Streamlit's; signals go straight to it


HANDLERS = {"app": cmd_app}
