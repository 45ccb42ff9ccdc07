"""Fixtures of the browser tests: the app started as a user starts it (``landslide app``) on a free
port with its own runs and state folders, and headless Chromium from Debian's packages driven by
Selenium (the system chromedriver; nothing is downloaded)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build" / "screenshots"  # where a person finds what the browser saw
CHROMIUM_PACKAGES = ("chromium", "chromium-driver")


def _chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(browser, driver) paths; installed from Debian's packages when missing and we are root."""
    paths = _chromium_paths()
    if paths is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *CHROMIUM_PACKAGES], check=False, env=env,
                       capture_output=True)
        paths = _chromium_paths()
    if paths is None:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: "
                    f"apt-get install -y {' '.join(CHROMIUM_PACKAGES)}")
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the app did not answer {url}/_stcore/health within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """``landslide app`` on 127.0.0.1:<free port>: (url, runs_dir, state_dir, log path)."""
    root = tmp_path_factory.mktemp("app")
    runs, state = root / "runs", root / "state"
    port = free_port()
    log = root / "app.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "LANDSLIDE_CATALOG": str(REPO / "data_catalog.yaml")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "app", "--port", str(port),
                                 "--runs-dir", str(runs), "--state-dir", str(state),
                                 "--reviewer", "test-reviewer"],
                                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, runs, state, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def browser(chromium, tmp_path, request):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:  # what the browser showed when the test failed
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SCREENSHOTS / f"FAILED-{request.node.name}.png"))
    finally:
        driver.quit()
