"""benchmarks/cli_latency.py runs and reports every command (no timing bars: speed is reported as
ratios in one run, benchmarks/README.md)."""

from __future__ import annotations

from benchmarks.cli_latency import COMMANDS, measure, to_markdown


def test_cli_latency_report_is_complete():
    report = measure(repeat=1)
    rows = {r["command"]: r for r in report["rows"]}
    assert list(rows) == list(COMMANDS)
    assert rows["landslide --version"]["exit_code"] == 0 and rows["landslide models"]["exit_code"] == 0
    assert rows["landslide scan (bad --bbox)"]["exit_code"] == 2
    assert rows["landslide scan (unknown --region)"]["exit_code"] == 2
    # the answers issue 21 promises without torch or Prefect
    for name in ("landslide --version", "landslide models", "landslide scan (bad --bbox)"):
        assert rows[name]["heavy_imports"] == [], (name, rows[name]["heavy_imports"])
    # a catalog mistake is found before torch or Prefect is imported (issue 16 item 10, issue 19)
    unknown = rows["landslide scan (unknown --region)"]["heavy_imports"]
    assert "torch" not in unknown and "prefect" not in unknown, unknown
    assert all(r["median_s"] > 0 and r["ratio_to_bare_python"] > 0 for r in rows.values())
    assert "| `landslide models` |" in to_markdown(report)


def test_one_off_scan_overhead_is_measured_and_the_manifest_says_in_process(tmp_path):
    from benchmarks.cli_latency import measure_scan

    row = measure_scan("in-process", tmp_path)
    assert row["exit_code"] == 0 and row["recorded"] == "in-process"
    assert row["first_line"].startswith("scan ") and "(in-process;" in row["first_line"]
    assert 0 < row["first_line_s"] < row["wall_s"] and 0 < row["pipeline_s"] < row["wall_s"]
    assert abs(row["overhead_s"] - (row["wall_s"] - row["pipeline_s"])) <= 0.002  # rounded to ms
