"""A Planetary-Computer-like setup: a STAC API whose assets sit behind SAS-token storage, on 127.0.0.1.

Planetary Computer keeps its assets in Azure Blob Storage, which answers 403 to an href without a
valid, unexpired SAS token in the query string; tokens come from ``GET {sas_url}/token/{collection}``
as JSON ``{"msft:expiry": "<ISO 8601 UTC>", "token": "<query string>"}``. This module speaks that
protocol:

- :class:`SignedStorageServer` serves a folder laid out as ``/<container>/<path>`` (Azure's
  ``https://<account>.blob.core.windows.net/<container>/<path>``) with byte ranges (the static
  server's handler), but only to requests whose query string holds a token for that container that
  has not expired and was not revoked; anything else gets ``403`` with an Azure-style
  ``AuthenticationFailed`` XML body. The same server answers the token API at
  ``/api/sas/v1/token/<collection>``: a token shaped like an Azure service SAS (``st``, ``se``,
  ``sp``, ``sv``, ``sr=c``, ``skoid``, ``sig``: an HMAC over container and expiry with a server
  secret). ``token_lifetime_s`` is settable at any time (a test makes tokens expire mid-run),
  ``revoke_tokens()`` invalidates every token issued so far (new secret), ``token_requests`` counts
  token requests per collection, and ``faults`` (a :class:`FaultControl`) scripts 403/500/delay
  answers of the token API too (``path_prefix=TOKEN_PATH``).
- :func:`run_pc_api` puts real rasters behind it and serves their items with ``rustac serve``:
  ``alos-dem`` (the bundled AW3D30 crop over Iburi, ``data/iburi_2018/dem/AW3D30_DSM.tif``, rewritten
  as a COG with the same int16 values and nodata), ``cop-dem-glo-30`` (the genuine GLO-30 COG
  N00 E006 from ``../shared/data/cop_dem_glo30_n00e006``, byte for byte) and ``sentinel-2-l1c``
  (the T18SVG scene ``S2A_18SVG_20160112_0_L1C`` of the STAC test server: Planetary Computer itself
  has only ``sentinel-2-l2a``; the L1C pixels are here because that is what the project's detectors
  read). Collection -> container: ``CONTAINERS``.

The AW3D30 item is a crop resampled by its provider (0.00027 deg posting, nodata -32768), not a tile
of the ``alos-dem`` product (1 arcsec tiles, nodata -9999): an ALOS-vs-Copernicus comparison over
Iburi needs the real product.

Run by hand::

    python -m devservers.sas_storage --port 8084 --storage-port 8085 --dir /tmp/pc-test
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, unquote

import numpy as np
import rasterio

from devservers.stac_server import (
    DEM_ITEM_ID,
    GLO30_TIF,
    RustacServer,
    _write_cog,
    build_cogs,
    dem_item,
    s2_item,
)
from devservers.static_files import (
    BackgroundServer,
    FaultControl,
    _Handler,
    _Server,
    serve_until_interrupted,
)

LOGGER = logging.getLogger(__name__)

TOKEN_PATH = "/api/sas/v1/token/"
SAS_API_PATH = "/api/sas/v1"
DEFAULT_TOKEN_LIFETIME_S = 3600  # Planetary Computer's anonymous tokens last about an hour
AW3D30_TIF = Path(__file__).resolve().parents[1] / "data" / "iburi_2018" / "dem" / "AW3D30_DSM.tif"
ALOS_COLLECTION, GLO30_COLLECTION, S2_COLLECTION = "alos-dem", "cop-dem-glo-30", "sentinel-2-l1c"
ALOS_ITEM_ID = "AW3D30_iburi_2018_crop"  # not a real alos-dem item id: the bundled crop
S2_ITEM_ID = "S2A_18SVG_20160112_0_L1C"
# Planetary Computer's containers are per dataset (e.g. copernicus-dem); these are this server's
CONTAINERS = {ALOS_COLLECTION: "alos-dem", GLO30_COLLECTION: "copernicus-dem", S2_COLLECTION: "sentinel2-l1c"}
SAS_VERSION = "2024-05-04"


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SasTokens:
    """Issues and checks container-scoped tokens (thread-safe)."""

    def __init__(self, containers: dict[str, str], lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S) -> None:
        self.containers = dict(containers)
        self.token_lifetime_s = lifetime_s
        self.token_requests: Counter[str] = Counter()
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()

    def _sig(self, container: str, expiry: str, oid: str) -> str:
        message = f"{container}\n{expiry}\n{oid}".encode()
        return base64.b64encode(hmac.new(self._secret, message, hashlib.sha256).digest()).decode()

    def issue(self, collection: str) -> dict | None:
        """The token API's JSON for ``collection``; None for an unknown one."""
        container = self.containers.get(collection)
        if container is None:
            return None
        now = dt.datetime.now(dt.timezone.utc)
        expiry = _iso(now + dt.timedelta(seconds=self.token_lifetime_s))
        oid = secrets.token_hex(8)
        with self._lock:
            self.token_requests[collection] += 1
            sig = self._sig(container, expiry, oid)
        from urllib.parse import urlencode

        token = urlencode({"st": _iso(now - dt.timedelta(minutes=5)), "se": expiry, "sp": "rl",
                           "sv": SAS_VERSION, "sr": "c", "skoid": oid, "sig": sig})
        return {"msft:expiry": expiry, "token": token}

    def valid(self, container: str, query: str) -> bool:
        """Whether ``query`` holds an unexpired, unrevoked token for ``container``."""
        fields = {k: v[0] for k, v in parse_qs(query).items()}
        if not all(k in fields for k in ("se", "sig", "skoid", "sr")) or fields["sr"] != "c":
            return False
        try:
            expiry = dt.datetime.strptime(fields["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return False
        if expiry <= dt.datetime.now(dt.timezone.utc):
            return False
        with self._lock:
            expected = self._sig(container, fields["se"], fields["skoid"])
        return hmac.compare_digest(expected, fields["sig"])

    def revoke(self) -> None:
        """Invalidate every token issued so far."""
        with self._lock:
            self._secret = secrets.token_bytes(32)


_DENIED = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code><Message>Server '
           b'failed to authenticate the request. Make sure the value of Authorization header is formed '
           b'correctly including the signature.</Message></Error>')


class _SignedHandler(_Handler):
    server: "_SignedServer"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        # the access log shows paths without their query: a token is a credential, even a test one
        LOGGER.debug("sas-storage %s - %s", self.address_string(),
                     (format % args).replace(self.path, self.path.split("?", 1)[0]))

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _token_api(self, path: str) -> None:
        fault = self.server.faults.take(path, self.command)
        if fault is not None and fault.mode == "delay":
            time.sleep(fault.delay_s)
        elif fault is not None:
            status = int(fault.mode) if fault.mode.isdigit() else 500
            self._record(status, fault=fault.mode)
            self._json(status, {"detail": f"scripted fault {status}"})
            return
        collection = unquote(path[len(TOKEN_PATH):]).strip("/")
        answer = self.server.tokens.issue(collection)
        if answer is None:
            self._record(404)
            self._json(404, {"detail": f"collection {collection!r} not found"})
            return
        self._record(200)
        self._json(200, answer)

    def _serve(self, head: bool) -> None:
        path, _, query = self.path.partition("?")
        if path.startswith(TOKEN_PATH):
            self._token_api(path)
            return
        container = unquote(path).lstrip("/").split("/", 1)[0]
        if not self.server.tokens.valid(container, query):
            self._record(403, fault="sas")
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_DENIED)))
            self.send_header("x-ms-error-code", "AuthenticationFailed")
            self.end_headers()
            if not head:
                self.wfile.write(_DENIED)
            return
        super()._serve(head)

    def _record(self, status: int, sent: int = 0, fault: str | None = None) -> None:
        from devservers.static_files import RequestRecord

        # the log keeps paths without their query: a token is a credential, even a test one
        self.server.faults.log(RequestRecord(self.command, self.path.split("?", 1)[0], status,
                                             self.headers.get("Range"), sent, fault))


