"""``--format`` on ``landslide scan`` and ``landslide regional-scan``: parsed and validated before
any work starts (a bad value: one ``error:`` line, exit 2, no folder). The files it writes are tested
on a real run in tests/flows/test_run_products.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def test_format_is_repeatable_and_comma_separated_and_defaults_to_nothing_extra():
    parser = build_parser()
    args = parser.parse_args(["scan", "--region", "r", "--format", "geojson", "--format", "CSV,parquet"])
    assert args.formats == ["geojson", "csv", "parquet"]
    assert parser.parse_args(["scan", "--region", "r"]).formats == []
    assert parser.parse_args(["regional-scan", "--region", "r", "--format", "csv"]).formats == ["csv"]


@pytest.mark.parametrize("value", ["shp", "geojson,kml", ""])
def test_a_bad_format_is_one_error_line_and_exit_2_before_any_work(tmp_path, capsys, value):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["scan", "--region", "iburi-2018", "--out", str(out), "--format", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --format:")
    assert "gpkg, geojson, csv, parquet" in err
    assert not out.exists()


def test_a_bad_format_exits_2_from_the_installed_command_too(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "scan", "--region", "iburi-2018", "--out",
                           str(tmp_path / "run"), "--format", "xlsx"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:")
    assert "Traceback" not in proc.stderr


def test_parquet_without_pyarrow_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # an environment without the [parquet] extra
                        lambda name, *a: None if name == "pyarrow" else real_find_spec(name, *a))
    out = tmp_path / "run"
    code = main(["scan", "--region", "iburi-2018", "--out", str(out), "--format", "parquet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs pyarrow" in err
    assert not out.exists()
