"""A DEM for any area: a local source's ``dem_source`` (the DEM collection of a stac source of the same
catalog, fetched for the ROI when the scan is planned) and ``landslide dem``.

Real HTTP on 127.0.0.1 (``pc_api``: the bundled AW3D30 crop as the ``alos-dem`` item behind SAS-signed
storage), real GDAL reads. The Iburi bands lie over the served AW3D30; the T18SVG crops (Virginia) lie
under no served DEM item, which is what the refusals need.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.windows import from_bounds

from devservers.sas_storage import ALOS_COLLECTION, AW3D30_TIF, S2_COLLECTION
from flows.cli import main
from tests.data.crops import IBURI, lonlat_bounds, t18svg_crops

pytest.importorskip("pystac_client")

IBURI_BBOX = "141.93,42.70,141.98,42.74"  # inside the bundled AW3D30 crop and the Iburi bands


def _pc_source(pc_api, **kw) -> dict:
    return {"kind": "stac", "url": pc_api.url, "collection": S2_COLLECTION, "sign": "planetary-computer",
            "sas_url": pc_api.sas_url, "dem_collection": ALOS_COLLECTION, "max_retries": 1, "timeout_s": 5,
            **kw}


def _catalog(tmp_path: Path, pc_api, bands: dict[str, Path], **local_kw) -> Path:
    local = {"kind": "local", "dem_source": "pc",
             "scenes": [{"scene_id": "scene", "acquired": "2018-09-20T01:30:00Z",
                         "bands": {b: str(p) for b, p in bands.items()}}], **local_kw}
    path = tmp_path / "data_catalog.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "sources": {"loc": local, "pc": _pc_source(pc_api),
                                                                "plain": {"kind": "local", "scenes": local["scenes"]}}}))
    return path


def _iburi_bands() -> dict[str, Path]:
    return {b: IBURI / "s2_post" / f"S2_post_{t}.tif" for b, t in (("B02", "B2"), ("B03", "B3"), ("B04", "B4"))}


def _errors(capsys) -> tuple[list[str], str]:
    captured = capsys.readouterr()
    text = captured.err + captured.out
    return [line for line in captured.err.splitlines() if line.startswith("error:")], text


def test_dem_source_gives_a_local_scene_slope_and_dem(pc_api, tmp_path, capsys):
    catalog = _catalog(tmp_path, pc_api, _iburi_bands())
    out = tmp_path / "run"
    code = main(["scan", "--catalog", str(catalog), "--source", "loc", f"--bbox={IBURI_BBOX}",
                 "--detector", "index", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--orchestration", "in-process", "--keep-work", "--no-progress"])
    errors, text = _errors(capsys)
    assert code == 0, text
    with rasterio.open(out / ".work" / "stack.tif") as src:
        names = list(src.descriptions)
        slope, dem = src.read(names.index("SLOPE") + 1), src.read(names.index("DEM") + 1)
    with rasterio.open(out / ".work" / "valid.tif") as v:
        valid = v.read(1) > 0
    assert valid.any() and np.isfinite(slope[valid]).all() and np.isfinite(dem[valid]).all()
    assert dem[valid].max() > 100 and slope[valid].max() > 5  # Iburi's hills, in metres and degrees
    manifest = json.loads((out / "manifest.json").read_text())
    product = manifest["inputs"]["dem_product"]
    assert product["collection"] == ALOS_COLLECTION and product["signed"] and product["units"] == "m"
    assert str(tmp_path / "cache") in manifest["inputs"]["dem_path"]  # cached like remote inputs
    assert any("from dem_source 'pc'" in n for n in manifest["inputs"]["notes"])


def test_dem_source_without_an_item_over_the_roi_refuses_the_scan(pc_api, tmp_path, capsys):
    crops = t18svg_crops(tmp_path / "crops", bands=("B02", "B03", "B04"))  # Virginia: no served DEM item
    catalog = _catalog(tmp_path, pc_api, crops)
    w, s, e, n = lonlat_bounds(crops["B02"])
    bbox = (w + 0.002, s + 0.002, e - 0.002, n - 0.002)
    out = tmp_path / "run"
    code = main(["scan", "--catalog", str(catalog), "--source", "loc", f"--bbox={','.join(map(str, bbox))}",
                 "--detector", "index", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--orchestration", "in-process", "--no-progress"])
    errors, text = _errors(capsys)
    assert code == 2 and len(errors) == 1, text
    assert "'alos-dem'" in errors[0] and ",".join(f"{v:.5f}" for v in bbox) in errors[0], errors[0]
    assert "SLOPE" in errors[0]
    assert "Traceback" not in text and not (out / "manifest.json").exists()


@pytest.mark.parametrize("local_kw, target, needle", [
    ({"dem": "dem.tif"}, "pc", "not both"),
    ({}, "nowhere", "sources.loc.dem_source: unknown source 'nowhere'"),
    ({}, "plain", "sources.loc.dem_source: source 'plain' is of kind 'local'")])
def test_dem_source_is_validated(pc_api, tmp_path, capsys, local_kw, target, needle):
    catalog = _catalog(tmp_path, pc_api, _iburi_bands(), **local_kw)
    raw = yaml.safe_load(catalog.read_text())
    raw["sources"]["loc"]["dem_source"] = target
    catalog.write_text(yaml.safe_dump(raw))
    code = main(["scan", "--catalog", str(catalog), "--source", "loc", f"--bbox={IBURI_BBOX}",
                 "--detector", "index", "--out", str(tmp_path / "run"), "--no-progress"])
    errors, text = _errors(capsys)
    assert code == 2 and len(errors) == 1 and needle in errors[0], text


def test_landslide_dem_writes_the_served_window(pc_api, tmp_path, capsys):
    catalog = _catalog(tmp_path, pc_api, _iburi_bands())
    out = tmp_path / "dems" / "iburi.tif"
    code = main(["dem", f"--bbox={IBURI_BBOX}", "--source", "pc", "--catalog", str(catalog), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with rasterio.open(out) as got, rasterio.open(AW3D30_TIF) as src:
        assert got.crs == src.crs and got.res == pytest.approx(src.res) and got.nodata == src.nodata
        assert got.units == ("metre",) and got.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        win = from_bounds(*got.bounds, transform=src.transform).round_offsets().round_lengths()
        values, expected = got.read(1), src.read(1, window=win)
        west, south, east, north = (float(v) for v in IBURI_BBOX.split(","))
        assert got.bounds.left < west and got.bounds.right > east and got.bounds.bottom < south < north < got.bounds.top
        width, height = got.width, got.height
    np.testing.assert_array_equal(values, expected)  # the served file's pixels, not resampled
    assert values.max() > 100  # Iburi's hills, metres
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and ALOS_COLLECTION in lines[0] and f"{width} x {height} px" in lines[0]
    assert str(out) in lines[0]
    assert pc_api.storage.tokens.token_requests == {ALOS_COLLECTION: 1}  # signed reads, one token


@pytest.mark.parametrize("args, needle", [
    (["--bbox=141.98,42.70,141.93,42.74", "--source", "pc"], "is not minx,miny,maxx,maxy"),
    ([f"--bbox={IBURI_BBOX}", "--source", "nowhere"], "unknown source 'nowhere'"),
    ([f"--bbox={IBURI_BBOX}", "--source", "no-dem"], "--source 'no-dem' has no dem_collection"),
    ([f"--bbox={IBURI_BBOX}", "--source", "plain"], "--source 'plain' is a 'local' source"),
    ([f"--bbox={IBURI_BBOX}", "--source", "pc", "--exists"], "exists; choose another file or pass --overwrite"),
    (["--bbox=-75.69,37.64,-75.66,37.65", "--source", "pc"], "'alos-dem' of source 'pc'")])
def test_landslide_dem_refusals(pc_api, tmp_path, capsys, args, needle):
    catalog = _catalog(tmp_path, pc_api, _iburi_bands())
    raw = yaml.safe_load(catalog.read_text())
    raw["sources"]["no-dem"] = _pc_source(pc_api, dem_collection=None)
    catalog.write_text(yaml.safe_dump(raw))
    out = tmp_path / "dem.tif"
    if "--exists" in args:
        args = [a for a in args if a != "--exists"]
        out.write_bytes(b"earlier")
    code = main(["dem", *args, "--catalog", str(catalog), "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    errors, text = _errors(capsys)
    assert code == 2 and len(errors) == 1 and needle in errors[0], text
    assert "Traceback" not in text
    if "(no item" in needle or "'alos-dem'" in needle:  # searched, then refused: no file
        assert not out.exists() and "-75.69000,37.64000,-75.66000,37.65000" in errors[0]
    else:  # refused before any request
        assert pc_api.storage.faults.records == [] and pc_api.storage.tokens.token_requests == {}
        assert (not out.exists()) if "exists" not in needle else out.read_bytes() == b"earlier"
