"""How fast the `landslide` command answers: fresh-process wall time per command, and what it imports;
with ``--scan``, the fixed overhead of a one-off scan.

    python -m benchmarks.cli_latency                  # Markdown table, 5 runs per command, median
    python -m benchmarks.cli_latency --repeat 9 --json
    python -m benchmarks.cli_latency --scan           # + a small scan in-process, as a Prefect flow,
                                                      #   and forked from a warm process (flows/warm.py)

Each command runs as a new ``python`` process, the way a user types it, in round-robin order so that
machine load spreads evenly over the commands. Times are reported in seconds and as a ratio to the
bare interpreter start (``python -c pass``) measured in the same rounds: ratios in one run, never
timing thresholds. Every command runs with ``LANDSLIDE_WARM=0`` (its own process, cold) except the
scans labelled "warm", which run with a warm process of their own (flows/warm.py) started and
waited for beforehand. A second, untimed pass of each command reports which heavy packages it imported
(torch, Prefect, rasterio, segmentation-models-pytorch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "prefect", "rasterio", "segmentation_models_pytorch")

# name -> argv of `landslide`; None = the bare interpreter.
COMMANDS: dict[str, list[str] | None] = {
    "python -c pass": None,
    "landslide --version": ["--version"],
    "landslide models": ["models"],
    "landslide scan (bad --bbox)": ["scan", "--bbox", "1,2,3", "--out", "/nonexistent/x"],
    "landslide scan (unknown --region)": ["scan", "--region", "no-such-region", "--out", "/nonexistent/x"],
}

_RUN = ("import sys\nfrom flows.cli import main\ncode = 0\ntry:\n    code = main({argv!r})\n"
        "except SystemExit as exc:\n    code = exc.code if isinstance(exc.code, int) else 1\n"
        "{report}sys.exit(code or 0)\n")
_REPORT = "print('HEAVY', sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n"


def _code(argv: list[str] | None, report: bool) -> str:
    if argv is None:
        return "pass"
    return _RUN.format(argv=argv, report=_REPORT.format(heavy=HEAVY) if report else "")


def _env(warm_dir: Path | None = None) -> dict:
    """Cold (``LANDSLIDE_WARM=0``), or with the warm process of ``warm_dir``."""
    if warm_dir is None:
        return {**os.environ, "LANDSLIDE_WARM": "0"}
    return {**os.environ, "LANDSLIDE_WARM": "1", "LANDSLIDE_WARM_DIR": str(warm_dir)}


def _time_once(argv: list[str] | None, warm_dir: Path | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _code(argv, report=False)], cwd=REPO,
                          capture_output=True, text=True, env=_env(warm_dir))
    return time.perf_counter() - start, proc.returncode


def _heavy_imports(argv: list[str] | None) -> list[str]:
    if argv is None:
        return []
    proc = subprocess.run([sys.executable, "-c", _code(argv, report=True)], cwd=REPO,
                          capture_output=True, text=True, env=_env())
    line = next((x for x in proc.stderr.splitlines() if x.startswith("HEAVY ")), "HEAVY []")
    return json.loads(line[len("HEAVY "):].replace("'", '"'))


SCAN_BBOX = "141.95,42.72,141.97,42.735"  # ~1.6 x 1.7 km of the bundled sample
PIPELINE_STAGES = ("align_s", "inference_s", "clean_s", "vectorize_s", "rasters_s")


def measure_scan(orchestration: str, out_dir: Path, warm_dir: Path | None = None,
                 label: str | None = None) -> dict:
    """One small scan of the bundled sample with the shipped model, as a user runs it.

    ``first_line_s``: until the scan's first stderr line; ``pipeline_s``: the manifest's stage
    seconds (align, inference, clean, vectorize, rasters); ``overhead_s``: wall minus pipeline
    (interpreter, imports, loading the detector, planning, the report, the orchestrator).
    ``warm_dir``: run with the warm process of that folder (None: cold, in its own process).
    """
    out = out_dir / f"scan-{orchestration}{'-warm' if warm_dir else ''}"
    argv = ["scan", "--region", "iburi-2018", "--bbox", SCAN_BBOX, "--out", str(out), "--overwrite",
            "--no-progress", "--orchestration", orchestration]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _code(argv, report=False)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env(warm_dir))
    first = proc.stderr.readline()
    first_line_s = time.perf_counter() - start
    proc.stderr.read()
    code = proc.wait()
    wall_s = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text()) if code == 0 else {}
    timings = manifest.get("timings", {})
    pipeline_s = sum(float(timings.get(k, 0.0)) for k in PIPELINE_STAGES)
    execution = manifest.get("execution", {})
    return {"orchestration": label or orchestration, "exit_code": code, "first_line": first.strip()[:300],
            "first_line_s": round(first_line_s, 3), "wall_s": round(wall_s, 3),
            "pipeline_s": round(pipeline_s, 3), "overhead_s": round(wall_s - pipeline_s, 3),
            "recorded": execution.get("orchestration"), "warm_process": execution.get("warm_process")}


def _wait_for_warm(warm_dir: Path, timeout_s: float = 180.0) -> None:
    from flows.warm import answers

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(answers(path) for path in warm_dir.glob("*.sock")):
            return
        time.sleep(0.5)
    raise RuntimeError(f"no warm process answered in {warm_dir} within {timeout_s} s")


def measure(repeat: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    exit_codes: dict[str, int] = {}
    for _ in range(repeat):
        for name, argv in COMMANDS.items():
            seconds, code = _time_once(argv)
            times[name].append(seconds)
            exit_codes[name] = code
    base = statistics.median(times["python -c pass"])
    rows = []
    for name, argv in COMMANDS.items():
        median_s = statistics.median(times[name])
        rows.append({"command": name, "median_s": round(median_s, 3),
                     "max_s": round(max(times[name]), 3),
                     "ratio_to_bare_python": round(median_s / base, 2) if base else None,
                     "exit_code": exit_codes[name], "heavy_imports": _heavy_imports(argv)})
    return {"python": sys.version.split()[0], "repeat": repeat, "rows": rows}


def measure_scans(orchestrations: tuple[str, ...] = ("in-process", "prefect"), repeat: int = 3) -> list[dict]:
    """Cold scans (each orchestration), then ``repeat`` scans forked from a warm process and as many
    refusals through it; the warm process is started by a scan and waited for first."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        measure_scan(orchestrations[0], tmp)  # warm the file cache (not reported)
        rows = [measure_scan(o, tmp) for o in orchestrations]
        warm_dir = tmp / "warm"
        measure_scan("in-process", tmp, warm_dir)  # starts the warm process (not reported)
        try:
            _wait_for_warm(warm_dir)
            for _ in range(repeat):
                rows.append(measure_scan("in-process", tmp, warm_dir, label="in-process, warm"))
            refusal = ["scan", "--region", "no-such-region", "--out", "/nonexistent/x"]
            for _ in range(repeat):
                seconds, code = _time_once(refusal, warm_dir)
                rows.append({"orchestration": "refusal (unknown --region), warm", "exit_code": code,
                             "first_line_s": round(seconds, 3), "wall_s": round(seconds, 3),
                             "pipeline_s": 0.0, "overhead_s": round(seconds, 3)})
        finally:
            subprocess.run([sys.executable, "-m", "flows.cli", "warm", "--stop"], cwd=REPO,
                           env=_env(warm_dir), capture_output=True)
        return rows


