"""Fixtures that start the local STAC and Sentinel Hub test servers (127.0.0.1 only).

- ``stac_api`` -> :class:`devservers.stac_server.StacApi`: ``url`` (STAC API root for
  pystac-client), ``static_url`` (COG file server), ``faults`` (fault script + request log of the COG
  server), ``items`` (served item dicts), ``cog_paths[item_id][asset_key]`` (local copy of each served
  COG), ``scenes``. The servers live for the session; faults and the log are reset around each test.
- ``pc_api`` -> :class:`devservers.sas_storage.PcApi`: a STAC API whose assets need SAS tokens (Planetary
  Computer's protocol): ``url``, ``sas_url``, ``storage`` (``faults``, ``tokens.token_requests``,
  ``tokens.token_lifetime_s``, ``tokens.revoke()``), ``items``, ``paths``.
- ``sentinelhub_api`` -> :class:`SentinelHubApi`: ``base_url``, ``token_url``, ``client_id``,
  ``client_secret``, ``faults``, ``server``, ``collection`` (``DataCollection.SENTINEL2_L1C`` with its
  ``service_url`` pointing here) and ``config(**overrides)`` building an ``SHConfig(use_defaults=True, ...)``
  (never a plain ``SHConfig()``, which writes the user's config file) with short retry sleeps.
  ``OAUTHLIB_INSECURE_TRANSPORT=1`` is set while the fixture lives (OAuth over plain http).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from devservers.sentinelhub_server import SentinelHubTestServer
from devservers.stac_server import StacApi, run_stac_api
from devservers.static_files import FaultControl


@pytest.fixture(scope="session")
def _stac_api_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StacApi]:
    with run_stac_api(tmp_path_factory.mktemp("stac-api")) as api:
        yield api


@pytest.fixture
def stac_api(_stac_api_session: StacApi) -> Iterator[StacApi]:
    """The running STAC API + COG server, with no pending faults and an empty request log."""
    api = _stac_api_session
    api.faults.clear()
    api.faults.clear_log()
    yield api
    api.faults.clear()


@dataclass
class SentinelHubApi:
    """Handle on the running Sentinel Hub test server for client-side tests."""

    server: SentinelHubTestServer
    collection: Any  # sentinelhub.DataCollection

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def token_url(self) -> str:
        return self.server.token_url

    @property
    def client_id(self) -> str:
        return self.server.client_id

    @property
    def client_secret(self) -> str:
        return self.server.client_secret

    @property
    def faults(self) -> FaultControl:
        return self.server.faults

    def config(self, **overrides: Any) -> Any:
        """``SHConfig`` for this server; retries sleep 0.1 s (x3 backoff) instead of 5 s."""
        from sentinelhub import SHConfig

        params = {
            "sh_client_id": self.client_id,
            "sh_client_secret": self.client_secret,
            "sh_base_url": self.base_url,
            "sh_token_url": self.token_url,
            "download_sleep_time": 0.1,
            "max_download_attempts": 3,
            "download_timeout_seconds": 10.0,
        }
        params.update(overrides)
        return SHConfig(use_defaults=True, **params)


@pytest.fixture(scope="session")
def _sentinelhub_session() -> Iterator[SentinelHubApi]:
    from sentinelhub import DataCollection

    previous = os.environ.get("OAUTHLIB_INSECURE_TRANSPORT")
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    server = SentinelHubTestServer().start()
    try:
        collection = DataCollection.SENTINEL2_L1C.define_from(
            f"LOCAL_SENTINEL2_L1C_{server.base_url.rsplit(':', 1)[1]}", service_url=server.base_url
        )
        yield SentinelHubApi(server, collection)
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("OAUTHLIB_INSECURE_TRANSPORT", None)
        else:
            os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = previous


@pytest.fixture
def sentinelhub_api(_sentinelhub_session: SentinelHubApi) -> Iterator[SentinelHubApi]:
    """The running Sentinel Hub test server, with no pending faults, an empty request log and the CLM
    stand-in's B02 rule (no cloud blocks set)."""
    api = _sentinelhub_session
    api.faults.clear()
    api.faults.clear_log()
    api.server.set_clm_clouds(None)
    yield api
    api.faults.clear()
    api.server.set_clm_clouds(None)


@pytest.fixture(scope="session")
def _pc_api_session(_stac_api_session: StacApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from devservers.sas_storage import S2_ITEM_ID, run_pc_api

    with run_pc_api(tmp_path_factory.mktemp("pc-api"), _stac_api_session.cog_paths[S2_ITEM_ID]) as api:
        yield api


@pytest.fixture
def pc_api(_pc_api_session: Any) -> Iterator[Any]:
    """A Planetary-Computer-like STAC API (``devservers.sas_storage.PcApi``): assets behind SAS-token
    storage, token API at ``sas_url``. Per test: no faults, empty logs, token counts at 0, the default
    token lifetime, and the client's token cache emptied."""
    from devservers.sas_storage import DEFAULT_TOKEN_LIFETIME_S
    from tasks.sources.signing import clear_token_cache

    api = _pc_api_session
    storage = api.storage
    storage.faults.clear()
    storage.faults.clear_log()
    storage.tokens.token_requests.clear()
    storage.tokens.token_lifetime_s = DEFAULT_TOKEN_LIFETIME_S
    clear_token_cache()
    yield api
    storage.faults.clear()
    storage.tokens.token_lifetime_s = DEFAULT_TOKEN_LIFETIME_S
    clear_token_cache()