class _SignedServer(_Server):
    def __init__(self, address: tuple[str, int], root: Path, faults: FaultControl, tokens: SasTokens) -> None:
        super().__init__(address, root, faults)
        self.RequestHandlerClass = _SignedHandler
        self.tokens = tokens

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - socketserver signature
        import sys

        # a client that gave up (its timeout) while a scripted delay ran: not a server error
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            LOGGER.debug("client %s went away", client_address)
            return
        super().handle_error(request, client_address)


class SignedStorageServer(BackgroundServer):
    """Token API + SAS-checked blob storage over ``root`` on 127.0.0.1 (see the module docstring)."""

    def __init__(self, root: Path, port: int = 0, containers: dict[str, str] | None = None,
                 token_lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S) -> None:
        self.root = Path(root)
        self.faults = FaultControl()
        self.tokens = SasTokens(containers or CONTAINERS, token_lifetime_s)
        self._server = _SignedServer(("127.0.0.1", port), self.root, self.faults, self.tokens)
        self.thread_name = "sas-storage"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def sas_url(self) -> str:
        """Token API root, the ``sas_url`` of a catalog source."""
        return self.url + SAS_API_PATH

    def href(self, path: Path) -> str:
        return f"{self.url}/{Path(path).resolve().relative_to(self.root.resolve()).as_posix()}"