def to_markdown(report: dict) -> str:
    lines = [f"{report['repeat']} runs per command (median), Python {report['python']}", "",
             "| command | median s | max s | x bare python | exit | heavy imports |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| `{r['command']}` | {r['median_s']:.3f} | {r['max_s']:.3f} | "
                     f"{r['ratio_to_bare_python']} | {r['exit_code']} | "
                     f"{', '.join(r['heavy_imports']) or 'none'} |")
    return "\n".join(lines)


def scans_to_markdown(scans: list[dict]) -> str:
    lines = [f"one-off scan of the sample (bbox {SCAN_BBOX}, shipped model)", "",
             "| orchestration | first line s | wall s | pipeline s | overhead s | exit |",
             "|---|---|---|---|---|---|"]
    for r in scans:
        lines.append(f"| {r['orchestration']} | {r['first_line_s']:.2f} | {r['wall_s']:.2f} | "
                     f"{r['pipeline_s']:.2f} | {r['overhead_s']:.2f} | {r['exit_code']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scan", action="store_true",
                        help="also time a small scan in-process and as a Prefect flow")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = measure(max(1, args.repeat))
    if args.scan:
        report["scans"] = measure_scans()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(to_markdown(report))
        if args.scan:
            print()
            print(scans_to_markdown(report["scans"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
