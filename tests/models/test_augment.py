"""Patch augmentation: image and labels stay aligned, padding is 'ignored', runs are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import IGNORE
from models.training.augment import AugmentConfig, augment, describe
from tasks.core.errors import InputError

GEOMETRIC_ONLY = AugmentConfig(flip=True, rot90=True, scale_range=None)


def _patch(c: int = 4, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocky labels (so nearest/bilinear agree away from edges) with channel 0 equal to them."""
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 2, size=(size // 8, size // 8)), np.ones((8, 8))).astype(np.uint8)
    labels[:3, :5] = 255
    image = rng.normal(size=(c, size, size)).astype(np.float32)
    image[0] = labels
    image[0][labels == 255] = 7.0
    return image, labels


def test_shapes_dtypes_and_inputs_untouched():
    image, labels = _patch()
    img0, lab0 = image.copy(), labels.copy()
    cfg = AugmentConfig(rotate_deg=20, noise_std=0.1, spectral_jitter=0.2, spectral_bands=(1, 2))
    for seed in range(5):
        x, y = augment(image, labels, np.random.default_rng(seed), cfg)
        assert x.shape == image.shape and x.dtype == np.float32 and x.flags.c_contiguous
        assert y.shape == labels.shape and y.dtype == np.uint8 and y.flags.c_contiguous
        assert set(np.unique(y)) <= {0, 1, 255}
    np.testing.assert_array_equal(image, img0)
    np.testing.assert_array_equal(labels, lab0)
    x, y = augment(image, labels, np.random.default_rng(0),
                   AugmentConfig(flip=False, rot90=False, scale_range=None))
    assert x is not image and y is not labels
    np.testing.assert_array_equal(x, image)


def test_flips_and_rot90_keep_correspondence_and_cover_the_dihedral_group():
    image, labels = _patch()
    seen = set()
    for seed in range(40):
        x, y = augment(image, labels, np.random.default_rng(seed), GEOMETRIC_ONLY)
        np.testing.assert_array_equal(x[0], np.where(y == 255, 7.0, y))
        # the other channels moved the same way: find which of the 8 symmetries it was
        for k in range(4):
            for flip in (False, True):
                ref = np.rot90(labels[:, ::-1] if flip else labels, k)
                if np.array_equal(ref, y) and np.array_equal(
                        np.rot90(image[1][:, ::-1] if flip else image[1], k), x[1]):
                    seen.add((k, flip))
    assert len(seen) == 8


def test_scale_keeps_size_pads_with_ignore_and_stays_aligned():
    image, labels = _patch(size=64)
    image[0] = labels.astype(np.float32)  # ignored pixels carry 255 in channel 0 here
    zoom_out = AugmentConfig(flip=False, rot90=False, scale_range=(0.6, 0.6))
    x, y = augment(image, labels, np.random.default_rng(1), zoom_out)
    assert x.shape == image.shape and y.shape == labels.shape
    border = y == 255
    # about 1 - 0.6^2 = 64 % of the output comes from outside the patch
    assert 0.55 < border.mean() < 0.75
    assert np.mean(x[1:, border] == 0) > 0.9  # padding is the band mean (0) in the image
    inside = y != 255
    # channel 0 (= labels, resampled bilinearly) agrees with the nearest-neighbour labels
    agree = np.abs(x[0][inside] - y[inside]) < 0.5
    assert agree.mean() > 0.9
    zoom_in = AugmentConfig(flip=False, rot90=False, scale_range=(1.5, 1.5))
    labels[:3, :5] = 0  # no ignored input pixel: a zoomed-in crop must have no 255 at all
    image[0] = labels
    for seed in range(20):
        x, y = augment(image, labels, np.random.default_rng(seed), zoom_in)
        assert not (y == 255).any()
        assert (np.abs(x[0] - y) < 0.5).mean() > 0.9


def test_rotation_corners_are_ignored():
    image, labels = _patch(size=64)
    labels[:] = 1
    image[0] = 1.0
    cfg = AugmentConfig(flip=False, rot90=False, scale_range=None, rotate_deg=45)
    x, y = augment(image, labels, np.random.default_rng(5), cfg)
    assert (y == 255).any() and y[32, 32] == 1
    assert np.all(x[0][y == 255] < 1.0)  # no landslide-coloured corners without a label


def test_same_seed_same_patch():
    image, labels = _patch()
    cfg = AugmentConfig(scale_range=(0.8, 1.25), rotate_deg=10, noise_std=0.05, spectral_jitter=0.1,
                        spectral_bands=(1, 2, 3))
    a = augment(image, labels, np.random.default_rng(42), cfg)
    b = augment(image, labels, np.random.default_rng(42), cfg)
    c = augment(image, labels, np.random.default_rng(43), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_noise_and_jitter_touch_only_the_image_and_the_listed_bands():
    image, labels = _patch(c=5)
    base = AugmentConfig(flip=False, rot90=False, scale_range=None)
    jitter = AugmentConfig(flip=False, rot90=False, scale_range=None, spectral_jitter=0.3,
                           spectral_bands=(1, 3))
    x, y = augment(image, labels, np.random.default_rng(0), jitter)
    np.testing.assert_array_equal(y, labels)
    for ch in (0, 2, 4):
        np.testing.assert_array_equal(x[ch], image[ch])
    for ch in (1, 3):
        gain = x[ch] / image[ch]
        assert np.allclose(gain, gain.flat[0], rtol=1e-5) and gain.flat[0] != pytest.approx(1.0)
        assert 0.7 <= gain.flat[0] <= 1.3
    # physical-unit gain: v' = g v is x' = g x + (g - 1) m on normalized values
    phys = AugmentConfig(flip=False, rot90=False, scale_range=None, spectral_jitter=0.3,
                         spectral_bands=(1,), spectral_mean_over_std=(2.0,))
    x, _ = augment(image, labels, np.random.default_rng(0), phys)
    g = (x[1] + 2.0) / (image[1] + 2.0)
    assert np.allclose(g, g.flat[0], rtol=1e-4)

    noisy = AugmentConfig(flip=False, rot90=False, scale_range=None, noise_std=0.1, noise_bands=(2,))
    x, y = augment(image, labels, np.random.default_rng(0), noisy)
    np.testing.assert_array_equal(y, labels)
    assert 0.07 < np.std(x[2] - image[2]) < 0.13
    for ch in (0, 1, 3, 4):
        np.testing.assert_array_equal(x[ch], image[ch])
    x, _ = augment(image, labels, np.random.default_rng(0), AugmentConfig(
        flip=False, rot90=False, scale_range=None, noise_std=0.1))
    assert all(not np.array_equal(x[ch], image[ch]) for ch in range(5))
    x, _ = augment(image, labels, np.random.default_rng(0), base)
    np.testing.assert_array_equal(x, image)


@pytest.mark.parametrize("kwargs", [
    {"scale_range": (1.2, 0.8)}, {"scale_range": (0.0, 1.0)}, {"noise_std": -1},
    {"spectral_jitter": 0.2}, {"spectral_jitter": 1.5, "spectral_bands": (0,)},
    {"spectral_bands": (1, 1)}, {"rotate_deg": 400},
    {"spectral_bands": (0, 1), "spectral_mean_over_std": (1.0,)},
])
def test_bad_config(kwargs):
    with pytest.raises(InputError):
        AugmentConfig(**kwargs)


def test_bad_input():
    image, labels = _patch(c=3)
    with pytest.raises(InputError, match="out of range"):
        augment(image, labels, np.random.default_rng(0),
                AugmentConfig(spectral_jitter=0.1, spectral_bands=(5,)))
    with pytest.raises(InputError, match="labels"):
        augment(image, labels[:-1], np.random.default_rng(0))
    with pytest.raises(InputError, match="image"):
        augment(image[0], labels, np.random.default_rng(0))


def test_describe():
    assert describe(AugmentConfig(flip=False, rot90=False, scale_range=None)) == "none"
    text = describe(AugmentConfig(rotate_deg=15, noise_std=0.03, spectral_jitter=0.1,
                                  spectral_bands=(0, 1, 2)))
    for part in ("flips", "rot90", "x0.8-1.25", "+-15 deg", "noise std 0.03", "[0, 1, 2]", "255"):
        assert part in text, part


def test_trainer_batches_use_the_augmentation_config():
    """make_batch goes through models.training.augment: a zoom-out pads labels with IGNORE, never with 0."""
    from models.training.train import TrainConfig, augment_config, make_batch

    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 200, 200)).astype(np.float32)
    labels = (rng.random((200, 200)) < 0.2).astype(np.uint8)
    mos = np.zeros(3, np.float32)
    plain = TrainConfig(bands=("B02", "B03", "B04"), batch_size=6, noise_std=0.0,
                        brightness_jitter=0.0)
    zoom = TrainConfig(bands=("B02", "B03", "B04"), batch_size=6, noise_std=0.0,
                       brightness_jitter=0.0, scale_range=(0.5, 0.6))
    for cfg, expect_ignored in ((plain, False), (zoom, True)):
        aug = augment_config(cfg, cfg.bands, mos)
        x, y = make_batch(np.random.default_rng(1), image, labels, cfg, [0, 1, 2], None, 1.0, mos, aug)
        assert x.shape == (6, 3, 128, 128) and y.shape == (6, 128, 128)
        assert bool((y.numpy() == IGNORE).any()) is expect_ignored
    assert "zoom x0.5-0.6" in describe(augment_config(zoom, zoom.bands, mos))
    # spectral jitter only ever reaches the spectral channels
    jit = TrainConfig(bands=("B04", "SLOPE", "DEM"), spectral_jitter=0.2)
    assert augment_config(jit, jit.bands, np.zeros(3, np.float32)).spectral_bands == (0,)
