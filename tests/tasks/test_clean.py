"""Mask cleaning: threshold, morphology, holes, minimum area, valid mask; parameter validation."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from tasks.core.errors import InputError
from tasks.vector.clean import CleanParams, clean_mask, label_objects

NO_MORPHOLOGY = dict(opening_radius_px=0, closing_radius_px=0, fill_holes_max_area_m2=0.0)


def _blob(shape=(40, 40), box=(10, 30, 10, 30)) -> np.ndarray:
    prob = np.zeros(shape, np.float32)
    r0, r1, c0, c1 = box
    prob[r0:r1, c0:c1] = 0.9
    return prob


def test_defaults_and_output_type():
    p = CleanParams()
    assert (p.threshold, p.opening_radius_px, p.closing_radius_px) == (0.5, 1, 1)
    assert (p.fill_holes_max_area_m2, p.min_area_m2) == (2000.0, 500.0)
    out = clean_mask(_blob(), np.ones((40, 40), bool), 10.0)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    # opening with the radius-1 disk (a 3x3 cross) rounds the square's 4 corners off, nothing else
    assert out[11:29, 11:29].all() and out.sum() == 400 - 4


def test_numpy_scalars_are_accepted():
    p = CleanParams(threshold=np.float32(0.4), opening_radius_px=np.int64(2), min_area_m2=np.int32(0))
    assert clean_mask(_blob(), np.ones((40, 40), bool), np.float32(10.0), p).sum() > 0


def test_threshold_is_inclusive_and_nan_is_background():
    prob = np.array([[0.49, 0.5, np.nan, 0.7]], np.float32)
    out = clean_mask(prob, np.ones(prob.shape, bool), 10.0,
                     CleanParams(min_area_m2=0, **NO_MORPHOLOGY))
    assert out.tolist() == [[0, 1, 0, 1]]


@pytest.mark.parametrize("res_m, kept", [(10.0, True), (9.0, False), (10.5, True)])
def test_min_area_is_in_square_metres(res_m, kept):
    prob = np.zeros((10, 10), np.float32)
    prob[2, 2:7] = 0.9  # 5 pixels: 500 m2 at 10 m, 405 m2 at 9 m
    out = clean_mask(prob, np.ones(prob.shape, bool), res_m, CleanParams(**NO_MORPHOLOGY))
    assert bool(out.any()) is kept
    # the same object at a coarser resolution with a larger threshold
    out = clean_mask(prob, np.ones(prob.shape, bool), 20.0,
                     CleanParams(min_area_m2=2001.0, **NO_MORPHOLOGY))
    assert not out.any()


def test_opening_removes_one_pixel_noise():
    prob = _blob()
    rng = np.random.default_rng(3)
    noise = np.zeros_like(prob, bool)
    noise[rng.integers(0, 40, 15), rng.integers(0, 5, 15)] = True  # speckle outside the blob
    prob[noise] = 0.95
    valid = np.ones(prob.shape, bool)
    kept = clean_mask(prob, valid, 10.0, CleanParams(min_area_m2=0, closing_radius_px=0))
    assert not kept[:, :5].any() and kept[11:29, 11:29].all()
    raw = clean_mask(prob, valid, 10.0, CleanParams(min_area_m2=0, **NO_MORPHOLOGY))
    assert raw[:, :5].sum() == noise.sum()


def test_closing_and_opening_keep_objects_on_the_array_border():
    prob = np.ones((12, 12), np.float32)
    out = clean_mask(prob, np.ones(prob.shape, bool), 10.0, CleanParams(opening_radius_px=2,
                                                                          closing_radius_px=2))
    assert out.all()  # scipy's default border handling would erase the outer ring


def test_small_holes_are_filled_large_ones_kept():
    prob = _blob((50, 50), (5, 45, 5, 45))
    prob[10:13, 10:13] = 0.1  # 9 px = 900 m2 < 2000 -> filled
    prob[25:32, 25:32] = 0.1  # 49 px = 4900 m2 -> kept
    valid = np.ones(prob.shape, bool)
    params = dict(opening_radius_px=0, closing_radius_px=0)
    out = clean_mask(prob, valid, 10.0, CleanParams(**params))
    assert out[10:13, 10:13].all() and not out[25:32, 25:32].any()
    out = clean_mask(prob, valid, 10.0, CleanParams(fill_holes_max_area_m2=0, **params))
    assert not out[10:13, 10:13].any()
    # a notch open to the outside is not a hole
    prob2 = _blob((50, 50), (5, 45, 5, 45))
    prob2[5:8, 20:23] = 0.1
    out = clean_mask(prob2, valid, 10.0, CleanParams(**params))
    assert not out[5:8, 20:23].any()


def test_valid_mask_zeroes_outside():
    prob = np.full((30, 30), 0.9, np.float32)
    valid = np.zeros(prob.shape, bool)
    valid[:, :15] = True
    valid[5:8, 5:8] = False  # a small nodata hole: not filled back in
    out = clean_mask(prob, valid, 10.0)
    assert not out[~valid].any() and out[valid].all()
    assert not clean_mask(prob, np.zeros(prob.shape, bool), 10.0).any()


def test_every_object_is_large_enough_on_a_real_probability_map(shared_data):
    # a published CNN's confidence (percent, 0..99) over Iburi, ~10 m pixels; >= 50 is its own
    # "HighConf_50" mask
    folder = shared_data / "iburi_2018/reference_predictions_west"
    window = Window(col_off=900, row_off=900, width=400, height=400)
    with rasterio.open(folder / "sentry_ex1_Predict_LS_Conf.tif") as src:
        prob = src.read(1, window=window).astype(np.float32) / 100.0
    with rasterio.open(folder / "sentry_ex1_Predict_LS_HighConf_50.tif") as src:
        assert np.array_equal(src.read(1, window=window) > 0, prob >= 0.5)
    valid = np.ones(prob.shape, bool)
    raw_labels, raw_n = label_objects(prob >= 0.5)
    out = clean_mask(prob, valid, 10.0)
    labels, n = label_objects(out)
    sizes = np.bincount(labels.ravel())[1:]
    assert raw_n > 50 and 0 < n < raw_n
    assert sizes.min() * 100.0 >= 500.0
    assert out.sum() > 0.5 * (prob >= 0.5).sum()  # cleaning trims, it does not invent


def test_label_objects_is_4_connected_in_raster_order():
    mask = np.array([[0, 0, 1, 0],
                     [1, 0, 0, 1],
                     [0, 1, 0, 0],
                     [0, 1, 1, 0]], bool)
    labels, n = label_objects(mask)
    assert labels.dtype == np.int32 and n == 4  # diagonal contacts do not join
    assert labels[0, 2] == 1 and labels[1, 0] == 2 and labels[1, 3] == 3 and labels[3, 2] == 4
    with pytest.raises(InputError):
        label_objects(np.zeros((2, 2, 2)))


def test_min_area_uses_the_same_connectivity_as_labelling():
    prob = np.zeros((10, 10), np.float32)
    for i in range(6):  # a diagonal staircase of six 1-px objects: 6 x 100 m2 only if 8-connected
        prob[i, i] = 0.9
    out = clean_mask(prob, np.ones(prob.shape, bool), 10.0, CleanParams(**NO_MORPHOLOGY))
    assert not out.any()


@pytest.mark.parametrize("kwargs", [
    dict(threshold=0.0), dict(threshold=1.0), dict(threshold=1.5), dict(threshold=-0.1),
    dict(threshold="0.5"), dict(opening_radius_px=-1), dict(closing_radius_px=1.5),
    dict(closing_radius_px=True), dict(fill_holes_max_area_m2=-1.0),
    dict(min_area_m2=float("nan")), dict(min_area_m2=-5), dict(min_area_m2=float("inf")),
])
def test_params_are_validated(kwargs):
    with pytest.raises(InputError):
        CleanParams(**kwargs)


def test_arrays_and_resolution_are_validated():
    prob = np.zeros((5, 5), np.float32)
    with pytest.raises(InputError, match="shape"):
        clean_mask(prob, np.ones((5, 4), bool), 10.0)
    with pytest.raises(InputError, match="2-D"):
        clean_mask(np.zeros((1, 5, 5)), np.ones((1, 5, 5), bool), 10.0)
    with pytest.raises(InputError, match="res_m"):
        clean_mask(prob, np.ones((5, 5), bool), 0.0)
    with pytest.raises(InputError, match="CleanParams"):
        clean_mask(prob, np.ones((5, 5), bool), 10.0, params={"threshold": 0.5})
