"""Binary segmentation losses for the landslide class, ignore-value aware.

Every loss takes ``logits`` shaped ``(B, H, W)`` or ``(B, 1, H, W)`` (raw network outputs, before the
sigmoid) and ``target`` of the same spatial shape with 1 = landslide, 0 = background and
:data:`models.metrics.IGNORE` (255) = not labelled. Ignored pixels are removed *before* any
arithmetic, so their logits (even inf or NaN) never change the value or the gradient. A batch with no
labelled pixel gives a zero loss that is still attached to the graph (``backward()`` works and yields
zero gradients), so a training step never has to special-case it.

Region losses (Dice, Tversky) are computed over all labelled pixels of the batch at once, as the
trainer's masked BCE + Dice does; :func:`lovasz_hinge` offers both per-image and batch modes.

:func:`build_loss` turns a spec such as ``"0.5*bce+1.0*dice"`` into a callable and
:func:`describe_loss` into the sentence a model card records. :func:`class_weights` derives the
positive-class weight from a training split.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from models.metrics import IGNORE
from tasks.core.errors import InputError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# n_neg / n_pos of a landslide split is easily 50-500; uncapped, BCE would then be dominated by a
# handful of positive pixels and the network over-predicts. 10 is the cap the trainer has used.
POS_WEIGHT_CAP = 10.0


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _as_bhw(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring logits and target to (B, H, W), checking that they agree."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise InputError("losses take torch tensors: logits (B, [1,] H, W) and target (B, [1,] H, W)")
    if logits.dim() == 4:
        if logits.shape[1] != 1:
            raise InputError(f"binary losses need one output channel, logits have shape "
                             f"{tuple(logits.shape)}; use (B, H, W) or (B, 1, H, W)")
        logits = logits[:, 0]
    if target.dim() == 4:
        if target.shape[1] != 1:
            raise InputError(f"target has shape {tuple(target.shape)}; use (B, H, W) or (B, 1, H, W)")
        target = target[:, 0]
    if logits.dim() != 3:
        raise InputError(f"logits have shape {tuple(logits.shape)}; use (B, H, W) or (B, 1, H, W)")
    if target.shape != logits.shape:
        raise InputError(f"target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise InputError(f"logits must be floating point, got {logits.dtype}")
    return logits, target


def _labelled(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat logits and float targets (0/1) of the labelled pixels only."""
    logits, target = _as_bhw(logits, target)
    keep = target != IGNORE
    return logits[keep], (target[keep] == 1).to(logits.dtype)


