"""Cloud shadow geometry and classes (tasks.raster.clouds) on synthetic bright/dark patches."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from tasks.raster.clouds import (
    CLEAR,
    CLOUD,
    SHADOW,
    classify,
    dilate,
    shadow_candidates,
    shadow_offsets_px,
    shift,
    solar_position,
)


def test_solar_position_noon_equinox_and_the_t18svg_overpass():
    az, zen = solar_position(dt.datetime(2016, 3, 20, 12, 0, tzinfo=dt.timezone.utc), 0.0, 0.0)
    assert zen < 2.5  # the sun overhead the equator at the equinox, near noon
    # Sentinel-2A over 18SVG (Virginia) at 15:58 UTC in January: a low morning-ish sun from the south-east
    az, zen = solar_position(dt.datetime(2016, 1, 12, 15, 58, tzinfo=dt.timezone.utc), -75.6, 37.67)
    assert 145 < az < 170 and 55 < zen < 68


def test_shift_moves_without_wrapping():
    m = np.zeros((5, 5), dtype=bool)
    m[0, 4] = True
    assert shift(m, 1, 0)[1, 4] and shift(m, 1, 0).sum() == 1
    assert not shift(m, 0, 1).any()  # moved off the east edge, not wrapped to the west
    assert not shift(m, 10, 0).any()


@pytest.mark.parametrize(("azimuth", "direction"), [(180.0, (-1, 0)), (90.0, (0, -1)), (0.0, (1, 0)),
                                                    (270.0, (0, 1))])
def test_shadow_falls_away_from_the_sun(azimuth, direction):
    # sun in the south (az 180) -> the shadow lies north of the cloud (rows decrease); sun in the east -> west
    offsets = shadow_offsets_px(10.0, azimuth, 45.0, (100.0, 300.0))
    drow, dcol = direction
    assert offsets[0] == (10 * drow, 10 * dcol) and offsets[-1] == (30 * drow, 30 * dcol)
    assert len(offsets) == 21  # one per pixel of displacement: no gap


def test_shadow_candidates_of_a_square_cloud():
    cloud = np.zeros((100, 100), dtype=bool)
    cloud[60:70, 40:50] = True  # a 100 m square cloud at 10 m
    # sun from the south-east at zenith 45 degrees, clouds 100..200 m high: shadow 100..200 m to the north-west
    zone = shadow_candidates(cloud, 10.0, 135.0, 45.0, (100.0, 200.0))
    d = 100 / np.sqrt(2) / 10  # ~7.07 px north and 7.07 px west for 100 m
    assert zone[round(60 - d), round(40 - d)] and zone[round(60 - 2 * d), round(40 - 2 * d)]
    assert not zone[cloud].any()  # under the cloud it is cloud, not shadow
    assert not zone[80:, :].any() and not zone[:, 60:].any()  # nothing south or east of the cloud
    # a higher range moves it further
    far = shadow_candidates(cloud, 10.0, 135.0, 45.0, (400.0, 400.0))  # 28.3 px north and west
    rows, cols = np.nonzero(far)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (32, 41, 12, 21)


def test_classify_needs_dark_nir_for_shadow():
    cloud = np.zeros((4, 4), dtype=bool)
    cloud[0, 0] = True
    zone = np.zeros((4, 4), dtype=bool)
    zone[1, :] = True
    nir = np.full((4, 4), 3000.0, dtype="float32")
    nir[1, :2] = 800.0  # dark: shadow
    nir[1, 2] = np.nan  # no data is never shadow
    out = classify(cloud, zone, nir, 1500.0)
    assert out[0, 0] == CLOUD
    assert list(out[1]) == [SHADOW, SHADOW, CLEAR, CLEAR]
    assert (out[2:] == CLEAR).all()


def test_shadow_rejects_a_sun_below_the_horizon():
    with pytest.raises(ValueError, match="horizon"):
        shadow_offsets_px(10.0, 180.0, 95.0, (100.0, 200.0))


def test_dilate_by_a_disk():
    m = np.zeros((9, 9), dtype=bool)
    m[4, 4] = True
    out = dilate(m, 2)
    assert out[4, 2] and out[2, 4] and not out[2, 2] and out.sum() == 13
    assert (dilate(m, 0) == m).all()


def test_water_next_to_a_cloud_is_not_shadow():
    cloud = np.zeros((2, 3), dtype=bool)
    zone = np.ones((2, 3), dtype=bool)
    nir = np.array([[800.0, 800.0, 800.0], [800.0, 800.0, 800.0]], dtype="float32")
    green = np.array([[500.0, 1200.0, np.nan], [500.0, 500.0, 500.0]], dtype="float32")
    out = classify(cloud, zone, nir, 1500.0, green)
    assert list(out[0]) == [SHADOW, CLEAR, CLEAR] and (out[1] == SHADOW).all()
