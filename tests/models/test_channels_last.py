"""On CPU the scan's networks run in channels-last memory order, with the NCHW forward's results."""

from __future__ import annotations

import numpy as np
import torch

from models.detectors import DEFAULT_CHECKPOINT, load_detector


def test_cpu_detector_runs_channels_last_and_matches_nchw():
    fast = load_detector(DEFAULT_CHECKPOINT, "cpu")
    plain = load_detector(DEFAULT_CHECKPOINT, "cpu", channels_last=False)
    assert fast.channels_last and not plain.channels_last
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # really NHWC, not a 1x1 kernel that is both

    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 3000, (4, len(fast.bands), 128, 128)).astype(np.float32)
    batch[:, -1] = rng.uniform(0, 60, (4, 128, 128))  # a slope-like last channel
    ok = np.ones((4, 128, 128), dtype=bool)
    p_fast, p_plain = fast.predict(batch, ok), plain.predict(batch, ok)
    assert p_fast.shape == (4, 128, 128) and p_fast.dtype == np.float32
    np.testing.assert_allclose(p_fast, p_plain, atol=1e-5)


def test_ensemble_members_follow_the_memory_order():
    det = load_detector("iburi2018-weak-ensemble", "cpu")
    assert all(m.channels_last for m in det.members)
    det = load_detector("iburi2018-weak-ensemble", "cpu", channels_last=False)
    assert not any(m.channels_last for m in det.members)