def _zero(x: torch.Tensor) -> torch.Tensor:
    """A zero that stays on the autograd graph of ``x`` (``x`` may be empty)."""
    return x.sum() * 0.0


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------
def weighted_bce(logits: torch.Tensor, target: torch.Tensor,
                 pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy over labelled pixels, positives weighted by ``pos_weight``.

    The mean is over labelled pixels: ``-mean(w_p * y * log p + (1 - y) * log(1 - p))`` with
    ``w_p = pos_weight`` (PyTorch's ``pos_weight`` semantics).

    Args:
        logits: (B, H, W) or (B, 1, H, W) raw scores.
        target: same shape, 1 landslide / 0 background / 255 ignored.
        pos_weight: weight of positive pixels (e.g. ``class_weights(...)["pos_weight"]``);
            None or 1.0 gives plain BCE.

    Returns:
        A scalar tensor.

    Raises:
        InputError: shapes disagree or ``pos_weight`` is not a positive finite number.
    """
    x, y = _labelled(logits, target)
    if x.numel() == 0:
        return _zero(x)
    if pos_weight is None:
        return F.binary_cross_entropy_with_logits(x, y)
    if not (math.isfinite(pos_weight) and pos_weight > 0):
        raise InputError(f"pos_weight must be a positive number, got {pos_weight}")
    return F.binary_cross_entropy_with_logits(
        x, y, pos_weight=torch.tensor(float(pos_weight), dtype=x.dtype, device=x.device))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s)`` over the labelled pixels.

    ``smooth`` keeps the loss defined (and 0 for an all-background prediction) on batches without
    landslides.

    Args:
        logits: (B, H, W) or (B, 1, H, W) raw scores.
        target: same shape, 1 / 0 / 255 ignored.
        smooth: additive smoothing in numerator and denominator.

    Returns:
        A scalar tensor in [0, 1].
    """
    x, y = _labelled(logits, target)
    if x.numel() == 0:
        return _zero(x)
    p = torch.sigmoid(x)
    inter = (p * y).sum()
    return 1.0 - (2.0 * inter + smooth) / (p.sum() + y.sum() + smooth)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al., 2017), mean over labelled pixels.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` with ``alpha_t = alpha`` for positives and
    ``1 - alpha`` for negatives. As in the paper, ``alpha=0.25`` *down*-weights positives: the
    modulating factor already removes the easy negatives. ``alpha=None`` disables the balancing.

    Args:
        logits: (B, H, W) or (B, 1, H, W) raw scores.
        target: same shape, 1 / 0 / 255 ignored.
        alpha: weight of the positive class in [0, 1], or None.
        gamma: focusing parameter (0 gives (balanced) BCE).

    Returns:
        A scalar tensor.
    """
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise InputError(f"focal alpha must be in [0, 1], got {alpha}")
    if gamma < 0:
        raise InputError(f"focal gamma must be >= 0, got {gamma}")
    x, y = _labelled(logits, target)
    if x.numel() == 0:
        return _zero(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")  # = -log(p_t), stable
    p_t = torch.exp(-ce)
    loss = (1.0 - p_t).clamp_min(0.0) ** gamma * ce
    if alpha is not None:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return loss.mean()


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
                 gamma: float = 1.0, smooth: float = 1.0) -> torch.Tensor:
    """Tversky loss (Salehi et al., 2017), optionally focal (``gamma != 1``).

    ``TI = (TP + s) / (TP + alpha FP + beta FN + s)`` with soft counts over the labelled pixels;
    the loss is ``(1 - TI) ** gamma``. ``alpha`` weighs false positives and ``beta`` false
    negatives, so the default ``beta > alpha`` favours recall of the rare landslide class.
    ``alpha = beta = 0.5`` is the Dice loss. The focal Tversky loss of Abraham & Khan (2019) writes
    the exponent as ``1 / gamma_paper``; their ``gamma_paper = 4/3`` is ``gamma = 0.75`` here.

    Args:
        logits: (B, H, W) or (B, 1, H, W) raw scores.
        target: same shape, 1 / 0 / 255 ignored.
        alpha: weight of false positives.
        beta: weight of false negatives.
        gamma: exponent applied to ``1 - TI`` (1 = plain Tversky).
        smooth: additive smoothing.

    Returns:
        A scalar tensor in [0, 1].
    """
    if alpha < 0 or beta < 0 or gamma <= 0:
        raise InputError(f"tversky needs alpha, beta >= 0 and gamma > 0 (got {alpha}, {beta}, {gamma})")
    x, y = _labelled(logits, target)
    if x.numel() == 0:
        return _zero(x)
    p = torch.sigmoid(x)
    tp = (p * y).sum()
    fp = (p * (1.0 - y)).sum()
    fn = ((1.0 - p) * y).sum()
    ti = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return (1.0 - ti).clamp_min(0.0) ** gamma


def _lovasz_jaccard_grad(sorted_labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at errors sorted in decreasing order.

    With ``pi`` the decreasing order of the errors, the extension is
    ``sum_i m_pi(i) * (Delta({pi_1..pi_i}) - Delta({pi_1..pi_{i-1}}))`` (Berman et al. 2018, eq. 8-9),
    where ``Delta(M) = 1 - |y & pred| / |y | pred|`` and ``M`` is the set of mispredicted pixels.
    Making the first ``i`` pixels wrong removes the positives among them from the intersection and
    adds the negatives among them to the union.
    """
    n_pos = sorted_labels.sum()
    intersection = n_pos - torch.cumsum(sorted_labels, 0)
    union = n_pos + torch.cumsum(1.0 - sorted_labels, 0)  # >= 1 for every prefix
    jaccard_loss = 1.0 - intersection / union
    grad = jaccard_loss.clone()
    grad[1:] = jaccard_loss[1:] - jaccard_loss[:-1]
    return grad


def _lovasz_hinge_flat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge over one flat set of labelled pixels (x logits, y 0/1 floats)."""
    if x.numel() == 0:
        return _zero(x)
    signs = 2.0 * y - 1.0
    errors = 1.0 - x * signs  # hinge margins: > 0 where the pixel is not classified with margin 1
    errors_sorted, order = torch.sort(errors, descending=True)
    grad = _lovasz_jaccard_grad(y[order])
    # the permutation is piecewise constant: its gradient is the chosen slope (a subgradient)
    return torch.dot(F.relu(errors_sorted), grad)


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor, per_image: bool = True) -> torch.Tensor:
    """Lovasz hinge loss (Berman, Rannen Triki & Blaschko, CVPR 2018): a convex surrogate of IoU.

    The hinge errors ``max(0, 1 - s_i y_i)`` (``y_i`` in {-1, +1}) are fed to the Lovasz extension
    of the Jaccard loss ``1 - IoU`` of the landslide class. It is 0 when every labelled pixel is on
    the right side with margin >= 1. The extension is positively homogeneous and equals the set
    function on indicators, so when every logit is +-1 (errors 0 or 2) the loss is exactly
    ``2 * (1 - IoU)`` of the sign prediction: the surrogate is tight at those points.

    Args:
        logits: (B, H, W) or (B, 1, H, W) raw scores (margins, not probabilities).
        target: same shape, 1 / 0 / 255 ignored.
        per_image: True: the mean over the images that have labelled pixels of each image's loss
            (what the paper recommends for per-image IoU); False: one loss over the whole batch.

    Returns:
        A scalar tensor.
    """
    logits, target = _as_bhw(logits, target)
    if not per_image:
        keep = target != IGNORE
        return _lovasz_hinge_flat(logits[keep], (target[keep] == 1).to(logits.dtype))
    losses = []
    for lg, tg in zip(logits, target):
        keep = tg != IGNORE
        if bool(keep.any()):
            losses.append(_lovasz_hinge_flat(lg[keep], (tg[keep] == 1).to(logits.dtype)))
    if not losses:
        return _zero(logits[target != IGNORE])
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------
# class weights
# ----------------------------------------------------------------------------------------------
def class_weights(labels: np.ndarray | Iterable[np.ndarray], ignore: int = IGNORE,
                  cap: float = POS_WEIGHT_CAP) -> dict[str, float]:
    """Pixel counts and class weights of a training split.

    ``pos_weight = n_neg / n_pos`` is the weight that makes positives and negatives contribute
    equally to BCE; it is capped at ``cap`` (default 10: with landslide fractions of 0.2-2 % the
    uncapped ratio makes the network over-predict). The inverse-frequency weights are the
    "balanced" ones, ``n_labelled / (2 * n_class)``, so they average to 1 over the pixels.

    Args:
        labels: one label array or an iterable of them (e.g. one per patch), values 0, 1, ``ignore``.
        ignore: the not-labelled value; those pixels are counted apart and never weighted.
        cap: upper bound of ``pos_weight`` (``math.inf`` for none).

    Returns:
        ``{"n_pos", "n_neg", "n_ignored", "pos_fraction", "pos_weight", "pos_weight_uncapped",
        "weight_neg", "weight_pos"}`` (counts as floats so the dict is JSON friendly).

    Raises:
        InputError: a value other than 0, 1 and ``ignore``, or a split without both classes.
    """
    if not cap > 0:
        raise InputError(f"pos_weight cap must be positive, got {cap}")
    arrays = [labels] if isinstance(labels, np.ndarray) else labels
    n_pos = n_neg = n_ign = 0
    n_arrays = 0
    for a in arrays:
        a = np.asarray(a)
        n_arrays += 1
        values = np.unique(a)
        bad = [v for v in values.tolist() if v not in (0, 1, ignore)]
        if bad:
            raise InputError(f"label array {n_arrays} holds values {bad[:5]}; labels must be 0 "
                             f"(background), 1 (landslide) or {ignore} (ignored)")
        pos = int(np.count_nonzero(a == 1))
        ign = int(np.count_nonzero(a == ignore))
        n_pos += pos
        n_ign += ign
        n_neg += a.size - pos - ign
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"the training labels need both classes to weight them (landslide: {n_pos} "
                         f"px, background: {n_neg} px, ignored: {n_ign} px in {n_arrays} array(s))")
    n_lab = n_pos + n_neg
    ratio = n_neg / n_pos
    return {"n_pos": float(n_pos), "n_neg": float(n_neg), "n_ignored": float(n_ign),
            "pos_fraction": n_pos / n_lab, "pos_weight": float(min(ratio, cap)),
            "pos_weight_uncapped": float(ratio),
            "weight_neg": n_lab / (2.0 * n_neg), "weight_pos": n_lab / (2.0 * n_pos)}


# ----------------------------------------------------------------------------------------------
# spec / registry
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LossEntry:
    fn: Callable[[float | None], LossFn]
    describe: Callable[[float | None], str]


def _bce_text(pw: float | None) -> str:
    return "BCE" if pw is None else f"weighted BCE (pos_weight {pw:.2f})"


LOSSES: dict[str, _LossEntry] = {
    "bce": _LossEntry(lambda pw: (lambda lg, t: weighted_bce(lg, t, pw)), _bce_text),
    "dice": _LossEntry(lambda pw: dice_loss, lambda pw: "soft Dice (smooth 1)"),
    "focal": _LossEntry(lambda pw: focal_loss, lambda pw: "focal (alpha 0.25, gamma 2)"),
    "tversky": _LossEntry(lambda pw: tversky_loss,
                          lambda pw: "Tversky (alpha 0.3 on FP, beta 0.7 on FN)"),
    "focal_tversky": _LossEntry(lambda pw: (lambda lg, t: tversky_loss(lg, t, gamma=0.75)),
                                lambda pw: "focal Tversky (alpha 0.3, beta 0.7, exponent 0.75)"),
    "lovasz": _LossEntry(lambda pw: lovasz_hinge, lambda pw: "Lovasz hinge (per image)"),
    "lovasz_batch": _LossEntry(lambda pw: (lambda lg, t: lovasz_hinge(lg, t, per_image=False)),
                               lambda pw: "Lovasz hinge (whole batch)"),
}

_TERM = re.compile(r"^(?:(?P<w>\d+(?:\.\d*)?(?:e-?\d+)?|\.\d+(?:e-?\d+)?)\s*\*\s*)?(?P<name>[a-z_]+)$")


def list_losses() -> list[str]:
    """Names usable in a loss spec."""
    return list(LOSSES)


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """Parse ``"0.5*bce+1.0*dice"`` into ``[(0.5, "bce"), (1.0, "dice")]``.

    Terms are joined by ``+``; each is ``name`` (weight 1) or ``weight*name``. Case and spaces do
    not matter. Weights are non-negative decimals (``2``, ``0.5``, ``1e-3``).

    Raises:
        InputError: an empty or malformed spec, an unknown name (the message lists the valid ones),
            a name listed twice, or all weights zero.
    """
    valid = ", ".join(LOSSES)
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"empty loss spec; use e.g. 'bce+dice' or '0.5*bce+1.0*dice' with {valid}")
    terms: list[tuple[float, str]] = []
    for raw in spec.lower().split("+"):
        term = raw.strip()
        m = _TERM.match(term)
        if m is None:
            raise InputError(f"cannot read loss term {raw.strip()!r} in {spec!r}; write 'name' or "
                             f"'weight*name' joined by '+', e.g. '0.5*bce+1.0*dice'")
        name = m["name"]
        if name not in LOSSES:
            raise InputError(f"unknown loss {name!r} in {spec!r}; valid losses are {valid}")
        if any(n == name for _, n in terms):
            raise InputError(f"loss {name!r} listed twice in {spec!r}; give it one weight")
        terms.append((float(m["w"]) if m["w"] is not None else 1.0, name))
    if all(w == 0 for w, _ in terms):
        raise InputError(f"every weight in loss spec {spec!r} is zero")
    return terms


class CompositeLoss:
    """A weighted sum of named losses, built by :func:`build_loss`; call it like a loss."""

    def __init__(self, spec: str, terms: list[tuple[float, str]], pos_weight: float | None) -> None:
        self.spec = spec
        self.terms = terms
        self.pos_weight = pos_weight
        self._fns = [(w, LOSSES[n].fn(pos_weight)) for w, n in terms]

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = None
        for w, fn in self._fns:
            if w == 0:
                continue
            value = w * fn(logits, target)
            total = value if total is None else total + value
        return total  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"CompositeLoss({self.spec!r}, pos_weight={self.pos_weight})"


def build_loss(spec: str, pos_weight: float | None = None) -> CompositeLoss:
    """Build a loss from a spec such as ``"bce"``, ``"bce+dice"``, ``"0.5*bce+1.0*dice"``,
    ``"focal+lovasz"`` or ``"tversky"``.

    Args:
        spec: terms joined by ``+``, each ``name`` or ``weight*name``; names from :func:`list_losses`.
        pos_weight: weight of positive pixels for the ``bce`` term (None: unweighted); typically
            ``class_weights(train_labels)["pos_weight"]``. The other terms do not use it.

    Returns:
        A callable ``loss(logits, target) -> scalar tensor``; ``.terms`` holds ``(weight, name)``.

    Raises:
        InputError: the spec cannot be parsed or names an unknown loss (the valid ones are listed),
            or ``pos_weight`` is not positive.
    """
    terms = parse_loss_spec(spec)
    if pos_weight is not None and not (math.isfinite(pos_weight) and pos_weight > 0):
        raise InputError(f"pos_weight must be a positive number, got {pos_weight}")
    return CompositeLoss(spec, terms, pos_weight)


def describe_loss(spec: str, pos_weight: float | None = None) -> str:
    """One line for a model card, e.g. ``"0.5 x weighted BCE (pos_weight 4.00) + 1 x soft Dice
    (smooth 1); pixels labelled 255 ignored"``.

    Raises:
        InputError: as :func:`build_loss`.
    """
    parts = [f"{w:g} x {LOSSES[n].describe(pos_weight)}" for w, n in parse_loss_spec(spec)]
    return " + ".join(parts) + f"; pixels labelled {IGNORE} ignored"
