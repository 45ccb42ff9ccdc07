"""The shipped catalog's real 13-band L1C scene (JPEG2000, native 10/20/60 m) through the whole flow.

The checkpoint here has random weights (a mechanics test, not a detector): it consumes all 12
Sentinel-2 bands of the contract, so every band is read, resampled to the 10 m grid and fed in
contract order. The scene has no DEM, so SLOPE/DEM stay nodata and the model does not use them.
"""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import torch

from flows.cli import main
from models.checkpoint import InputTransform, ModelCard, save_checkpoint
from models.registry import build_model
from tasks.core.bands import SPECTRAL_BAND_NAMES

BBOX = "-75.70,37.62,-75.675,37.64"  # ~2.2 x 2.2 km inside the T18SVG subset


@pytest.fixture(scope="module")
def twelve_band_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("Unet", "mobilenet_v2", in_channels=12)
    card = ModelCard(
        name="random-12band", version="0", arch="Unet", encoder="mobilenet_v2",
        bands=list(SPECTRAL_BAND_NAMES),
        input_transform=InputTransform.from_stats([1500.0] * 12, [800.0] * 12),
        threshold=0.5,
        trained_on={"dataset": "none (random weights: a mechanics test)", "split": "none",
                    "file_list_sha256": "0" * 64, "labels": "none"},
        training={"epochs": 0, "loss": "none", "seed": 0},
        description="random weights; not a detector")
    _, card_path = save_checkpoint(model, card, tmp_path_factory.mktemp("ckpt"))
    return card_path


def test_all_twelve_bands_from_the_catalog_entry(prefect_harness, tmp_path, twelve_band_checkpoint):
    out = tmp_path / "run"
    code = main(["scan", "--region", "t18svg-2016", "--bbox", BBOX, "--checkpoint",
                 str(twelve_band_checkpoint), "--out", str(out), "--no-progress"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["scene_ids"] == ["S2A_MSIL1C_20160112_T18SVG"]
    assert sorted(manifest["inputs"]["band_paths"]) == list(SPECTRAL_BAND_NAMES)
    assert manifest["inputs"]["acquired"].startswith("2016-01-12T15:58")
    stats = manifest["inputs"]["band_stats"]
    for band in SPECTRAL_BAND_NAMES:  # every band, whatever its native resolution, filled the grid
        assert stats[band]["finite_fraction"] > 0.95, band
    assert stats["SLOPE"]["finite_fraction"] == 0 and stats["DEM"]["finite_fraction"] == 0
    assert manifest["grid"]["crs"] == "EPSG:32618" and manifest["grid"]["res_m"] == 10.0
    # no cloud mask in the source: s2cloudless ran on the scene's own bands, and the manifest says how
    cloud = manifest["inputs"]["cloud_mask"]["scenes"]["S2A_MSIL1C_20160112_T18SVG"]
    assert cloud["method"]["method"] == "s2cloudless" and cloud["method"]["b8a"] == "B8A from the scene"
    assert set(cloud["class_px"]) == {"cloud", "shadow"}
    with rasterio.open(out / "probability.tif") as src:
        assert src.crs.to_epsg() == 32618 and src.res == (10.0, 10.0)
        prob = src.read(1)
    assert (prob != 255).mean() > 0.95
    info = pyogrio.read_info(out / "landslides.gpkg", layer="landslides")
    assert info["geometry_type"] == "Polygon"
    # terrain attributes are NaN (no DEM), never invented
    if info["features"]:
        import geopandas as gpd

        gdf = gpd.read_file(out / "landslides.gpkg", layer="landslides")
        assert gdf["mean_slope_deg"].isna().all() and gdf["mean_elev_m"].isna().all()
        assert np.isfinite(gdf["mean_prob"]).all()
