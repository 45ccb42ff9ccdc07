"""Scene choice, per-pixel mosaics in alignment, and each polygon's majority scene (``tasks.sources.mosaic``)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from tasks.core.bands import BAND_NAMES
from tasks.core.grid import AnalysisGrid
from tasks.raster.align import build_stack
from tasks.sources.local import SceneInputs
from tasks.sources.mosaic import (
    SceneCandidate,
    choose_mosaic,
    label_scene_counts,
    majority_from_counts,
    majority_scene,
    rank_candidates,
    read_scenes,
    scene_attrs,
    window_end,
)

END = window_end(dt.date(2017, 1, 31))


def test_majority_scene_per_label():
    scene = np.array([[1, 1, 2, 2, 0],
                      [1, 2, 2, 2, 0],
                      [0, 0, 3, 3, 0]], dtype=np.uint8)
    labels = np.array([[1, 1, 1, 2, 5],
                       [1, 1, 2, 2, 5],
                       [0, 0, 3, 3, 0]], dtype=np.int32)
    # label 1: scenes 1,1,2,1,2 -> 1; label 2: 2,2,2 -> 2; label 3: 3,3 -> 3; label 5 only on no scene -> 0
    assert majority_scene(scene, labels) == {1: 1, 2: 2, 3: 3, 5: 0}
    assert label_scene_counts(scene, labels)[1] == {1: 3, 2: 2}
    assert label_scene_counts(scene, labels)[5] == {0: 2}
    # a tie goes to the better-ranked (lower) index; no-scene pixels never win
    assert majority_from_counts({2: 4, 1: 4, 0: 9}) == 1
    # counts of two blocks add up for a polygon crossing a seam
    left, right = label_scene_counts(scene[:, :2], labels[:, :2]), label_scene_counts(scene[:, 2:], labels[:, 2:])
    merged = {s: left[1].get(s, 0) + right[1].get(s, 0) for s in set(left[1]) | set(right[1])}
    assert merged == {1: 3, 2: 2}
    assert majority_scene(scene, np.zeros_like(labels)) == {}
    with pytest.raises(ValueError, match="differ in shape"):
        majority_scene(scene, labels[:, :3])


def test_choose_mosaic_rule():
    roi = shapely.box(0, 0, 10, 10)
    west = SceneCandidate("W", 3.0, "2017-01-10T16:00:00+00:00", shapely.box(-1, -1, 6, 11))
    east = SceneCandidate("E", 5.0, "2017-01-20T16:00:00+00:00", shapely.box(4, -1, 11, 11))
    inner = SceneCandidate("I", 1.0, "2017-01-15T16:00:00+00:00", shapely.box(4.5, 2, 5.5, 8))
    dup = SceneCandidate("D", 4.0, "2017-01-15T16:00:00+00:00", shapely.box(0, 0, 5, 10))  # inside I + W
    full = SceneCandidate("F", 20.0, "2017-01-01T16:00:00+00:00", shapely.box(-5, -5, 15, 15))
    east_old = SceneCandidate("E0", 5.0, "2016-12-01T16:00:00+00:00", shapely.box(4, -1, 11, 11))
    assert [c.scene_id for c in rank_candidates([east_old, east, west], END)] == ["W", "E", "E0"]
    # a scene covering the ROI is used alone, even when others are less cloudy
    chosen, covered = choose_mosaic([west, east, full], roi, END)
    assert [c.scene_id for c in chosen] == ["F"] and covered == 1.0
    # none covers it: ranked scenes while they add area (the small inner one first: least cloudy;
    # D adds nothing once I and W are in; E0 ranks after E, which covers the rest)
    chosen, covered = choose_mosaic([east, east_old, dup, west, inner], roi, END)
    assert [c.scene_id for c in chosen] == ["I", "W", "E"] and covered == pytest.approx(1.0)
    chosen, covered = choose_mosaic([east, west], roi, END, max_scenes=1)
    assert [c.scene_id for c in chosen] == ["W"] and covered == pytest.approx(0.6)
    assert choose_mosaic([SceneCandidate("X", 1.0, "", shapely.box(20, 20, 30, 30))], roi, END) == ([], 0.0)


def _band(path, data, transform, nodata=0):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs="EPSG:32618", transform=transform, nodata=nodata) as dst:
        dst.write(data, 1)
    return str(path)


def test_build_stack_per_pixel_mosaic(tmp_path):
    """Two scenes with different footprints (a west one with a cloud mask, an east one with the
    baseline-04 offset): every pixel comes from the first-ranked scene with data and no cloud there."""
    h, w = 40, 60
    grid = AnalysisGrid(crs="EPSG:32618", res_m=10.0, xmin=438000.0, ymax=4177000.0, width=w, height=h)
    tr = from_origin(grid.xmin, grid.ymax, 10, 10)
    rng = np.random.default_rng(0)
    real = rng.integers(500, 3000, size=(2, h, w), dtype=np.uint16)
    west = real.copy()
    west[:, :, 35:] = 0  # west footprint: columns 0..34
    east = real + 111
    east[:, :, :20] = 0  # east footprint: columns 20..59
    east_dn = np.where(east > 0, east + 1000, 0).astype(np.uint16)  # baseline 04.00 offset
    cloud = np.zeros((h, w), dtype=np.uint8)
    cloud[5:10, 25:30] = 1  # west is cloudy in part of the overlap: east fills it
    cloud[30:35, 2:7] = 1  # ... and outside it: nothing fills those
    scenes = []
    for sid, arr, offset, mask in (("W", west, 0.0, cloud), ("E", east_dn, 1000.0, None)):
        paths = {b: _band(tmp_path / f"{sid}_{b}.tif", arr[i], tr) for i, b in enumerate(("B02", "B04"))}
        spec = None
        if mask is not None:
            spec = {"path": _band(tmp_path / f"{sid}_clm.tif", mask, tr, nodata=None), "cloud_values": [1],
                    "origin": "test"}
        scenes.append({"scene_id": sid, "acquired": f"2017-01-{10 if sid == 'W' else 20}T16:00:00+00:00",
                       "cloud_pct": 3.0 if sid == "W" else 5.0, "processing_baseline": "04.00" if offset else "02.04",
                       "offset_dn": offset, "band_paths": paths, "band_nodata": 0.0, "cloud_mask": spec})
    inputs = SceneInputs(source="t", scene_id="W+E", acquired=None, acquired_range=("2017-01-10", "2017-01-20"),
                         band_paths=scenes[0]["band_paths"], available_bands=("B02", "B04"), dem_path=None,
                         band_nodata=0.0, dem_nodata=None, offset_dn=0.0, processing_baseline=None,
                         extent_lonlat=(0, 0, 1, 1), mosaic=scenes)
    inputs = SceneInputs.from_dict(json.loads(json.dumps(inputs.to_dict())))  # survives the plan's JSON
    res = build_stack(inputs, grid, tmp_path / "work", ("B02", "B04"), chunk_px=16)
    with rasterio.open(tmp_path / "work" / "scene_index.tif") as src:
        index = src.read(1)
        assert src.dtypes[0] == "uint8" and src.transform == tr
    with rasterio.open(res.stack_path) as src:
        stack = src.read()
    with rasterio.open(res.valid_path) as src:
        valid = src.read(1)
    expected = np.zeros((h, w), dtype=np.uint8)
    expected[:, 20:] = 2
    expected[:, :35] = 1
    expected[cloud == 1] = 0
    expected[5:10, 25:30] = 2
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(valid, (expected > 0).astype(np.uint8))
    for i, band in enumerate(("B02", "B04")):
        got = stack[BAND_NAMES.index(band)]
        np.testing.assert_array_equal(got[index == 1], real[i][index == 1].astype(np.float32))
        np.testing.assert_array_equal(got[index == 2], (real[i] + 111)[index == 2].astype(np.float32))
        assert np.isnan(got[index == 0]).all()
    record = read_scenes(tmp_path / "work")
    assert record["mosaic"] is True and [e["scene_id"] for e in record["scenes"]] == ["W", "E"]
    counts = [e["pixels"] for e in record["scenes"]]
    assert counts == [int((index == 1).sum()), int((index == 2).sum())]
    assert sum(counts) + record["no_scene_px"] == h * w and record["analysed_px"] == int(valid.sum())
    assert record["scenes"][0]["cloud_masked_px"] == int(cloud.sum())  # 50 cloud px where W was first choice
    assert record["scenes"][1]["offset_removed_dn"] == 1000.0
    assert res.cloud_masked_px == 25  # only the cloud outside the overlap stays unanalysed
    assert scene_attrs(record, 2) == ("E", "2017-01-20T16:00:00+00:00") and scene_attrs(record, 0) == (None, None)
    cloud_record = json.loads((tmp_path / "work" / "cloud_mask.json").read_text())
    assert cloud_record["applied"] and cloud_record["scenes"]["W"]["cloud_masked_px"] == 50
    assert cloud_record["scenes"]["E"] == {"cloud_masked_px": 0, "mask": False}


def test_single_scene_writes_one_entry(tmp_path):
    h, w = 20, 20
    grid = AnalysisGrid(crs="EPSG:32618", res_m=10.0, xmin=438000.0, ymax=4177000.0, width=w, height=h)
    data = np.full((h, w), 900, dtype=np.uint16)
    data[:, :5] = 0
    path = _band(tmp_path / "b02.tif", data, from_origin(grid.xmin, grid.ymax, 10, 10))
    inputs = SceneInputs(source="t", scene_id="S", acquired="2016-01-12T16:00:32+00:00", acquired_range=None,
                         band_paths={"B02": path}, available_bands=("B02",), dem_path=None, band_nodata=0.0,
                         dem_nodata=None, offset_dn=0.0, processing_baseline="02.01", extent_lonlat=(0, 0, 1, 1))
    build_stack(inputs, grid, tmp_path / "work", ("B02",))
    record = read_scenes(tmp_path / "work")
    assert record["mosaic"] is False and len(record["scenes"]) == 1
    assert record["scenes"][0]["scene_id"] == "S" and record["scenes"][0]["pixels"] == 15 * 20
    with rasterio.open(tmp_path / "work" / "scene_index.tif") as src:
        assert set(np.unique(src.read(1)).tolist()) == {0, 1}


def test_assign_polygon_scenes_takes_each_polygons_majority_scene(tmp_path):
    import geopandas as gpd
    import pandas as pd
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import box

    from tasks.sources.mosaic import assign_polygon_scenes

    index = np.zeros((20, 30), np.uint8)
    index[:, :15] = 1
    index[:, 15:] = 2
    t = from_origin(1000, 2000, 10, 10)
    with rasterio.open(tmp_path / "scene_index.tif", "w", driver="GTiff", width=30, height=20, count=1,
                       dtype="uint8", crs="EPSG:32618", transform=t) as dst:
        dst.write(index, 1)
    scenes = {"mosaic": True, "scenes": [
        {"index": 1, "scene_id": "west", "acquired": "2017-01-03T15:50:00+00:00"},
        {"index": 2, "scene_id": "east", "acquired": "2017-01-13T15:50:00+00:00"}]}
    polys = gpd.GeoDataFrame({"scene_id": ["west+east"] * 3, "acquired": [pd.NaT] * 3,
                              "acquired_note": ["composite, no scene date"] * 3}, geometry=[
        box(1000, 1900, 1100, 2000),   # columns 0-9: all west
        box(1120, 1900, 1200, 2000),   # columns 12-19: 3 west, 5 east -> east
        box(1140, 1800, 1160, 1900),   # columns 14-15: one each -> the better-ranked, west
    ], crs="EPSG:32618")
    out = assign_polygon_scenes(polys, tmp_path / "scene_index.tif", scenes)
    assert list(out["scene_id"]) == ["west", "east", "west"]
    assert out["acquired_note"].isna().all()  # every polygon's scene has a date now
    assert out["acquired"].iloc[1] == pd.Timestamp("2017-01-13T15:50:00Z")
