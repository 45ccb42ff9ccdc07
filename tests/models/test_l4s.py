"""The L4S h5 reader on the 14 real Landslide4Sense patches (../shared/data/l4s_test_patches).

The real patches come without masks. Tests that need masks write them to tmp_path; those masks are
SYNTHETIC (a threshold on the real red band), marked as such where they are made, and only exercise
the reader's plumbing, never a metric.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from models.data.dataset_api import PatchDataset, Sample
from models.data.l4s import L4SDataset, mask_path_for, read_split_list
from tasks.core.bands import BAND_NAMES, L4S_SCALE, band_index
from tasks.core.errors import InputError


@pytest.fixture(scope="module")
def l4s_dir(shared_data: Path) -> Path:
    d = shared_data / "l4s_test_patches"
    assert len(list((d / "img").glob("image_*.h5"))) == 14
    return d


@pytest.fixture(scope="module")
def real(l4s_dir: Path) -> L4SDataset:
    return L4SDataset(l4s_dir)


@pytest.fixture(scope="module")
def stack(real: L4SDataset) -> np.ndarray:
    """All 14 real patches in physical units, (N, 14, H, W) float64."""
    return np.stack([real[i].image for i in range(len(real))]).astype(np.float64)


def write_synthetic_masks(img_dir: Path, mask_dir: Path) -> None:
    """SYNTHETIC masks for plumbing tests: 1 where the real red band (B04) is bright, else 0."""
    mask_dir.mkdir(parents=True, exist_ok=True)
    for p in sorted(img_dir.glob("image_*.h5")):
        with h5py.File(p) as f:
            red = f["img"][..., band_index("B04")]
        synthetic = (red > np.percentile(red, 90)).astype(np.uint8)
        with h5py.File(mask_dir / p.name.replace("image_", "mask_"), "w") as f:
            f["mask"] = synthetic


def copy_patches(l4s_dir: Path, dst: Path, n: int | None = None) -> list[Path]:
    (dst / "img").mkdir(parents=True)
    src = sorted((l4s_dir / "img").glob("image_*.h5"))[:n]
    return [Path(shutil.copy(p, dst / "img" / p.name)) for p in src]


# -- the real patches -------------------------------------------------------------------------
def test_reads_real_patches_in_physical_units(real: L4SDataset) -> None:
    assert isinstance(real, PatchDataset)
    assert len(real) == 14 and not real.has_labels and real.bands_available == BAND_NAMES
    s = real[0]
    assert isinstance(s, Sample) and s.labels is None
    assert s.image.shape == (14, 128, 128) and s.image.dtype == np.float32
    assert s.name == "img/image_31"
    # numeric order, not lexical
    assert [real[i].name for i in (0, -1)] == ["img/image_31", "img/image_90"]
    with h5py.File(real.image_paths[0]) as f:
        stored = f["img"][()]
    np.testing.assert_allclose(s.image, (stored * np.asarray(L4S_SCALE)).transpose(2, 0, 1),
                               rtol=1e-6)
    assert real.check_finite() == []


def test_l4s_scale_restores_integer_values(stack: np.ndarray) -> None:
    # The stored values are DN / L4S_SCALE: multiplying back gives integers (DN, whole degrees,
    # whole metres) to within the rounding of the published 2-decimal scales. Measured max
    # |x - round(x)|: <= 0.03 for every channel except B10 (0.11, its scale 9.05 has 3 digits).
    frac = np.abs(stack - np.round(stack)).max(axis=(0, 2, 3))
    tol = np.where(np.asarray(BAND_NAMES) == "B10", 0.15, 0.05)
    assert (frac < tol).all(), dict(zip(BAND_NAMES, frac.round(3)))


def test_l4s_scaled_means_are_about_one(stack: np.ndarray) -> None:
    # Landslide4Sense: per-channel means of the stored (scaled) values are about 1. Measured on these 14
    # test patches: 0.99..1.42 for B01-B08, B11, B12, SLOPE; B09 1.67, DEM 1.64, B10 4.06.
    scaled_means = (stack / np.asarray(L4S_SCALE)[None, :, None, None]).mean(axis=(0, 2, 3))
    m = dict(zip(BAND_NAMES, scaled_means))
    for b in ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12", "SLOPE"):
        assert 0.8 < m[b] < 1.5, (b, m[b])
    assert 0.8 < m["B09"] < 2.0 and 0.8 < m["DEM"] < 2.0 and 2.0 < m["B10"] < 6.0


def test_band_order_on_real_patches(stack: np.ndarray) -> None:
    ch = {b: stack[:, i] for i, b in enumerate(BAND_NAMES)}
    # B10 (cirrus, 1375 nm) is absorbed by water vapour: tiny DN (measured 3..455, mean 37)
    assert ch["B10"].max() < 600 and ch["B10"].mean() < 60
    assert (ch["B10"] < ch["B02"]).all()
    # S2 bands are reflectance x 10000 (measured 21..4449 outside B10)
    for b in BAND_NAMES[:12]:
        assert 0 < ch[b].min() and ch[b].max() < 10000, b
    # vegetated mountains: NIR > red on > 99.9 % of pixels (measured 99.994 %), mean NDVI 0.58
    assert (ch["B08"] > ch["B04"]).mean() > 0.999
    ndvi = (ch["B08"] - ch["B04"]) / (ch["B08"] + ch["B04"])
    assert 0.4 < ndvi.mean() < 0.75
    # red edge rises towards NIR: B05 < B06 < B07 on average
    assert ch["B05"].mean() < ch["B06"].mean() < ch["B07"].mean()
    # SLOPE in degrees (measured 0..72), DEM in metres (measured 77..3399)
    assert ch["SLOPE"].min() >= 0 and 40 < ch["SLOPE"].max() <= 90
    assert 0 < ch["DEM"].min() and 1000 < ch["DEM"].max() < 9000


def test_slope_channel_is_the_slope_of_the_dem_channel(stack: np.ndarray) -> None:
    # Independent check of channels 13/14 and of the ~10 m pixel: slope from the DEM's gradient
    # at 10 m tracks the SLOPE channel (measured r = 0.72..0.96 per patch, means within 5 deg).
    for p in stack:
        gy, gx = np.gradient(p[band_index("DEM")], 10.0)
        derived = np.degrees(np.arctan(np.hypot(gx, gy)))
        given = p[band_index("SLOPE")]
        assert np.corrcoef(derived.ravel(), given.ravel())[0, 1] > 0.6
        assert abs(derived.mean() - given.mean()) < 6


def test_select_bands_and_unknown_band(real: L4SDataset) -> None:
    s = real[0]
    sel = real.select_bands(s, ["DEM", "b4", "B03"])
    assert sel.shape == (3, 128, 128)
    np.testing.assert_array_equal(sel[0], s.image[band_index("B03")])  # contract order
    np.testing.assert_array_equal(sel[2], s.image[band_index("DEM")])
    with pytest.raises(InputError, match="unknown band 'B8A'.*use B08"):
        real.select_bands(s, ["B8A"])


def test_no_masks_refuses_labels_but_reads_images(real: L4SDataset) -> None:
    with pytest.raises(InputError, match=r"has no labels: evaluation needs them.*prediction"):
        real.require_labels()
    assert real[3].image.shape == (14, 128, 128)


# -- split lists ------------------------------------------------------------------------------
def test_official_split_list_format(l4s_dir: Path) -> None:
    lines = read_split_list(l4s_dir / "dataset_test.txt")
    assert len(lines) == 800 and lines[0] == "TestData/img/image_1.h5"
    assert len(read_split_list(l4s_dir / "dataset_train.txt")) == 3799
    assert len(read_split_list(l4s_dir / "dataset_valid.txt")) == 245


def test_split_list_relative_to_download_root(l4s_dir: Path, tmp_path: Path) -> None:
    # the real list, restricted to the 14 patches we have, over a TestData/img tree
    copy_patches(l4s_dir, tmp_path / "TestData")
    have = {p.name for p in (tmp_path / "TestData" / "img").iterdir()}
    lines = [ln for ln in read_split_list(l4s_dir / "dataset_test.txt") if Path(ln).name in have]
    assert len(lines) == 14
    (tmp_path / "my_test.txt").write_text("\n".join(lines[:5]) + "\n\n")
    ds = L4SDataset(tmp_path, tmp_path / "my_test.txt")
    assert len(ds) == 5 and ds[0].name.startswith("TestData/img/image_")
    # pointing root at the split folder instead: names the missing files and the fix
    with pytest.raises(InputError, match=r"names 5 of 5 files missing.*TestData/img/image_\d+\.h5"
                                         r".*and 2 more; point root at the folder"):
        L4SDataset(tmp_path / "TestData", tmp_path / "my_test.txt")


def test_split_list_naming_missing_files(l4s_dir: Path) -> None:
    with pytest.raises(InputError, match=r"names 800 of 800 files missing.*TestData/img/image_1\.h5"
                                         r", TestData/img/image_2\.h5, .* and 797 more"):
        L4SDataset(l4s_dir, l4s_dir / "dataset_test.txt")
    with pytest.raises(InputError, match="split list .*nope.txt not found"):
        L4SDataset(l4s_dir, l4s_dir / "nope.txt")


def test_root_pointing_at_download_root_without_list(tmp_path: Path, l4s_dir: Path) -> None:
    copy_patches(l4s_dir, tmp_path / "TrainData", n=1)
    with pytest.raises(InputError, match="has no img/ folder .it holds TrainData: point root"):
        L4SDataset(tmp_path)


# -- masks ------------------------------------------------------------------------------------
def test_with_synthetic_masks(l4s_dir: Path, tmp_path: Path) -> None:
    copy_patches(l4s_dir, tmp_path, n=4)
    write_synthetic_masks(tmp_path / "img", tmp_path / "mask")  # SYNTHETIC labels
    ds = L4SDataset(tmp_path)
    assert ds.has_labels and len(ds) == 4
    ds.require_labels()
    s = ds[1]
    assert s.labels.dtype == np.uint8 and s.labels.shape == (128, 128)
    assert set(np.unique(s.labels)) == {0, 1}
    assert ds.source_files(1)[1] == mask_path_for(ds.image_paths[1])


def test_mismatched_image_and_mask_counts(l4s_dir: Path, tmp_path: Path) -> None:
    copy_patches(l4s_dir, tmp_path, n=4)
    write_synthetic_masks(tmp_path / "img", tmp_path / "mask")  # SYNTHETIC labels
    removed = sorted((tmp_path / "mask").glob("*.h5"))[:2]
    for m in removed:
        m.unlink()
    with pytest.raises(InputError, match=r"2 of 4 images have no mask \(.*image_\d+\.h5.*\)"):
        L4SDataset(tmp_path)
    # the other way round: masks without images
    write_synthetic_masks(tmp_path / "img", tmp_path / "mask")
    img = sorted((tmp_path / "img").glob("*.h5"), key=lambda p: int(p.stem.split("_")[1]))[-1]
    img.unlink()
    with pytest.raises(InputError, match=rf"1 masks without an image \(.*{img.stem.replace('image', 'mask')}"
                                         r"\.h5; 3 images vs 4 masks\)"):
        L4SDataset(tmp_path)


def test_mask_of_another_shape(l4s_dir: Path, tmp_path: Path) -> None:
    copy_patches(l4s_dir, tmp_path, n=2)
    write_synthetic_masks(tmp_path / "img", tmp_path / "mask")  # SYNTHETIC labels
    bad = sorted((tmp_path / "mask").glob("*.h5"))[0]
    with h5py.File(bad, "w") as f:
        f["mask"] = np.zeros((64, 64), np.uint8)
    ds = L4SDataset(tmp_path)
    i = [m.name for m in ds.mask_paths].index(bad.name)
    with pytest.raises(InputError, match=rf"{bad.name} is \(64, 64\) but .*image_\d+\.h5 is \(128, 128\)"):
        ds[i]


def test_wrong_channel_count(l4s_dir: Path, tmp_path: Path) -> None:
    paths = copy_patches(l4s_dir, tmp_path, n=2)
    with h5py.File(paths[1], "r+") as f:
        data = f["img"][..., :13]
        del f["img"]
        f["img"] = data
    ds = L4SDataset(tmp_path)  # the first file is fine
    with pytest.raises(InputError, match=rf"{paths[1].name} key 'img' has shape \(128, 128, 13\); "
                                         r"expected \(H, W, 14\)"):
        ds[1]
    with h5py.File(paths[0], "r+") as f:  # channels first is refused, not guessed
        data = f["img"][()].transpose(2, 0, 1)
        del f["img"]
        f["img"] = data
    with pytest.raises(InputError, match=r"shape \(14, 128, 128\); expected \(H, W, 14\) channels last"):
        L4SDataset(tmp_path)


def test_nan_and_inf_are_reported_with_file_names(l4s_dir: Path, tmp_path: Path) -> None:
    paths = copy_patches(l4s_dir, tmp_path, n=4)
    for p, val in ((paths[1], np.nan), (paths[3], np.inf)):
        with h5py.File(p, "r+") as f:
            f["img"][5, 7, 2] = val
    ds = L4SDataset(tmp_path)
    assert ds.check_finite() == [paths[1], paths[3]]
    with pytest.raises(InputError, match=rf"{paths[1].name} holds 1 NaN/inf values.*check_finite"):
        ds[1]
    assert ds[0].image.shape == (14, 128, 128)
    assert np.isnan(L4SDataset(tmp_path, on_nonfinite="keep")[1].image[2, 5, 7])


def test_missing_key_and_missing_root(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    with h5py.File(tmp_path / "img" / "image_1.h5", "w") as f:
        f["data"] = np.zeros((128, 128, 14))
    with pytest.raises(InputError, match="has no dataset 'img' .keys: data."):
        L4SDataset(tmp_path)
    with pytest.raises(InputError, match="is not a folder"):
        L4SDataset(tmp_path / "absent")
