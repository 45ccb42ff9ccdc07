"""The chip layout on the real Chittagong chips (../shared/data/chittagong_s2_landslide_labels).

Bad-input variants are built from copies of a few real image/label pairs in tmp_path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from models.data.chips import ChipDataset
from models.data.dataset_api import PatchDataset
from models.metrics import IGNORE
from tasks.core.bands import band_index
from tasks.core.errors import InputError

PAIRS = ("000000000005", "000000000006", "000000000040", "000000000041")


@pytest.fixture(scope="module")
def chit(shared_data: Path) -> Path:
    return shared_data / "chittagong_s2_landslide_labels"


@pytest.fixture
def few(chit: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Four real image/label pairs copied to tmp_path/images and tmp_path/labels."""
    img, lab = tmp_path / "images", tmp_path / "labels"
    img.mkdir()
    lab.mkdir()
    for n in PAIRS:
        shutil.copy(chit / "images" / f"{n}.tif", img)
        shutil.copy(chit / "labels" / f"{n}.tif", lab)
    return img, lab


def rewrite(path: Path, data: np.ndarray, **overrides) -> None:
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(count=data.shape[0], height=data.shape[1], width=data.shape[2],
                   dtype=data.dtype, **overrides)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def test_all_real_chips(chit: Path) -> None:
    ds = ChipDataset(chit / "images", chit / "labels")
    assert isinstance(ds, PatchDataset)
    assert len(ds) == 72 and ds.has_labels
    assert ds.bands_available == ("B02", "B03", "B04", "B08")
    s = ds[5]
    assert s.name == "000000000005" and s.image.shape == (14, 256, 256)
    assert s.image.dtype == np.float32 and s.labels.dtype == np.uint8
    assert s.crs.to_epsg() == 4326
    with rasterio.open(chit / "images" / "000000000005.tif") as src:
        raw, transform = src.read(), src.transform
    assert s.transform == transform
    # absent channels are NaN; file band k lands on its contract channel
    for b in ("B01", "B05", "B10", "SLOPE", "DEM"):
        assert np.isnan(s.image[band_index(b)]).all()
    valid = ~(raw == 0).all(axis=0)
    for k, b in enumerate(("B04", "B03", "B02", "B08")):
        np.testing.assert_array_equal(s.image[band_index(b)][valid], raw[k][valid])
    # S2 no-data (0 in every band) -> NaN, labels there ignored
    assert np.isnan(s.image[band_index("B04")][~valid]).all()
    assert (s.labels[~valid] == IGNORE).all()
    # label map {0: 255, 1: 0, 2: 1}
    with rasterio.open(chit / "labels" / "000000000005.tif") as src:
        stored = src.read(1)
    assert ((s.labels == 1) == ((stored == 2) & valid)).all()
    assert ((s.labels == 0) == ((stored == 1) & valid)).all()
    assert set(np.unique(s.labels)) == {0, 1, IGNORE}


def test_real_chip_band_order_is_r_g_b_nir(chit: Path) -> None:
    # vegetated hills: NIR > red on >= 99.6 % of valid pixels in every chip (measured 99.6..100 %)
    ds = ChipDataset(chit / "images", chit / "labels")
    for i in (0, 20, 40, 71):
        s = ds[i]
        nir, red = s.image[band_index("B08")], s.image[band_index("B04")]
        v = np.isfinite(red)
        assert v.any() and (nir[v] > red[v]).mean() > 0.99


def test_select_bands_refuses_missing_bands(few: tuple[Path, Path]) -> None:
    ds = ChipDataset(*few)
    s = ds[0]
    assert ds.select_bands(s, ["B08", "B04"]).shape == (2, 256, 256)
    with pytest.raises(InputError, match="dataset has no B05, DEM .it has B02 B03 B04 B08."):
        ds.select_bands(s, ["B05", "DEM", "B04"])


