"""The container image (Dockerfile), built and run with Podman on a Debian base made by debootstrap
(no container registry needed): a scan of the bundled sample inside it, and the app's health check.

    python -m pytest -m slow tests/test_container.py

Every step is a command of ``scripts/container.sh`` (README "Container image"), so the same build and
runs can be done by hand. The debootstrap rootfs is cached under ~/.cache/landslide-pipeline/container
and the base image and the build's layers are Podman's, so a second run rebuilds only what changed.
The first build downloads the Python packages (pip through the host's network, with the host's CA
bundle and the local torch CPU wheel folder bind-mounted into the build): ~10 min on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "container.sh"
IMAGE = os.environ.get("IMAGE", "localhost/landslide-pipeline")
TOOLS = ("podman", "debootstrap", "runc")
BBOX = "141.95,42.70,141.98,42.72"  # a small part of the Iburi sample with landslides in it


def _missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _script(*args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "IMAGE": IMAGE})
    if check and proc.returncode != 0:
        pytest.fail(f"scripts/container.sh {' '.join(args)} exited {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def image() -> str:
    if _missing_tools() and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run([str(SCRIPT), "setup"], capture_output=True, timeout=900)
    missing = _missing_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed and not installable here (needs root and "
                    "apt-get: apt-get install podman buildah debootstrap runc)")
    _script("base", timeout=1800)
    _script("build", timeout=3600)
    return IMAGE


def test_the_image_runs_as_a_non_root_user_with_no_build_settings_left(image):
    uid = _script("podman", "run", "--rm", image, "id", "-u", timeout=120).stdout.strip()
    assert uid == "1000"
    inspected = json.loads(_script("podman", "image", "inspect", image, timeout=60).stdout)[0]
    config = inspected["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert not [k for k in env if k.startswith("PIP_")], env  # PIP_CERT / PIP_FIND_LINKS: build only
    assert env["HF_HUB_OFFLINE"] == "1" and env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert config["Cmd"] == ["landslide", "app", "--host", "0.0.0.0", "--port", "8501"]
    assert not config.get("Entrypoint")
    assert "8501/tcp" in config["ExposedPorts"]
    assert "_stcore/health" in " ".join(inspected["Healthcheck"]["Test"])  # kept: --format docker
    assert config["WorkingDir"] == "/app" and {"/app/runs", "/app/state"} <= set(config["Volumes"])


def test_a_scan_inside_the_image_writes_its_run_to_a_bind_mounted_folder(image, tmp_path):
    import geopandas as gpd

    proc = _script("scan", str(tmp_path), "--bbox", BBOX, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "x"
    assert (run / "manifest.json").is_file() and (run / "landslides.gpkg").is_file(), \
        sorted(p.name for p in run.iterdir()) if run.exists() else proc.stderr[-4000:]
    manifest = json.loads((run / "manifest.json").read_text())
    polygons = gpd.read_file(run / "landslides.gpkg", layer="landslides")
    assert len(polygons) > 0
    assert polygons.geometry.is_valid.all()
    assert manifest["counts"]["polygons"] == len(polygons)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_app_in_the_image_answers_its_health_check_on_a_published_port(image):
    port = _free_port()
    container = _script("app", str(port), timeout=120).stdout.strip().splitlines()[-1]
    try:
        url = f"http://127.0.0.1:{port}/_stcore/health"
        deadline, answer, error = time.monotonic() + 180, None, None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    answer = resp.read().decode().strip()
                break
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                error = exc
                time.sleep(2)
        logs = _script("podman", "logs", container, timeout=60, check=False)
        assert answer == "ok", f"no health answer from {url} in 180 s ({error}):\n{logs.stderr[-3000:]}"
        # the image's own HEALTHCHECK (python, inside the container) agrees
        assert _script("podman", "healthcheck", "run", container, timeout=60, check=False).returncode == 0
    finally:
        # -v: with its anonymous volumes (/app/runs, /app/state)
        _script("podman", "rm", "-f", "-v", container, timeout=120, check=False)
