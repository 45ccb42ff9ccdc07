"""The warm process (flows/warm.py) as a user meets it: a first scan starts it, the next scan is a fork
of it with the same outputs, the same refusals and the same Ctrl-C, and a scan whose caller dies is
stopped. Timings are the benchmark's business (benchmarks/cli_latency.py), not asserted here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

REPO = Path(__file__).resolve().parents[2]
BBOX = "141.95,42.72,141.97,42.735"


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A warm process of this module's own, started by a first (cold) scan: (env, that scan's folder)."""
    tmp = tmp_path_factory.mktemp("warm")
    env = {**os.environ, "LANDSLIDE_WARM": "1", "LANDSLIDE_WARM_DIR": str(tmp / "sockets"),
           "LANDSLIDE_WARM_IDLE_S": "300"}
    env.pop("PYTEST_CURRENT_TEST", None)
    first = _cli(env, *_scan_argv(tmp / "first"))
    assert first.returncode == 0, first.stderr[-2000:]
    try:
        yield env, tmp / "first", first
    finally:
        subprocess.run([sys.executable, "-m", "flows.cli", "warm", "--stop"], cwd=REPO, env=env,
                       capture_output=True, timeout=60)
        import psutil  # and one still importing (not listening yet) when --stop asked

        for proc in psutil.process_iter(["cmdline"]):
            if str(tmp / "sockets") in " ".join(proc.info["cmdline"] or []):
                proc.kill()


def _cli(env: dict, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


def _scan_argv(out: Path) -> list[str]:
    return ["scan", "--region", "iburi-2018", "--bbox", BBOX, "--out", str(out), "--no-progress"]


def _status(env: dict) -> list[str]:
    return _cli(env, "warm").stdout.splitlines()


def _wait_for_warm(env: dict, timeout_s: float = 180.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = [line for line in _status(env) if "matches this environment" in line]
        if lines:
            return int(lines[0].split()[1].rstrip(":"))
        time.sleep(1)
    raise AssertionError(f"no warm process within {timeout_s} s: {_status(env)}")


def _running_scans(env: dict) -> int:
    line = next(line for line in _status(env) if "matches this environment" in line)
    return int(line.split(" scans, ")[1].split()[0])


def test_the_next_scan_forks_from_the_warm_process_with_the_same_outputs(tmp_path, warm):
    warm_env, first_out, first = warm
    warm_pid = _wait_for_warm(warm_env)
    assert json.loads((first_out / "manifest.json").read_text())["execution"]["warm_process"] is None

    second = _cli(warm_env, *_scan_argv(tmp_path / "second"))
    assert second.returncode == 0, second.stderr[-2000:]
    execution = json.loads((tmp_path / "second" / "manifest.json").read_text())["execution"]
    assert execution["warm_process"]["pid"] == warm_pid and execution["orchestration"] == "in-process"
    # the child wrote to this process's own stdout / stderr
    assert second.stdout.split(" -> ")[0] == first.stdout.split(" -> ")[0]  # "30 landslide polygons (...)"
    assert "loading the detector and planning" in second.stderr
    for name in ("mask.tif", "probability.tif"):
        with rasterio.open(first_out / name) as a, rasterio.open(tmp_path / "second" / name) as b:
            assert np.array_equal(a.read(), b.read()), name

    # a refusal says exactly what a fresh process says, with the same exit status
    cold = _cli({**warm_env, "LANDSLIDE_WARM": "0"}, "scan", "--region", "no-such-region", "--out",
                str(tmp_path / "x"))
    forked = _cli(warm_env, "scan", "--region", "no-such-region", "--out", str(tmp_path / "x"))
    assert forked.returncode == cold.returncode == 2
    assert forked.stderr == cold.stderr and forked.stderr.startswith("error: ")

    # another environment is another key: that scan runs in its own process
    other = _cli({**warm_env, "LANDSLIDE_SOMETHING_ELSE": "1"}, *_scan_argv(tmp_path / "other"))
    assert other.returncode == 0
    assert json.loads((tmp_path / "other" / "manifest.json").read_text())["execution"]["warm_process"] is None


def test_ctrl_c_reaches_the_forked_scan_and_a_dead_caller_stops_it(tmp_path, warm):
    warm_env = warm[0]
    _wait_for_warm(warm_env)

    def start(out: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *_scan_argv(out)], cwd=REPO,
                                env=warm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        line = proc.stdout.readline()
        assert "loading the detector and planning" in line, line
        return proc

    proc = start(tmp_path / "interrupted")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the caller gets it
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "error: interrupted; nothing was published" in rest and "Traceback" not in rest
    assert not (tmp_path / "interrupted" / "landslides.gpkg").exists()

    proc = start(tmp_path / "orphaned")
    proc.kill()  # kill -9 of the caller: the warm process stops the scan it forked for it
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _running_scans(warm_env) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _running_scans(warm_env) == 0
    assert not (tmp_path / "orphaned" / "landslides.gpkg").exists()
    again = _cli(warm_env, *_scan_argv(tmp_path / "orphaned"))  # and the folder is usable again
    assert again.returncode == 0, again.stderr[-2000:]

    proc = start(tmp_path / "stopped")
    assert _cli(warm_env, "warm", "--stop").stdout.startswith("stopped ")
    rest, _ = proc.communicate(timeout=60)  # the scan in it is interrupted as by Ctrl-C
    assert proc.returncode == 130 and "error: interrupted; nothing was published" in rest, rest
    assert "ended without a result" not in rest


def test_an_unusable_socket_folder_means_no_warm_process_and_no_error(tmp_path, monkeypatch):
    from flows import warm

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LANDSLIDE_WARM", "1")
    monkeypatch.setenv("LANDSLIDE_WARM_DIR", str(blocker / "sockets"))  # cannot be created
    assert warm._private_dir() is None
    assert warm.run_in_warm_process(["scan", "--help"]) is None  # the scan runs in its own process
    warm.start_in_background()  # and starting none is not an error
    shared = tmp_path / "shared"  # a folder other users could write to is never used
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("LANDSLIDE_WARM_DIR", str(shared))
    assert warm._private_dir() is None and warm.run_in_warm_process(["scan", "--help"]) is None
    warm.start_in_background()
    assert list(shared.iterdir()) == []
