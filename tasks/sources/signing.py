"""Signing STAC asset hrefs with SAS tokens, the way Planetary Computer hands them out.

Planetary Computer's assets live in Azure Blob Storage (``https://<account>.blob.core.windows.net/
<container>/<path>``), which answers 403 to an href without a valid, unexpired SAS token in its query
string. The token API: ``GET {sas_url}/token/{collection_id}`` answers JSON
``{"msft:expiry": "<ISO 8601 UTC>", "token": "<query string without '?'>"}``; the signed href is
``href + "?" + token``.

Tokens are cached per (token API, collection) until ``EXPIRY_MARGIN_S`` before their expiry, and
refreshed on demand (``refresh=True``, after the storage answered 403). A token is a credential: it
never goes into a log line, an error message, a manifest, a cache key or a file name. Callers keep the
unsigned href for all of those, and :func:`redact_hrefs` strips query strings from any text that may
quote a signed URL (GDAL's error messages do).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from dataclasses import dataclass

from tasks.core.errors import SourceError
from tasks.sources.catalog import PLANETARY_COMPUTER_SAS_URL

log = logging.getLogger(__name__)

__all__ = ["PLANETARY_COMPUTER_SAS_URL", "EXPIRY_MARGIN_S", "HrefSigner", "SasToken", "clear_token_cache",
           "redact_hrefs", "request_token", "sign_href", "strip_query"]
EXPIRY_MARGIN_S = 300.0  # a token is renewed this long before its msft:expiry (a read can take minutes)
_QUERY_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]+)\?[^\s'\"]*", re.I)


@dataclass(frozen=True)
class SasToken:
    """One SAS token: the query string (without ``?``) and when it stops working (UTC)."""

    token: str
    expiry: dt.datetime

    def __repr__(self) -> str:  # a token must not reach logs through a repr
        return f"SasToken(token=<{len(self.token)} chars>, expiry={self.expiry.isoformat()})"

    def fresh(self, now: dt.datetime, margin_s: float) -> bool:
        return (self.expiry - now).total_seconds() > margin_s


def redact_hrefs(text: str) -> str:
    """``text`` with the query string of every URL in it removed (SAS tokens live there)."""
    return _QUERY_RE.sub(r"\1", str(text))


def strip_query(href: str) -> str:
    """``href`` without its query string (the unsigned form kept for messages, keys and names)."""
    return href.split("?", 1)[0]


def parse_expiry(value: str) -> dt.datetime:
    """``msft:expiry`` (ISO 8601, ``Z`` or an offset; naive means UTC) as an aware UTC datetime.

    Raises:
        ValueError: not an ISO 8601 date-time.
    """
    when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def sign_href(href: str, token: str) -> str:
    """``href`` with the SAS ``token`` as its query string (an existing query is replaced)."""
    return f"{strip_query(href)}?{token.lstrip('?')}"


class RedactHrefs(logging.Filter):
    """Strips URL query strings from a record's message: GDAL's warnings quote the URL they read
    (rasterio logs them as ``CPLE_... in HTTP response code on <url>``), a signed one included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = redact_hrefs(message), ()
        return True


for _name in ("rasterio._env", "rasterio._base", "rasterio._io", "rasterio"):  # where rasterio relays GDAL
    logging.getLogger(_name).addFilter(RedactHrefs())


_TOKENS: dict[tuple[str, str], SasToken] = {}
_LOCK = threading.Lock()


def clear_token_cache() -> None:
    """Forget every cached token (tests; a long-lived process never needs it: tokens expire)."""
    with _LOCK:
        _TOKENS.clear()


def request_token(sas_url: str, collection: str, timeout_s: float, max_retries: int) -> SasToken:
    """Ask the token API for a token of ``collection`` (no cache).

    Retries 429/5xx and connection errors ``max_retries`` times with backoff (urllib3 ``Retry``).

    Raises:
        SourceError: the API refuses (4xx), keeps failing, times out or answers something that is not
            a token; one line naming the collection and the token URL, never a token.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3 import Retry

    url = f"{sas_url.rstrip('/')}/token/{collection}"
    what = f"SAS token of collection {collection!r} from {url}"
    retry = Retry(total=max_retries, connect=max_retries, read=max_retries, status=max_retries,
                  backoff_factor=0.5, backoff_max=30.0, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=None, raise_on_status=False, respect_retry_after_header=True)
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        try:
            answer = session.get(url, timeout=timeout_s)
        except requests.RequestException as exc:
            # a read timeout that outlives the retries surfaces as ConnectionError(MaxRetryError(...))
            if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
                raise SourceError(f"{what}: no answer within {timeout_s:g} s (timeout_s) after {max_retries} "
                                  "retries; try again later") from None
            raise SourceError(f"{what}: request failed after {max_retries} retries "
                              f"({type(exc).__name__}); check 'sas_url' in data_catalog.yaml") from None
    if answer.status_code in (401, 403, 404):
        raise SourceError(f"{what}: HTTP {answer.status_code}: the token API refuses this collection; check "
                          "'sas_url' and the collection in data_catalog.yaml (and any required access)")
    if answer.status_code != 200:
        raise SourceError(f"{what}: HTTP {answer.status_code} after {max_retries} retries; try again later")
    try:
        body = answer.json()
        token = str(body["token"]).lstrip("?")
        expiry = parse_expiry(body["msft:expiry"])
    except (ValueError, KeyError, TypeError):
        raise SourceError(f"{what}: the answer is not a token (JSON with 'token' and 'msft:expiry'); "
                          "check 'sas_url' in data_catalog.yaml") from None
    if not token:
        raise SourceError(f"{what}: the answer holds an empty token")
    log.info("SAS token for collection %r: valid until %s", collection, expiry.isoformat())
    return SasToken(token, expiry)


@dataclass(frozen=True)
class HrefSigner:
    """Signs hrefs of one collection with tokens from one token API (shared per-process cache).

    Attributes:
        sas_url: token API root (``GET {sas_url}/token/{collection}``).
        collection: the STAC collection the hrefs belong to (the token is scoped to its container).
        timeout_s, max_retries: of the token requests.
    """

    sas_url: str
    collection: str
    timeout_s: float = 60.0
    max_retries: int = 4

    def token(self, refresh: bool = False) -> SasToken:
        """The cached token while it is fresh (``EXPIRY_MARGIN_S``), else a new one; ``refresh``
        forces a new one (the storage refused the cached one)."""
        key = (self.sas_url.rstrip("/"), self.collection)
        now = dt.datetime.now(dt.timezone.utc)
        with _LOCK:
            cached = _TOKENS.get(key)
            if cached is not None and not refresh and cached.fresh(now, EXPIRY_MARGIN_S):
                return cached
        new = request_token(self.sas_url, self.collection, self.timeout_s, self.max_retries)
        with _LOCK:
            _TOKENS[key] = new
        return new

    def __call__(self, href: str, refresh: bool = False) -> str:
        """``href`` signed with a fresh token of this signer's collection."""
        return sign_href(href, self.token(refresh).token)
