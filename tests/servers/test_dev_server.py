"""``landslide dev-server stac|sentinelhub``: the console script starts the server, prints what to run
against it, answers on the printed URL, and stops on Ctrl-C (SIGINT) with its children."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tasks.sources.catalog import load_catalog


def _landslide() -> list[str]:
    beside = Path(sys.executable).parent / "landslide"  # the installed console script, as a user runs it
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "flows.cli"]


def _start(kind: str, work: Path) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([*_landslide(), "dev-server", kind, "--port", "0", "--static-port", "0",
                             "--dir", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    timer = threading.Timer(120, proc.kill)  # a hang fails the test instead of blocking the suite
    timer.start()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C stops"):
                break
    finally:
        timer.cancel()
    assert lines and lines[-1].startswith("Ctrl-C stops"), "\n".join(lines)
    return proc, lines


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def _scan_line(lines: list[str]) -> list[str]:
    return shlex.split(next(line for line in lines if line.strip().startswith("landslide scan")))


def test_dev_server_stac_serves_prints_and_stops(tmp_path):
    proc, lines = _start("stac", tmp_path)
    try:
        url = next(line.split(" ", 1)[1] for line in lines if line.startswith("url: "))
        root = requests.get(url + "/", timeout=10)
        assert root.ok and any(link["rel"] == "search" for link in root.json()["links"])
        found = requests.post(url + "/search", json={"collections": ["sentinel-2-l1c"]}, timeout=10).json()
        assert {f["id"] for f in found["features"]} >= {"S2A_18SVG_20160112_0_L1C"}
        cog = found["features"][0]["assets"]["blue"]["href"]
        assert requests.get(cog, headers={"Range": "bytes=0-15"}, timeout=10).status_code == 206
        # the printed command names a catalog that loads and points at this server
        scan = _scan_line(lines)
        catalog = load_catalog(scan[scan.index("--catalog") + 1])
        source = catalog.source(scan[scan.index("--source") + 1])
        assert source.kind == "stac" and source.url == url
        assert Path(scan[scan.index("--detector") + 1]).exists()
    finally:
        code = _stop(proc)
    assert code == 0
    with pytest.raises(requests.ConnectionError):  # rustac (a child process) stopped too
        requests.get(url + "/", timeout=5)


def test_dev_server_sentinelhub_serves_prints_and_stops(tmp_path):
    proc, lines = _start("sentinelhub", tmp_path)
    try:
        url = next(line.split(" ", 1)[1] for line in lines if line.startswith("url: "))
        export = next(line for line in lines if "export " in line)
        env = dict(part.split("=", 1) for part in shlex.split(export.split("#")[0])[1:])
        token = requests.post(url + "/auth/realms/main/protocol/openid-connect/token",
                              data={"grant_type": "client_credentials", "client_id": env["SH_CLIENT_ID"],
                                    "client_secret": env["SH_CLIENT_SECRET"]}, timeout=10)
        assert token.ok and token.json()["token_type"] == "Bearer"
        scan = _scan_line(lines)
        source = load_catalog(scan[scan.index("--catalog") + 1]).source(scan[scan.index("--source") + 1])
        assert source.kind == "sentinelhub" and source.base_url == url
    finally:
        code = _stop(proc)
    assert code == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/api/v1/catalog/1.0.0/", timeout=5)


def test_dev_server_busy_port_is_a_one_line_error(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([*_landslide(), "dev-server", "sentinelhub", "--port", str(port),
                               "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"port {port}" in done.stderr and "in use" in done.stderr


def test_dev_server_stac_without_rustac_says_to_install_the_test_extras(tmp_path, capsys, monkeypatch):
    import devservers.stac_server
    from flows.cli import main

    monkeypatch.setattr(devservers.stac_server, "find_rustac", lambda: None)
    code = main(["dev-server", "stac", "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ") and "rustac" in err and ".[test]" in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was built
