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

from devservers.sas_storage import ALOS_COLLECTION, S2_COLLECTION
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