def test_images_without_labels(few: tuple[Path, Path], tmp_path: Path) -> None:
    img, _ = few
    empty = tmp_path / "no_labels"
    empty.mkdir()
    for labels_dir in (None, empty, tmp_path / "absent"):
        ds = ChipDataset(img, labels_dir)
        assert not ds.has_labels and ds[0].labels is None
        assert ds[0].image.shape == (14, 256, 256)
        with pytest.raises(InputError, match="has no labels: evaluation needs them.*prediction"):
            ds.require_labels()


def test_mismatched_counts_name_the_files(few: tuple[Path, Path]) -> None:
    img, lab = few
    (lab / f"{PAIRS[1]}.tif").unlink()
    shutil.copy(lab / f"{PAIRS[0]}.tif", lab / "999999999999.tif")
    with pytest.raises(InputError, match=rf"4 chips vs 4 labels do not pair up.*images without a "
                                         rf"label .*: {PAIRS[1]}\.tif; labels without an image .*"
                                         r"999999999999\.tif"):
        ChipDataset(img, lab)


def test_label_of_another_shape_or_grid(few: tuple[Path, Path]) -> None:
    img, lab = few
    rewrite(lab / f"{PAIRS[0]}.tif", np.ones((1, 128, 128), np.uint16))
    ds = ChipDataset(img, lab)
    with pytest.raises(InputError, match=rf"{PAIRS[0]}\.tif is 128x128 px but .*{PAIRS[0]}\.tif is "
                                         "256x256"):
        ds[0]
    with rasterio.open(lab / f"{PAIRS[1]}.tif") as src:
        data, t = src.read(), src.transform
    rewrite(lab / f"{PAIRS[1]}.tif", data, transform=t * Affine.translation(40, 0))
    with pytest.raises(InputError, match="is on another grid than"):
        ds[1]


def test_wrong_band_count_and_unknown_band(few: tuple[Path, Path]) -> None:
    img, lab = few
    with pytest.raises(InputError, match=r"has 4 bands but band_order names 3 \(B04 B03 B02\)"):
        ChipDataset(img, lab, band_order=("B04", "B03", "B02"))[0]
    with pytest.raises(InputError, match="unknown band 'NIR'"):
        ChipDataset(img, lab, band_order=("B04", "B03", "B02", "NIR"))
    with pytest.raises(InputError, match="listed twice: B04"):
        ChipDataset(img, lab, band_order=("B04", "B04", "B02", "B08"))


def test_labels_outside_the_map(few: tuple[Path, Path]) -> None:
    img, lab = few
    with rasterio.open(lab / f"{PAIRS[2]}.tif") as src:
        data = src.read()
    data[0, :3, :3] = 7
    rewrite(lab / f"{PAIRS[2]}.tif", data)
    with pytest.raises(InputError, match=r"holds label values \[7\]; allowed are \[0, 1, 2\]"):
        ChipDataset(img, lab)[2]
    ds = ChipDataset(img, lab, label_map={0: 255, 1: 0, 2: 1, 7: 255})
    assert (ds[2].labels[:3, :3] == IGNORE).all()
    with pytest.raises(InputError, match=r"label_map maps to \[2\]"):
        ChipDataset(img, lab, label_map={0: 255, 1: 0, 2: 2})


def test_nan_in_a_chip(few: tuple[Path, Path]) -> None:
    img, lab = few
    path = img / f"{PAIRS[3]}.tif"
    with rasterio.open(path) as src:
        data = src.read()
    data[1, 100, 100] = np.nan
    data[3, 101, 100] = np.inf
    rewrite(path, data)
    ds = ChipDataset(img, lab)
    assert ds.check_finite() == [path]
    with pytest.raises(InputError, match=rf"{PAIRS[3]}\.tif holds 2 NaN/inf values.*check_finite"):
        ds[3]
    assert ds[0].labels is not None


def test_missing_image_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="chip image folder .* not found"):
        ChipDataset(tmp_path / "absent")
    with pytest.raises(InputError, match="holds no .tif chips"):
        ChipDataset(tmp_path)
