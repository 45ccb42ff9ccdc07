"""On CPU the scan's networks run in channels-last memory order, with the NCHW forward's results."""

from __future__ import annotations

import numpy as np
import rasterio
import torch

from models.detectors import DEFAULT_CHECKPOINT, cpu_channels_last, load_detector
from tasks.core.bands import band_index
from tasks.core.tiling import iter_windows, read_patches


def test_cpu_detector_runs_channels_last_and_matches_nchw(tmp_path):
    from tests.data.crops import iburi_stack

    fast = load_detector(DEFAULT_CHECKPOINT, "cpu", channels_last=True)
    plain = load_detector(DEFAULT_CHECKPOINT, "cpu", channels_last=False)
    assert fast.channels_last and not plain.channels_last
    assert load_detector(DEFAULT_CHECKPOINT, "cpu").channels_last == cpu_channels_last()
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # really NHWC, not a 1x1 kernel that is both

    # real input: the bundled sample (random numbers far outside the training range magnify the
    # two memory orders' rounding differences through the network)
    stack, _ = iburi_stack(tmp_path, (141.95, 42.72, 141.975, 42.74), fast.bands)
    with rasterio.open(stack.stack_path) as src, rasterio.open(stack.valid_path) as valid:
        windows = list(iter_windows(src.height, src.width, fast.patch_size, 32))[:4]
        patches = read_patches(src, valid, windows, [band_index(b) for b in fast.bands],
                               fast.patch_size)
    batch = np.stack([p.data for p in patches])
    ok = np.stack([p.valid for p in patches])
    p_fast, p_plain = fast.predict(batch, ok), plain.predict(batch, ok)
    assert p_fast.shape == (4, 128, 128) and p_fast.dtype == np.float32
    np.testing.assert_allclose(p_fast, p_plain, atol=1e-5)


def test_ensemble_members_follow_the_memory_order():
    det = load_detector("iburi2018-weak-ensemble", "cpu")
    assert all(m.channels_last for m in det.members)
    described = det.describe()  # the manifest's record: each member says how it ran
    assert [m["memory_format"] for m in described["members"]] == ["channels_last"] * len(det.members)
    assert all(m["malloc"]["value"] is True for m in described["members"])
    det = load_detector("iburi2018-weak-ensemble", "cpu", channels_last=False)
    assert not any(m.channels_last for m in det.members)


def test_channels_last_is_chosen_from_the_cpu_capability(monkeypatch):
    """Issue 19 item 5: a CPU speed option follows what the CPU offers, never assumed."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu_channels_last() == torch.backends.mkldnn.is_available()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert not cpu_channels_last()
    det = load_detector(DEFAULT_CHECKPOINT, "cpu")
    assert not det.channels_last and det.describe()["memory_format"] == "NCHW"
