"""`landslide dem-compare`: the report on stdout and in --out, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from flows.cli import main

ROOT = Path(__file__).resolve().parents[2]
AW3D30 = ROOT / "data" / "iburi_2018" / "dem" / "AW3D30_DSM.tif"
GLO30 = (ROOT.parent / "shared" / "data" / "cop_dem_glo30_n00e006"
         / "Copernicus_DSM_COG_10_N00_00_E006_00_DEM.tif")


def test_region_json_and_markdown_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "report.md"
    code = main(["dem-compare", "--a", str(AW3D30), "--b", str(AW3D30), "--region", "iburi-2018",
                 "--bbox", "141.93,42.70,141.98,42.74", "--res-m", "20", "--json", "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["grid"]["res_m"] == 20.0 and report["grid"]["crs"] == "EPSG:32654"
    assert report["elevation_m"]["overall"]["rmse"] == 0.0
    assert report["roi_lonlat"] == [141.93, 42.70, 141.98, 42.74]
    assert "## Slope difference (deg)" in out.read_text()


def test_errors_are_one_line(tmp_path, capsys):
    cases = [
        (["--a", str(tmp_path / "missing.tif"), "--b", str(AW3D30)], "DEM A .*missing.tif does not exist"),
        (["--a", str(AW3D30), "--b", str(GLO30)], "DEM B .* does not cover the ROI: it spans lon 5.9999"),
        (["--a", str(AW3D30), "--b", str(AW3D30), "--out", str(tmp_path / "r.txt")], "written as .json or .md"),
    ]
    for extra, pattern in cases:
        code = main(["dem-compare", "--bbox", "141.93,42.70,141.98,42.74", *extra])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert re.search(pattern, err), err
