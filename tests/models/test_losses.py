"""Segmentation losses: values, ignore handling, gradients, Lovasz against brute force, the spec."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from models.training.losses import (
    build_loss,
    class_weights,
    describe_loss,
    dice_loss,
    focal_loss,
    list_losses,
    lovasz_hinge,
    parse_loss_spec,
    tversky_loss,
    weighted_bce,
)
from tasks.core.errors import InputError

torch.set_num_threads(1)

ALL = {
    "bce": lambda lg, t: weighted_bce(lg, t, 3.0),
    "dice": dice_loss,
    "focal": focal_loss,
    "tversky": tversky_loss,
    "focal_tversky": lambda lg, t: tversky_loss(lg, t, gamma=0.75),
    "lovasz": lovasz_hinge,
    "lovasz_batch": lambda lg, t: lovasz_hinge(lg, t, per_image=False),
}


@pytest.fixture
def target() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = (torch.rand(2, 8, 8, generator=g) > 0.7).to(torch.uint8)
    t[0, 0, :3] = 255
    t[1, 5:, 5:] = 255
    return t


def _perfect(t: torch.Tensor, margin: float = 30.0) -> torch.Tensor:
    return torch.where(t == 1, margin, -margin).float()


@pytest.mark.parametrize("name", list(ALL))
def test_perfect_is_zero_wrong_is_large(name, target):
    fn = ALL[name]
    perfect = fn(_perfect(target), target)
    wrong = fn(-_perfect(target, 3.0), target)
    unsure = fn(torch.zeros(target.shape), target)
    assert float(perfect) == pytest.approx(0.0, abs=1e-3)
    assert float(wrong) > float(unsure) > float(perfect) + 0.05


@pytest.mark.parametrize("name", list(ALL))
def test_gradients_flow_and_ignore_does_not_count(name, target):
    fn = ALL[name]
    g = torch.Generator().manual_seed(1)
    base = torch.randn(target.shape, generator=g)
    lg = base.clone().requires_grad_(True)
    value = fn(lg, target)
    value.backward()
    grad = lg.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad[target != 255].abs().sum() > 0
    assert torch.all(grad[target == 255] == 0)
    # a huge (or non-finite) score on an ignored pixel changes nothing
    for poison in (1e6, -1e6, float("inf"), float("nan")):
        bad = base.clone()
        bad[target == 255] = poison
        assert torch.equal(fn(bad, target), value.detach()), poison
    # (B, 1, H, W) is accepted too
    assert torch.allclose(fn(base[:, None], target[:, None]), value.detach())


@pytest.mark.parametrize("name", list(ALL))
def test_only_ignored_gives_zero_with_grad(name):
    t = torch.full((2, 4, 4), 255, dtype=torch.uint8)
    lg = torch.randn(2, 4, 4).requires_grad_(True)
    value = ALL[name](lg, t)
    assert value.item() == 0.0
    value.backward()
    assert lg.grad is not None and torch.all(lg.grad == 0)


def test_pos_weight_scales_positive_terms(target):
    lg = torch.zeros(target.shape)  # every labelled pixel costs log 2
    only_pos = torch.where(target == 0, torch.tensor(255, dtype=torch.uint8), target)
    only_neg = torch.where(target == 1, torch.tensor(255, dtype=torch.uint8), target)
    assert float(weighted_bce(lg, only_pos, 4.0)) == pytest.approx(4 * np.log(2), rel=1e-5)
    assert float(weighted_bce(lg, only_neg, 4.0)) == pytest.approx(np.log(2), rel=1e-5)
    assert float(weighted_bce(lg, target, 4.0)) > float(weighted_bce(lg, target))
    assert float(weighted_bce(lg, target, None)) == pytest.approx(np.log(2), rel=1e-5)
    with pytest.raises(InputError):
        weighted_bce(lg, target, -1.0)


def test_tversky_half_half_is_dice_and_beta_penalizes_misses():
    t = torch.tensor([[[1, 1, 0, 0]]], dtype=torch.uint8)
    lg = torch.tensor([[[2.0, -1.0, 0.5, -3.0]]])
    # Dice (2TP + s) / (2TP + FP + FN + s) is Tversky 0.5/0.5 with half the smoothing
    assert torch.allclose(tversky_loss(lg, t, 0.5, 0.5, smooth=0.5), dice_loss(lg, t, smooth=1.0))
    miss = torch.tensor([[[5.0, -5.0, -5.0, -5.0]]])  # one false negative
    extra = torch.tensor([[[5.0, 5.0, 5.0, -5.0]]])  # one false positive
    assert float(tversky_loss(miss, t)) > float(tversky_loss(extra, t))
    # focal exponent < 1 raises small losses
    assert float(tversky_loss(lg, t, gamma=0.75)) > float(tversky_loss(lg, t))


def test_focal_down_weights_easy_pixels():
    t = torch.tensor([[[1, 0]]], dtype=torch.uint8)
    easy, hard = torch.tensor([[[3.0, -3.0]]]), torch.tensor([[[-1.0, 1.0]]])
    ratio_focal = float(focal_loss(hard, t, alpha=None) / focal_loss(easy, t, alpha=None))
    ratio_bce = float(weighted_bce(hard, t) / weighted_bce(easy, t))
    assert ratio_focal > 10 * ratio_bce
    assert torch.allclose(focal_loss(hard, t, alpha=None, gamma=0.0), weighted_bce(hard, t))


# ---------------------------------------------------------------------------------- Lovasz
def _jaccard_loss_of_errors(wrong: set[int], y: list[int]) -> float:
    pos = {i for i, v in enumerate(y) if v}
    pred = pos ^ wrong
    union = pos | pred
    return 1.0 - len(pos & pred) / len(union) if union else 0.0


def _lovasz_brute(logits: list[float], y: list[int]) -> float:
    """The Lovasz extension from its definition (Berman et al. 2018, eq. 8), sets built one by one."""
    m = [max(0.0, 1.0 - s * (2 * v - 1)) for s, v in zip(logits, y)]
    order = sorted(range(len(m)), key=lambda i: -m[i])
    total, prev, chosen = 0.0, 0.0, set()
    for i in order:
        chosen.add(i)
        cur = _jaccard_loss_of_errors(chosen, y)
        total += m[i] * (cur - prev)
        prev = cur
    return total


def test_lovasz_hand_example():
    # 1 x 2 image, y = [1, 0], logits [2, -0.5]: the positive has margin 1 (error -1 -> 0), the
    # negative error 1 - 0.5 = 0.5. Making the negative wrong gives pred {0, 1}: 1 - 1/2 = 0.5.
    # Loss = 0.5 * 0.5 = 0.25.
    t = torch.tensor([[[1, 0]]], dtype=torch.uint8)
    assert float(lovasz_hinge(torch.tensor([[[2.0, -0.5]]]), t)) == pytest.approx(0.25)
    # all logits 0: both errors 1; the set of both wrong has Jaccard loss 1
    assert float(lovasz_hinge(torch.zeros(1, 1, 2), t)) == pytest.approx(1.0)
    # 2 x 2: y = [[1, 1], [0, 0]], logits [[0.5, 3], [0, -2]]: errors 0.5, 0, 1, 0 (sorted: px2 1.0,
    # px0 0.5). {px2} wrong: pred {0,1,2}, IoU 2/3 -> 1/3; {px2, px0}: pred {1,2}, IoU 1/3 -> 2/3.
    # Loss = 1 * 1/3 + 0.5 * (2/3 - 1/3) = 0.5
    t2 = torch.tensor([[[1, 1], [0, 0]]], dtype=torch.uint8)
    assert float(lovasz_hinge(torch.tensor([[[0.5, 3.0], [0.0, -2.0]]]), t2)) == pytest.approx(0.5)


def test_lovasz_matches_brute_force_and_is_tight_at_signs():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, size=6).tolist()
        lg = rng.normal(0, 1.5, size=6).round(3).tolist()
        got = float(lovasz_hinge(torch.tensor(lg).view(1, 2, 3), torch.tensor(y).view(1, 2, 3)))
        assert got == pytest.approx(_lovasz_brute(lg, y), abs=1e-6)
    # with logits +-1 the surrogate equals 2 * (1 - IoU) of the sign prediction
    y = [1, 1, 0, 0, 1, 0]
    for signs in itertools.product([-1.0, 1.0], repeat=6):
        pred, pos = {i for i, s in enumerate(signs) if s > 0}, {i for i, v in enumerate(y) if v}
        iou = len(pred & pos) / len(pred | pos)
        got = float(lovasz_hinge(torch.tensor(signs).view(1, 2, 3), torch.tensor(y).view(1, 2, 3)))
        assert got == pytest.approx(2 * (1 - iou), abs=1e-6)


def test_lovasz_per_image_vs_batch():
    t = torch.tensor([[[1, 0]], [[0, 255]]], dtype=torch.uint8)
    lg = torch.tensor([[[2.0, -0.5]], [[0.0, 9.0]]])
    a = float(lovasz_hinge(lg[:1], t[:1]))
    b = float(lovasz_hinge(lg[1:], t[1:]))  # no positive: the largest hinge error, 1
    assert b == pytest.approx(1.0)
    assert float(lovasz_hinge(lg, t)) == pytest.approx((a + b) / 2)
    assert float(lovasz_hinge(lg, t, per_image=False)) == pytest.approx(
        _lovasz_brute([2.0, -0.5, 0.0], [1, 0, 0]))
    # an image with nothing labelled does not dilute the per-image mean
    t3 = torch.cat([t[:1], torch.full((1, 1, 2), 255, dtype=torch.uint8)])
    assert float(lovasz_hinge(lg, t3)) == pytest.approx(a)


# ---------------------------------------------------------------------------------- spec
def test_build_loss_parses_weights_and_combinations(target):
    lg = torch.randn(target.shape)
    combo = build_loss("0.5*bce + 1.0*DICE", pos_weight=2.0)
    assert combo.terms == [(0.5, "bce"), (1.0, "dice")]
    expected = 0.5 * weighted_bce(lg, target, 2.0) + dice_loss(lg, target)
    assert torch.allclose(combo(lg, target), expected)
    assert torch.allclose(build_loss("focal+lovasz")(lg, target),
                          focal_loss(lg, target) + lovasz_hinge(lg, target))
    assert torch.allclose(build_loss("tversky")(lg, target), tversky_loss(lg, target))
    assert torch.allclose(build_loss("bce")(lg, target), weighted_bce(lg, target))
    assert parse_loss_spec("2*bce+1e-3*dice") == [(2.0, "bce"), (0.001, "dice")]
    assert set(list_losses()) >= {"bce", "dice", "focal", "tversky", "lovasz"}


@pytest.mark.parametrize("spec", ["bce+crossentropy", "iou", "bce+", "", "x*bce", "bce+bce",
                                  "-1*bce", "0*bce"])
def test_build_loss_rejects_bad_specs(spec):
    with pytest.raises(InputError) as err:
        build_loss(spec)
    assert "\n" not in str(err.value)
    if spec in ("iou", "bce+crossentropy"):
        assert "bce, dice, focal, tversky" in str(err.value) and "lovasz" in str(err.value)


def test_describe_loss():
    text = describe_loss("0.5*bce+dice", pos_weight=4.0)
    assert text.startswith("0.5 x weighted BCE (pos_weight 4.00) + 1 x soft Dice")
    assert "255" in text
    assert "Lovasz" in describe_loss("focal+lovasz")


# ---------------------------------------------------------------------------------- weights
def test_class_weights_exclude_ignore():
    a = np.array([[1, 0, 0, 255], [0, 0, 255, 255]], dtype=np.uint8)  # 1 pos, 4 neg, 3 ignored
    b = np.array([[1, 0], [0, 0]], dtype=np.uint8)  # 1 pos, 3 neg
    w = class_weights([a, b])
    assert (w["n_pos"], w["n_neg"], w["n_ignored"]) == (2, 7, 3)
    assert w["pos_weight"] == pytest.approx(3.5) == w["pos_weight_uncapped"]
    assert w["pos_fraction"] == pytest.approx(2 / 9)
    assert w["weight_pos"] == pytest.approx(9 / 4) and w["weight_neg"] == pytest.approx(9 / 14)
    # averaging the inverse-frequency weights over the labelled pixels gives 1
    assert (w["n_pos"] * w["weight_pos"] + w["n_neg"] * w["weight_neg"]) / 9 == pytest.approx(1.0)
    assert class_weights(a)["n_pos"] == 1
    assert class_weights(iter([a, b]))["n_neg"] == 7  # a generator works (one pass)
    rare = np.zeros((10, 10), np.uint8)
    rare[0, 0] = 1
    assert class_weights(rare)["pos_weight"] == 10.0
    assert class_weights(rare)["pos_weight_uncapped"] == 99.0
    assert class_weights(rare, cap=float("inf"))["pos_weight"] == 99.0


def test_class_weights_bad_input():
    with pytest.raises(InputError, match="both classes"):
        class_weights(np.array([[0, 0, 255]], np.uint8))
    with pytest.raises(InputError, match="values"):
        class_weights(np.array([[0, 1, 2]], np.uint8))