@dataclass
class PcApi:
    """Handle on the running setup: ``url`` (STAC API), ``storage`` (:class:`SignedStorageServer`),
    ``sas_url``, ``items``, ``paths[item_id]`` (the served file of each item's data asset / band)."""

    url: str
    storage: SignedStorageServer
    items: list[dict]
    paths: dict[str, dict[str, Path]]

    @property
    def sas_url(self) -> str:
        return self.storage.sas_url

    def item(self, item_id: str) -> dict:
        return next(i for i in self.items if i["id"] == item_id)


def _alos_item(href: str, path: Path) -> dict:
    """An ``alos-dem`` item shaped like Planetary Computer's (asset ``data``, int16 metres)."""
    item = dem_item(href, path)
    with rasterio.open(path) as src:
        nodata = src.nodata
    item["id"] = ALOS_ITEM_ID
    item["collection"] = ALOS_COLLECTION
    item["properties"] = {**item["properties"], "datetime": "2016-12-07T00:00:00Z", "platform": "ALOS",
                          "instruments": ["prism"], "gsd": 30}
    item["properties"].pop("grid:code", None)
    item["assets"]["data"]["raster:bands"] = [{"data_type": "int16", "nodata": nodata, "spatial_resolution": 30,
                                               "unit": "metre"}]
    item["assets"]["data"]["title"] = "ALOS World 3D-30m (bundled Iburi crop)"
    return item


def build_storage(root: Path, s2_band_paths: dict[str, Path]) -> dict[str, dict[str, Path]]:
    """Lay out the served files under ``root/<container>/...``; item id -> asset key -> path."""
    alos = root / CONTAINERS[ALOS_COLLECTION] / "AW3D30_global" / f"{ALOS_ITEM_ID}.tif"
    with rasterio.open(AW3D30_TIF) as src:
        data = src.read(1)
        profile = {"crs": src.crs, "transform": src.transform, "nodata": src.nodata}
    _write_cog(alos, data.astype(np.int16), profile)
    glo = root / CONTAINERS[GLO30_COLLECTION] / "COP30_hh" / GLO30_TIF.name
    glo.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GLO30_TIF, glo)
    bands = {}
    for key, source in s2_band_paths.items():
        target = root / CONTAINERS[S2_COLLECTION] / "18" / "S" / "VG" / S2_ITEM_ID / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        bands[key] = target
    return {ALOS_ITEM_ID: {"data": alos}, DEM_ITEM_ID: {"data": glo}, S2_ITEM_ID: bands}


@contextlib.contextmanager
def run_pc_api(work_dir: Path, s2_band_paths: dict[str, Path] | None = None, port: int = 0,
               storage_port: int = 0) -> Iterator[PcApi]:
    """Build the storage, start it and ``rustac serve`` with the items; stop both on exit.

    ``s2_band_paths`` (asset key -> COG, e.g. the STAC test server's ``cog_paths[S2_ITEM_ID]``) are
    served as the sentinel-2-l1c item; None builds them (as the STAC test server does).
    """
    from devservers.stac_server import SCENES

    work_dir = Path(work_dir)
    root = work_dir / "blobs"
    root.mkdir(parents=True, exist_ok=True)
    if s2_band_paths is None:
        s2_band_paths = build_cogs(work_dir / "s2-build")[S2_ITEM_ID]
    paths = build_storage(root, s2_band_paths)
    storage = SignedStorageServer(root, storage_port).start()
    rustac = None
    try:
        scene = next(s for s in SCENES if s.item_id == S2_ITEM_ID)
        s2 = s2_item(scene, {k: storage.href(p) for k, p in paths[S2_ITEM_ID].items()}, paths[S2_ITEM_ID])
        glo = dem_item(storage.href(paths[DEM_ITEM_ID]["data"]), paths[DEM_ITEM_ID]["data"])
        alos = _alos_item(storage.href(paths[ALOS_ITEM_ID]["data"]), paths[ALOS_ITEM_ID]["data"])
        items = [s2, glo, alos]
        items_path = work_dir / "items.json"
        items_path.write_text(json.dumps({"type": "FeatureCollection", "features": items}, indent=1))
        rustac = RustacServer(items_path, port).start()
        yield PcApi(rustac.url, storage, items, paths)
    finally:
        if rustac is not None:
            rustac.stop()
        storage.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local STAC API with SAS-signed storage (Planetary Computer's protocol)")
    parser.add_argument("--port", type=int, default=8084, help="STAC API port")
    parser.add_argument("--storage-port", type=int, default=8085, help="token API + storage port")
    parser.add_argument("--dir", default=None, help="work folder (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    import signal
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pc-test-"))
    with run_pc_api(work, port=args.port, storage_port=args.storage_port) as api:
        print(f"STAC API: {api.url}  storage: {api.storage.url}  sas_url: {api.sas_url}  (Ctrl-C to stop)",
              flush=True)
        serve_until_interrupted()


if __name__ == "__main__":
    main()
