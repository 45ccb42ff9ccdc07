"""The GLO-30 path end to end, the way a user goes: ``landslide dem`` from a STAC API's ``cop-dem-glo-30``
collection, then ``landslide dem-compare`` of the fetched file against the real tile.

The GLO-30 tiles over the Iburi sample (N42E141, N42E142) are not on these machines (docs/dem_comparison.md),
so this runs the path on the one real GLO-30 tile here (N00E006, Sao Tome), served by the local STAC API
(``stac_api``: real HTTP on 127.0.0.1, ``rustac serve`` + a COG file server, real GDAL reads). What it
proves: the pixels ``landslide dem`` writes are the served product's, unresampled; compared with the
original tile their heights differ by exactly zero and their slopes by GDAL's warp approximation only
(below); the product and its vertical datum are recorded for both.
"""

from __future__ import annotations

import json

import pytest
import rasterio
import yaml

from devservers.stac_server import DEM_COLLECTION, DEM_CROP_BOUNDS, GLO30_TIF
from flows.cli import main

pytest.importorskip("pystac_client")

# ~2.2 x 2.2 km of steep volcanic slopes on Sao Tome, inside the served crop (6.50..6.70 E, 0.20..0.40 N):
# all land (about 280..1400 m)
BBOX = (6.55, 0.25, 6.57, 0.27)
BBOX_TEXT = ",".join(f"{v:g}" for v in BBOX)


def test_landslide_dem_then_dem_compare_against_the_real_tile(stac_api, tmp_path, capsys):
    west, south, east, north = BBOX
    cw, cs, ce, cn = DEM_CROP_BOUNDS
    assert cw < west < east < ce and cs < south < north < cn  # the bbox lies inside what the server serves
    catalog = tmp_path / "data_catalog.yaml"
    catalog.write_text(yaml.safe_dump({"version": 1, "sources": {
        "local-stac": {"kind": "stac", "url": stac_api.url, "dem_collection": DEM_COLLECTION,
                       "max_retries": 1, "timeout_s": 10}}}))
    dem = tmp_path / "dem.tif"
    code = main(["dem", f"--bbox={BBOX_TEXT}", "--source", "local-stac", "--catalog", str(catalog),
                 "--out", str(dem), "--cache-dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert DEM_COLLECTION in captured.out and str(dem) in captured.out
    # the DEM really came over HTTP from the COG server, not from a local path
    assert [r for r in stac_api.faults.records if "copernicus-dem-30m" in r.path and r.status in (200, 206)]
    with rasterio.open(dem) as got, rasterio.open(GLO30_TIF) as real:
        assert got.crs == real.crs and got.res == pytest.approx(real.res)
        assert got.tags()["dem_collection"] == DEM_COLLECTION and got.units == ("metre",)
        assert got.nodata is None  # Copernicus DEM has none: its sea is 0 m
        window = rasterio.windows.from_bounds(*got.bounds, transform=real.transform)
        assert window.col_off == pytest.approx(round(window.col_off), abs=1e-6)  # on the tile's own posting
        values = got.read(1)
        expected = real.read(1, window=window.round_offsets().round_lengths())
    assert values.shape == expected.shape and (values == expected).all()  # the tile's pixels, unresampled
    assert values.min() > 100  # land with relief over the whole bbox, in metres

    code = main(["dem-compare", "--a", str(GLO30_TIF), "--b", str(dem), f"--bbox={BBOX_TEXT}", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    pixels = report["pixels"]
    assert pixels["compared"] > 40_000 and pixels["compared"] == pixels["in_roi"]  # ~220 x 220 px at 10 m
    assert pixels["no_data_a"] == pixels["no_data_b"] == pixels["excluded"] == 0
    elevation, slope = report["elevation_m"]["overall"], report["slope_deg"]["overall"]
    assert elevation["count"] == slope["count"] == pixels["compared"]
    assert elevation["rmse"] == elevation["mae"] == elevation["bias"] == 0.0, elevation  # the same heights
    # Slope is computed on each file reprojected to UTM; GDAL's approximate transformer (0.125 px) is
    # fitted over the destination's extent, so warping the whole 1 x 1 degree tile samples its pixels a
    # little differently from warping the ~2 km window (warping the whole tile onto the window's metric
    # grid gives identical heights). Measured: slope RMSE 0.147 deg, MAE 0.107, bias 0.004 over 49,062 px.
    assert slope["rmse"] < 0.3 and abs(slope["bias"]) < 0.05 and slope["p95_abs"] < 0.5, slope
    # the product and datum as the code records them: A from its file name, B from the tag `landslide dem` wrote
    assert report["a"]["collection"] == report["b"]["collection"] == DEM_COLLECTION
    assert report["a"]["identified_from"] == "file name" and report["b"]["identified_from"] == "file tag"
    assert report["a"]["vertical_datum"] == report["b"]["vertical_datum"] == "EGM2008 geoid"
    assert not [n for n in report["notes"] if "vertical datum" in n and " is over " in n]  # same datum
    by_class = report["slope_deg"]["by_slope_class_of_a"]
    assert sum(c["count"] for c in by_class.values()) == pixels["compared"]
    assert all(c["rmse"] is None or c["rmse"] < 0.5 for c in by_class.values())
