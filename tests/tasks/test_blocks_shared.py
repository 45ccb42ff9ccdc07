"""Blocks run in one process share the predictions of patches on their borders (the shipped model)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from models.detectors import DEFAULT_CHECKPOINT, load_detector
from tasks.core.tiling import iter_blocks, iter_windows, read_patches
from tasks.predict.blocks import BorderPatches, assemble, make_jobs, run_block, run_jobs


@pytest.fixture(scope="module")
def iburi_stack(tmp_path_factory):
    from tests.data.crops import iburi_stack as build

    res, _ = build(tmp_path_factory.mktemp("w"), (141.95, 42.72, 141.975, 42.74),  # ~205 x 225 px
                   ("B02", "B03", "B04", "SLOPE", "DEM"))
    return res


def test_border_patch_uses_are_counted_and_dropped_after_the_last_block():
    windows = list(iter_windows(300, 300, 128, 32))  # starts 0, 96, 172
    blocks = iter_blocks(300, 300, 100)  # 3 x 3 blocks
    border = BorderPatches(windows, blocks)
    # the patch at (96, 96) spans rows/cols 96..223: blocks (0|1|2) x (0|1|2) -> all nine
    assert border.shared((96, 96)) and not border.shared((300, 300))
    entry = (np.zeros((128, 128), np.float32), None, np.ones((128, 128), bool))
    border.offer((96, 96), entry)  # the first block's own use
    assert border.has((96, 96)) and len(border) == 1
    for _ in range(7):
        assert border.take((96, 96)) is entry
    assert border.has((96, 96))  # one block still needs it
    border.take((96, 96))
    assert not border.has((96, 96)) and len(border) == 0
    # a patch inside one block only is never kept: (0, 0) spans 0..127 -> blocks (0|1) x (0|1)
    lone = BorderPatches(windows, [Window(0, 0, 300, 300)])
    lone.offer((0, 0), entry)
    assert len(lone) == 0


def test_network_output_does_not_depend_on_the_rest_of_its_batch(iburi_stack):
    """What sharing relies on: at the same batch size, a patch gives the same bits whatever else is
    in its batch (the batch size itself changes the last bits: blend_block pads short batches)."""
    from tasks.core.bands import BAND_NAMES

    det = load_detector(DEFAULT_CHECKPOINT, "cpu")
    with rasterio.open(iburi_stack.stack_path) as stack, rasterio.open(iburi_stack.valid_path) as valid:
        windows = list(iter_windows(stack.height, stack.width, det.patch_size, 32))
        patches = read_patches(stack, valid, windows, [BAND_NAMES.index(b) for b in det.bands],
                               det.patch_size)
    batch = np.stack([p.data for p in patches])
    ok = np.stack([p.valid for p in patches])
    n = len(batch)
    assert n >= 6
    whole = det.predict(batch, ok)
    order = np.random.default_rng(0).permutation(n)
    np.testing.assert_array_equal(det.predict(batch[order], ok[order]), whole[order])
    # patch 1 among other companions (patch 0 repeated, as blend_block pads)
    others = [1, *([0] * (n - 1))]
    np.testing.assert_array_equal(det.predict(batch[others], ok[others])[0], whole[1])


def test_blocks_in_one_process_predict_each_patch_once_with_the_same_result(iburi_stack, tmp_path):
    def jobs_in(folder):
        return make_jobs(iburi_stack.stack_path, iburi_stack.valid_path, DEFAULT_CHECKPOINT, "cpu",
                         overlap=32, batch_size=5, block_px=90, blocks_dir=tmp_path / folder,
                         fingerprint="f")

    shared_jobs = jobs_in("shared")
    assert len(shared_jobs) >= 9
    records = run_jobs(shared_jobs, progress=False)
    patches = {tuple(p) for r in records for p in r["patches"]}
    passes = sum(r["forward_passes"] for r in records)
    assert passes % 5 == 0  # every batch padded to batch_size
    assert len(patches) <= passes < len(patches) + 5 * len(shared_jobs)  # <= one short batch a block

    alone_jobs = jobs_in("alone")  # every block on its own, as on a Dask worker
    alone = [run_block(job) for job in alone_jobs]
    assert sum(r["forward_passes"] for r in alone) > passes
    assert {tuple(p) for r in alone for p in r["patches"]} == patches

    results = []
    for name, jobs in (("shared", shared_jobs), ("alone", alone_jobs)):
        prob, unc = tmp_path / f"{name}_prob.tif", tmp_path / f"{name}_unc.tif"
        assemble(jobs, prob, unc)
        with rasterio.open(prob) as p, rasterio.open(unc) as u:
            results.append((p.read(1), u.read(1)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert np.isfinite(results[0][0]).mean() > 0.9
