"""Shared fixtures: offline settings, real-data paths, a session-wide Prefect test harness."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Offline: no hub downloads, no telemetry (see ../shared/TOOLCHAIN.md). Set before prefect imports.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
# every scan in its own process, as before flows/warm.py; tests/flows/test_warm.py turns it on
os.environ.setdefault("LANDSLIDE_WARM", "0")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.fail(f"{SHARED} not found: the tests need ../shared beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def catalog_path() -> Path:
    return REPO / "data_catalog.yaml"


@pytest.fixture(scope="session", autouse=True)
def _prefect_logging_on_session_stream():
    """Configure Prefect's logging once, before any test's ``capsys``: its console handler keeps the
    ``sys.stderr`` it was built with, and a per-test capture stream is closed after that test, which
    broke every later flow run in the session ("I/O operation on closed file", then RecursionError)."""
    from prefect.logging.configuration import setup_logging

    setup_logging()
    yield


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# A small Iburi scan (the shipped model) with every extra export (--format geojson,csv,parquet):
# shared by the tests of a run's products (STAC item, report, quicklook, exports, STAC round trip).
SAMPLE_BBOX = "141.95,42.72,141.99,42.75"


@pytest.fixture(scope="session")
def sample_run(prefect_harness, tmp_path_factory) -> Path:
    from flows.cli import main

    formats = "geojson,csv,parquet"
    out = tmp_path_factory.mktemp("sample-run") / "run"
    code = main(["scan", "--catalog", str(REPO / "data_catalog.yaml"), "--region", "iburi-2018",
                 "--bbox", SAMPLE_BBOX, "--format", formats, "--out", str(out), "--no-progress"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def iburi_run(prefect_harness, tmp_path_factory) -> Path:
    """The small Iburi sample run (tests/data/sample_run.py), scanned once per session; read it,
    do not change it."""
    from tests.data.sample_run import run_iburi_sample

    return run_iburi_sample(tmp_path_factory.mktemp("iburi") / "run")
