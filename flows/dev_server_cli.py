"""CLI subcommand that starts a local test server by hand (wiring only; the servers live in devservers/).

    landslide dev-server stac           # STAC API (rustac serve) + COG range server on 127.0.0.1
    landslide dev-server sentinelhub    # Sentinel Hub OAuth + Catalog + Process API on 127.0.0.1

Each prints its URL(s), writes a catalog file naming it as a source, and prints the exact
``landslide scan`` line to run against it from another shell; Ctrl-C (or SIGTERM) stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path

DEFAULT_PORTS = {"stac": (8081, 8082), "sentinelhub": (8083, None)}


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser(
        "dev-server", help="start a local STAC or Sentinel Hub test server by hand (Ctrl-C stops)",
        description="Start a server on 127.0.0.1 that speaks the real protocol (STAC API via rustac serve "
                    "+ a range-request COG server, or Sentinel Hub OAuth/Catalog/Process API) over crops "
                    "of the real T18SVG bands and GLO-30 tile in ../shared/data. Prints the URL(s), "
                    "writes DIR/data_catalog.yaml with the source and prints the `landslide scan` line "
                    "to run against it. See devservers/README.md.")
    dev.add_argument("kind", choices=sorted(DEFAULT_PORTS), help="which server")
    dev.add_argument("--port", type=int, help="API port (stac 8081, sentinelhub 8083; 0 = any free port)")
    dev.add_argument("--static-port", type=int, help="stac: COG file server port (8082; 0 = any free port)")
    dev.add_argument("--dir", help="work folder for the COGs, the catalog and the dev checkpoint "
                                   "(default: a new temporary folder)")
    dev.add_argument("--data-dir", help="the shared test data (default: ../shared/data beside the "
                                        "repository, or $LANDSLIDE_SHARED_DATA)")
    dev.add_argument("--client-id", default="test-client-id", help="sentinelhub: OAuth client id to accept")
    dev.add_argument("--client-secret", default="test-client-secret",
                     help="sentinelhub: OAuth client secret to accept (a test value, printed)")


def _check_port(port: int, option: str) -> None:
    """Fail early and clearly on a busy port (rustac's health check would find the other server)."""
    from tasks.core.errors import InputError

    if port == 0:
        return
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise InputError(f"dev-server: port {port} on 127.0.0.1 is in use; pass {option} with another "
                             "port, or 0 for any free port") from None


def cmd_dev_server(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Run the server until Ctrl-C / SIGTERM (or ``stop`` is set, for callers in a thread)."""
    if args.data_dir:  # read when devservers.stac_server is imported (below)
        os.environ["LANDSLIDE_SHARED_DATA"] = str(Path(args.data_dir).resolve())
    from devservers import session

    if args.kind == "stac":
        from devservers.stac_server import RUSTAC_MISSING, find_rustac

        if find_rustac() is None:  # before any COG is cut
            from tasks.core.errors import InputError

            raise InputError(RUSTAC_MISSING)
    session.check_shared_data()
    port, static_port = DEFAULT_PORTS[args.kind]
    port = port if args.port is None else args.port
    static_port = static_port if args.static_port is None else args.static_port
    _check_port(port, "--port")
    if static_port is not None:
        _check_port(static_port, "--static-port")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix=f"landslide-dev-{args.kind}-"))
    work.mkdir(parents=True, exist_ok=True)
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM both stop the servers and their children, even when this process was
        # started with SIGINT ignored (a background job of a non-interactive shell inherits that)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    detector = session.write_mechanics_checkpoint(work / "checkpoints")
    catalog = work / "data_catalog.yaml"
    from devservers.static_files import serve_until_interrupted

    if args.kind == "stac":
        from devservers.stac_server import run_stac_api

        with run_stac_api(work / "served", port, static_port) as api:
            session.write_catalog(catalog, {session.STAC_SOURCE: session.stac_source_entry(api.url)})
            _announce([f"url: {api.url}", f"STAC API (rustac serve): {api.url}",
                       f"COG file server (range requests): {api.static_url}",
                       "collections: sentinel-2-l1c (3 items over T18SVG), cop-dem-glo-30 (1 item over Sao Tome)"],
                      catalog, session.scan_command(catalog, session.STAC_SOURCE, detector, "runs/dev-stac"),
                      env=None)
            serve_until_interrupted(stop)
        return 0

    from devservers.sentinelhub_server import SentinelHubTestServer

    with SentinelHubTestServer(args.client_id, args.client_secret, port) as server:
        session.write_catalog(catalog, {session.SENTINELHUB_SOURCE: session.sentinelhub_source_entry(
            server.base_url, server.token_url)})
        env = (f"export OAUTHLIB_INSECURE_TRANSPORT=1 SH_CLIENT_ID={args.client_id} "
               f"SH_CLIENT_SECRET={args.client_secret}   # OAuth over plain http: the dev server only")
        _announce([f"url: {server.base_url}", f"Sentinel Hub base URL: {server.base_url}",
                   f"token URL: {server.token_url}",
                   f"test credentials: client id {args.client_id}, client secret {args.client_secret}"],
                  catalog, session.scan_command(catalog, session.SENTINELHUB_SOURCE, detector,
                                                "runs/dev-sentinelhub"), env=env)
        serve_until_interrupted(stop)
    return 0


def _announce(lines: list[str], catalog: Path, command: str, env: str | None) -> None:
    text = "\n".join(lines + [f"catalog written: {catalog}", "", catalog.read_text().rstrip(), "",
                              "run against it (another shell):"] + ([f"  {env}"] if env else [])
                     + [f"  {command}", "(the detector is random weights on B02,B03,B04: the served "
                        "scenes have no DEM; see devservers/README.md)", "Ctrl-C stops the server."])
    print(text, flush=True)


HANDLERS = {"dev-server": cmd_dev_server}
