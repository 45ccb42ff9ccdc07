"""Tiling covers the grid exactly; blending is seam-free and ignores invalid pixels."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from tasks.core.errors import InputError
from tasks.core.stitch import MIN_WEIGHT, Stitcher, binary_entropy, blend_window
from tasks.core.tiling import count_windows, iter_windows, pad_to, read_patches
from tests.data.crops import IBURI


@pytest.mark.parametrize("h,w", [(981, 1139), (128, 128), (129, 300), (50, 70)])
def test_windows_cover_grid_once_at_least(h, w):
    cover = np.zeros((h, w), dtype=int)
    windows = list(iter_windows(h, w, 128, 32))
    assert len(windows) == count_windows(h, w, 128, 32)
    for win in windows:
        r, c = int(win.row_off), int(win.col_off)
        assert win.height == min(128, h) and win.width == min(128, w)  # no partial patches
        assert r + win.height <= h and c + win.width <= w  # edge patches shifted inward
        cover[r:r + int(win.height), c:c + int(win.width)] += 1
    assert cover.min() >= 1


def test_bad_overlap():
    with pytest.raises(InputError, match="overlap"):
        list(iter_windows(200, 200, 128, 128))


def test_pad_to_reflects_small_rois():
    arr = np.arange(2 * 50 * 70, dtype=np.float32).reshape(2, 50, 70)
    out = pad_to(arr, 128)
    assert out.shape == (2, 128, 128)
    np.testing.assert_array_equal(out[:, :50, :70], arr)


def test_blend_window_is_smooth_and_positive():
    w = blend_window(128, 32)
    assert w.min() >= MIN_WEIGHT**2 and w.max() == 1.0
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    assert np.abs(np.diff(w[64])).max() < 0.1  # no step inside the ramp


def test_constant_field_is_reproduced_exactly():
    h, w = 300, 410
    st = Stitcher(h, w, 128, 32)
    valid = np.ones((128, 128), bool)
    for win in iter_windows(h, w, 128, 32):
        st.add(win, np.full((128, 128), 0.7, np.float32), valid)
    np.testing.assert_allclose(st.result(), 0.7, atol=1e-6)


def test_blending_removes_seams_between_disagreeing_patches():
    """Neighbouring patches that disagree by a constant: the blend ramps smoothly."""
    h, w = 128, 224  # two patches overlapping 32 px
    rng = np.random.default_rng(0)
    valid = np.ones((128, 128), bool)
    wins = list(iter_windows(h, w, 128, 32))
    assert len(wins) == 2

    def stitched(overlap):
        st = Stitcher(h, w, 128, overlap)
        for k, win in enumerate(wins):
            st.add(win, 0.3 + 0.4 * k + rng.normal(0, 0.001, (128, 128)).astype(np.float32), valid)
        return st.result()

    hard = np.abs(np.diff(stitched(0), axis=1)).max()   # unweighted: a step of ~0.2 at one column
    soft = np.abs(np.diff(stitched(32), axis=1)).max()  # weighted: spread over the overlap
    assert hard > 0.15
    assert soft < hard / 4, (soft, hard)


def test_invalid_pixels_do_not_count():
    st = Stitcher(128, 128, 128, 32)
    valid = np.ones((128, 128), bool)
    valid[:, :64] = False
    st.add(next(iter_windows(128, 128)), np.full((128, 128), 0.9, np.float32), valid)
    out = st.result()
    assert np.isnan(out[:, :64]).all() and np.allclose(out[:, 64:], 0.9)


def test_entropy():
    h = binary_entropy(np.array([0.5, 0.0, 1.0, np.nan], np.float32))
    assert h[0] == pytest.approx(1.0) and h[1] < 1e-4 and h[2] < 1e-4 and np.isnan(h[3])


def test_read_patches_skips_nodata_on_real_raster(tmp_path):
    """Patches from a real band; a window with no valid pixel is skipped."""
    src_path = IBURI / "s2_post" / "S2_post_B4.tif"
    valid_path = tmp_path / "valid.tif"
    with rasterio.open(src_path) as src:
        profile = src.profile.copy()
        h, w = src.height, src.width
    valid = np.ones((h, w), np.uint8)
    valid[:128, :128] = 0
    profile.update(dtype="uint8", nodata=None)
    with rasterio.open(valid_path, "w", **profile) as dst:
        dst.write(valid, 1)
    with rasterio.open(src_path) as stack, rasterio.open(valid_path) as v:
        wins = list(iter_windows(h, w))[:3]
        patches = read_patches(stack, v, wins, [0], 128)
    assert len(patches) == 2 and patches[0].data.shape == (1, 128, 128)
    assert patches[0].data.dtype == np.float32 and patches[0].data.max() > 0


def test_read_patches_by_strip_equals_one_read_per_window(tmp_path):
    """Reading a patch row as one strip gives exactly the per-window reads: same windows kept,
    same values, same valid masks, at edges (shifted last windows, a reflect-padded short side),
    with an empty patch skipped inside a row and windows of several rows in one call."""
    src_path = IBURI / "s2_post" / "S2_post_B4.tif"
    with rasterio.open(src_path) as src:
        profile = src.profile.copy()
        h, w = src.height, 300  # narrower than the file: the last column window is shifted
    valid = np.ones((h, w), np.uint8)
    valid[96:224, 96:224] = 0  # the second window of the second patch row has no valid pixel
    valid[5, :] = 0
    valid_path = tmp_path / "valid.tif"
    profile.update(dtype="uint8", nodata=None, width=w, height=h, count=1)
    with rasterio.open(valid_path, "w", **profile) as dst:
        dst.write(valid, 1)
    wins = list(iter_windows(h, w))
    short = [rasterio.windows.Window(0, h - 100, 128, 100)]  # a window shorter than a patch
    with rasterio.open(src_path) as stack, rasterio.open(valid_path) as v:
        for group in (wins[:5], wins[2:9], wins, short):
            got = read_patches(stack, v, group, [0], 128)
            want = [p for win in group for p in read_patches(stack, v, [win], [0], 128)]
            assert [p.window for p in got] == [p.window for p in want]
            for a, b in zip(got, want):
                assert a.data.tobytes() == b.data.tobytes() and np.array_equal(a.valid, b.valid)
        assert len(read_patches(stack, v, wins, [0], 128)) == len(wins) - 1


def test_entropy_matches_the_direct_formula_bit_for_bit():
    rng = np.random.default_rng(0)
    p = rng.random((300, 300)).astype(np.float32)
    p[rng.random(p.shape) < 0.1] = np.nan
    p[0, :3] = [0.0, 1.0, 0.5]
    q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    direct = np.where(np.isfinite(p), -(q * np.log2(q) + (1 - q) * np.log2(1 - q)), np.nan)
    assert binary_entropy(p).tobytes() == direct.astype(np.float32).tobytes()


def test_blockwise_inference_equals_whole_scene(tmp_path):
    """Blocks much smaller than the scene give bit-identical probabilities (real Iburi stack)."""
    from tasks.core.tiling import iter_blocks
    from tests.data.crops import iburi_stack, predict_blocks

    res, grid = iburi_stack(tmp_path / "w", (141.95, 42.72, 141.98, 42.74))  # ~250 x 230 px
    assert len(iter_blocks(grid.height, grid.width, 100)) >= 9

    def run(block_px, name):
        prob, unc, n_patches = predict_blocks(res.stack_path, res.valid_path, tmp_path / name,
                                              block_px=block_px)
        with rasterio.open(prob) as a, rasterio.open(unc) as u:
            return n_patches, a.read(1), u.read(1)

    n_whole, p_whole, u_whole = run(10_000, "whole")
    n_block, p_block, u_block = run(100, "blocks")
    np.testing.assert_array_equal(p_block, p_whole)
    np.testing.assert_array_equal(u_block, u_whole)
    assert n_block == n_whole
    assert np.isfinite(p_whole).mean() > 0.9
