"""What the shipped models are, read without torch: the paper's model names, the checkpoint folder,
and a summary of each model card (``landslide models`` answers from here in well under a second).

A checkpoint is ``<name>.json`` (the card) + ``<name>.safetensors`` (the weights); an ensemble card
names its members instead of carrying weights. ``models.checkpoint`` validates and loads them (with
torch); this module only reads the JSON and the safetensors header, so it imports neither torch nor
segmentation-models-pytorch.

Metric sets are named by the card: ``train`` / ``val`` are against the labels the card's
``trained_on.labels`` describes (real inventory labels for the ``iburi2018-real-*`` cards);
``*_weak_labels``, ``*_reference_predictions`` and ``*_rule_agreement`` are agreement with weak
labels, another model's predictions or the index rule: never accuracy. :func:`metric_basis` says
which.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import CheckpointError

ARCHITECTURES: tuple[str, ...] = ("Unet", "DeepLabV3Plus")

UNET_ENCODERS: tuple[str, ...] = (
    "mobilenet_v2",
    "vgg16",
    "resnet34",
    "efficientnet-b0",
    "mit_b1",
    "inceptionv4",
    "densenet121",
    "resnext50_32x4d",
    "se_resnet50",
    "se_resnext50_32x4d",
    "inceptionresnetv2",
)

DEEPLAB_PAPER_ENCODER = "resnet34"

# The source paper's 12 models as registry names (11 U-Net encoders, then DeepLabV3+ ResNet-34).
PAPER_MODEL_NAMES: tuple[str, ...] = tuple(f"unet-{e}" for e in UNET_ENCODERS) + (
    f"deeplabv3plus-{DEEPLAB_PAPER_ENCODER}",
)

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
CARD_SUFFIX = ".json"
WEIGHTS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")  # torch.save and friends
DEFAULT_CHECKPOINT = "iburi2018-real-unet-efficientnet-b0"
DEFAULT_EVENT_CHECKPOINT = "iburi2018-real-event-unet-efficientnet-b0"  # the default with --event-date
INDEX_DETECTOR = "index"  # the weights-free bare-soil rule (models.index_rule)
ONNX_SUFFIX = ".onnx"  # an export of `landslide export`

_HEADER_LEN_BYTES = 8  # safetensors: little-endian u64 header length, then the JSON header
_MAX_HEADER_BYTES = 100_000_000
# State-dict entries that are buffers, not parameters (BatchNorm statistics).
_BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def list_checkpoints(directory: str | Path | None = None) -> list[str]:
    """Names of the model cards in a folder (default: the shipped ``models/checkpoints``).

    Args:
        directory: folder to list; None for ``CHECKPOINT_DIR``.

    Returns:
        Sorted card names (file stems); an empty list when the folder does not exist.
    """
    folder = Path(directory) if directory is not None else CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob(f"*{CARD_SUFFIX}")
                  if p.is_file() and not p.name.startswith("."))


def resolve_checkpoint(ref: str | Path) -> Path:
    """Find the model card a reference points to.

    Args:
        ref: a path to ``<name>.json`` or ``<name>.safetensors`` (or the path without suffix),
            or a bare name resolved in ``models/checkpoints/``.

    Returns:
        The path of the ``.json`` card (it exists).

    Raises:
        CheckpointError: no such card.
    """
    text = str(ref).strip()
    if not text:
        raise CheckpointError("empty checkpoint reference; pass a card path or one of "
                              f"{_shipped_hint()}")
    path = Path(text)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        where = f"{path.resolve()}" if path.exists() else f"{text} (no such file here either)"
        raise CheckpointError(
            f"checkpoint {where} is a PyTorch pickle ({path.suffix}); scans load only a "
            "<name>.json card with <name>.safetensors weights (pickles can run code when loaded): "
            "on a machine you trust, load it and re-export it with "
            "models.checkpoint.save_checkpoint, or `landslide train` one")
    is_path = (isinstance(ref, Path) or path.suffix in (CARD_SUFFIX, WEIGHTS_SUFFIX)
               or "/" in text or os.sep in text or path.exists())
    if is_path:
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a folder; pass the <name>.json card inside it "
                                  f"(cards there: {', '.join(list_checkpoints(path)) or 'none'})")
        if path.suffix == WEIGHTS_SUFFIX:
            card = path.with_suffix(CARD_SUFFIX)
        elif path.suffix == CARD_SUFFIX:
            card = path
        else:
            card = path.with_name(path.name + CARD_SUFFIX)
    else:
        card = CHECKPOINT_DIR / f"{text}{CARD_SUFFIX}"
    if not card.is_file():
        raise CheckpointError(f"model card {card} not found; pass a path to a <name>.json card "
                              f"(with <name>.safetensors beside it) or one of {_shipped_hint()}")
    return card


def _shipped_hint() -> str:
    names = list_checkpoints()
    return ("the shipped checkpoints: " + ", ".join(names)) if names else \
        f"the shipped checkpoints (none in {CHECKPOINT_DIR})"


def safetensors_parameter_count(path: str | Path) -> int:
    """Number of network parameters in a safetensors state dict, from its JSON header (no tensor is
    read): every stored value except BatchNorm's running statistics.

    Raises:
        ValueError: the file is not a safetensors file.
    """
    with open(path, "rb") as f:
        head = f.read(_HEADER_LEN_BYTES)
        if len(head) != _HEADER_LEN_BYTES:
            raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
        (header_bytes,) = struct.unpack("<Q", head)
        if not 0 < header_bytes <= _MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a safetensors file (header length {header_bytes})")
        try:
            header = json.loads(f.read(header_bytes))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a safetensors file (header is not JSON)") from exc
    count = 0
    for key, info in header.items():
        if key == "__metadata__" or key.endswith(_BUFFER_SUFFIXES):
            continue
        n = 1
        for side in info["shape"]:
            n *= int(side)
        count += n
    return count


def labels_kind(card: dict[str, Any]) -> str:
    """``"real"``, ``"weak"`` or ``"unknown"``: what the card's training labels are."""
    text = str((card.get("trained_on") or {}).get("labels") or "").strip().lower()
    if text.startswith("real"):
        return "real"
    if text.startswith("weak"):
        return "weak"
    return "unknown"


def metric_basis(metric_set: str, card_labels: str) -> str:
    """What a card's metric set is measured against, in words a user can quote.

    Args:
        metric_set: the key under the card's ``metrics`` (``"val"``, ``"val_weak_labels"``...).
        card_labels: :func:`labels_kind` of the card (for the plain ``train`` / ``val`` sets).
    """
    if metric_set.endswith("_weak_labels"):
        return "agreement with weak labels (not accuracy)"
    if metric_set.endswith("_reference_predictions"):
        return "agreement with a published CNN's predictions (not accuracy)"
    if metric_set.endswith("_rule_agreement"):
        return "agreement with the bare-soil index rule (not accuracy)"
    if card_labels == "real":
        return "real inventory labels"
    if card_labels == "weak":
        return "agreement with weak labels (not accuracy)"
    return "labels not stated by the card"


@dataclass(frozen=True)
class MetricSet:
    """One of a card's metric sets."""

    name: str
    basis: str
    f1: float | None
    iou: float | None
    precision: float | None
    recall: float | None
    labelled_px: float | None = None


@dataclass(frozen=True)
class CardSummary:
    """What a user choosing a model needs from its card (``landslide models``)."""

    name: str
    kind: str  # "model" or "ensemble"
    network: str  # "Unet efficientnet-b0", or the members of an ensemble
    bands: list[str]
    labels: str  # "real", "weak", "unknown" (for an ensemble: its members', joined by "+")
    labels_text: str
    dataset: str
    split: str
    metrics: list[MetricSet]
    parameters: int | None
    size_bytes: int
    weights_dtype: str | None
    default: bool
    members: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable model card ({exc})") from exc
    if not isinstance(card, dict):
        raise ValueError(f"{path}: not a model card (not a JSON object)")
    return card


def _metric_sets(card: dict[str, Any], card_labels: str) -> list[MetricSet]:
    sets = []
    for name, values in (card.get("metrics") or {}).items():
        if not isinstance(values, dict):
            continue
        sets.append(MetricSet(name=name, basis=metric_basis(name, card_labels),
                              f1=values.get("f1"), iou=values.get("iou"),
                              precision=values.get("precision"), recall=values.get("recall"),
                              labelled_px=values.get("labelled_px")))
    return sets


def summarize_card(name_or_path: str | Path, directory: str | Path | None = None) -> CardSummary:
    """Summarize a model card without torch.

    Args:
        name_or_path: a card name in ``directory`` or a path to the ``.json`` card.
        directory: where bare names are looked up (default ``CHECKPOINT_DIR``).

    Raises:
        ValueError: the card (or an ensemble member's card) is missing or not JSON.
    """
    path = Path(name_or_path)
    if path.suffix != CARD_SUFFIX:
        path = (Path(directory) if directory is not None else CHECKPOINT_DIR) / f"{name_or_path}{CARD_SUFFIX}"
    card = _read_card(path)
    name = str(card.get("name") or path.stem)
    kind = str(card.get("kind") or "model")
    if kind == "ensemble":
        members = [summarize_card(path.parent / f"{m}{CARD_SUFFIX}") for m in card.get("members") or []]
        kinds = sorted({m.labels for m in members})
        bands = members[0].bands if members else []
        params = [m.parameters for m in members]
        return CardSummary(
            name=name, kind=kind, network=f"{card.get('rule', 'mean')} ensemble of {len(members)} networks",
            bands=bands, labels="+".join(kinds) or "unknown",
            labels_text=members[0].labels_text if members else "",
            dataset=members[0].dataset if members else "", split=members[0].split if members else "",
            metrics=_metric_sets(card, "+".join(kinds)),
            parameters=None if None in params else sum(params),  # type: ignore[arg-type]
            size_bytes=sum(m.size_bytes for m in members) + path.stat().st_size,
            weights_dtype=None, default=name == DEFAULT_CHECKPOINT,
            members=[m.name for m in members])
    weights = path.with_suffix(WEIGHTS_SUFFIX)
    try:
        parameters: int | None = safetensors_parameter_count(weights)
        size = weights.stat().st_size
    except (OSError, ValueError):
        parameters, size = None, 0
    trained_on = card.get("trained_on") or {}
    labels = labels_kind(card)
    return CardSummary(
        name=name, kind=kind, network=f"{card.get('arch', '?')} {card.get('encoder', '?')}",
        bands=[str(b) for b in card.get("bands") or []], labels=labels,
        labels_text=str(trained_on.get("labels") or ""), dataset=str(trained_on.get("dataset") or ""),
        split=str(trained_on.get("split") or ""), metrics=_metric_sets(card, labels),
        parameters=parameters, size_bytes=size + path.stat().st_size,
        weights_dtype=card.get("weights_dtype"), default=name == DEFAULT_CHECKPOINT)


def summarize_checkpoints(directory: str | Path | None = None) -> list[CardSummary]:
    """:func:`summarize_card` for every card in a folder (default: the shipped ones), default first."""
    summaries = [summarize_card(n, directory) for n in list_checkpoints(directory)]
    return sorted(summaries, key=lambda s: (not s.default, s.name))


# Out-of-domain rule (issue 21; measurements in docs/domain_check.md). A pixel's squared Mahalanobis
# distance d2 from the training pixels (their mean vector and covariance) averages k, the number of
# bands, over the training pixels themselves. Over a scene it averages
#     E[d2] = trace(C^-1 S) + (m - mu)^T C^-1 (m - mu)
# (C, mu: training covariance and mean; S, m: the scene's). The check runs per group of bands, because
# the groups shift for different reasons: the spectral bands with the sensor, its processing level,
# the season and the land cover; the terrain bands with the relief of the area. A group is outside
# the training domain when E[d2] / k exceeds its limit. Cards without a covariance use their per-band
# means and standard deviations (a diagonal C).
DOMAIN_GROUPS: dict[str, tuple[str, ...]] = {
    "spectral": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12",
                 "PRE_B02", "PRE_B03", "PRE_B04", "PRE_B08", "PRE_B11", "PRE_B12"),
    "terrain": ("SLOPE", "DEM"),
}
# spectral: the bundled sample gives 0.9-1.2 (the training area itself exactly 1.0), the real T18SVG
# scene (January, Virginia coast) 5.0. terrain: the sample's own eastern hills reach 5.7 (elevation
# ~3 training std above the training area), so only a grosser relief shift warns.
DOMAIN_MAX_D2_RATIO: dict[str, float] = {"spectral": 2.5, "terrain": 8.0}


def _training_moments(card: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    stats = card.get("training_statistics")
    if stats:
        return (list(stats["bands"]), np.asarray(stats["mean"], float), np.asarray(stats["covariance"], float),
                "training_statistics (mean vector and covariance of the training pixels)")
    t = card["input_transform"]
    scale, offset = np.asarray(t["scale"], float), np.asarray(t["offset"], float)
    mean = (np.asarray(t["mean"], float) - offset) / scale  # back to physical units
    std = np.asarray(t["std"], float) / np.abs(scale)
    return (list(card["bands"]), mean, np.diag(std ** 2),
            "input_transform means and standard deviations (this card has no covariance)")


def _group_of(band: str) -> str:
    return next((g for g, members in DOMAIN_GROUPS.items() if band in members), "other")


def _mean_d2(mu: np.ndarray, cov: np.ndarray, m: np.ndarray, s: np.ndarray) -> float:
    """E[d2] over pixels with mean m and covariance s, d2 measured against (mu, cov)."""
    cov = cov + np.eye(len(mu)) * 1e-9 * max(float(np.trace(cov)), 1e-12)  # never singular
    delta = m - mu
    return float(np.trace(np.linalg.solve(cov, s)) + delta @ np.linalg.solve(cov, delta))


def domain_check(card: dict[str, Any], scene_moments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Compare a scene's band statistics with a model card's training statistics.

    Args:
        card: a model card as JSON (``bands``, ``input_transform``, optionally ``training_statistics``).
        scene_moments: the scene's moments by label (``tasks.core.moments.BandMoments.to_json``:
            ``bands``, ``n_px``, ``mean``, ``covariance``, physical units): ``{"": post}``, or with an
            event scan's pre-event stack ``{"": post, "pre-event": pre}``; sets are compared
            separately, the label suffixes the group names. Bands of the card in none of them are
            listed as not checked.

    Returns:
        ``{"card", "basis", "groups": {group: {"bands", "d2_ratio", "limit", "outside"}}, "outside"
        (any group), "bands": {band: {"scene_mean", "scene_std", "training_mean", "training_std",
        "z", "spread_ratio"}}, "not_checked"}``.
    """
    train_bands, mu, cov, basis = _training_moments(card)
    bands: dict[str, dict[str, float]] = {}
    groups: dict[str, dict[str, Any]] = {}
    for label, moments in scene_moments.items():
        if not moments or not moments.get("n_px") or moments.get("mean") is None:
            continue
        for group in dict.fromkeys(_group_of(b) for b in train_bands):
            common = [b for b in train_bands if _group_of(b) == group and b in moments["bands"]
                      and b not in bands]
            if not common:
                continue
            ti = [train_bands.index(b) for b in common]
            si = [moments["bands"].index(b) for b in common]
            c, t_mean = cov[np.ix_(ti, ti)], mu[ti]
            m = np.asarray(moments["mean"], float)[si]
            s = np.asarray(moments["covariance"], float)[np.ix_(si, si)]
            ratio = _mean_d2(t_mean, c, m, s) / len(ti)
            limit = DOMAIN_MAX_D2_RATIO.get(group, max(DOMAIN_MAX_D2_RATIO.values()))
            key = f"{group} {label}".strip()
            groups[key] = {"bands": common, "d2_ratio": round(ratio, 3), "limit": limit,
                           "outside": ratio > limit}
            for k, b in enumerate(common):
                train_std = float(np.sqrt(max(c[k, k], 1e-24)))
                scene_std = float(np.sqrt(max(s[k, k], 0.0)))
                bands[b] = {"scene_mean": round(float(m[k]), 3), "scene_std": round(scene_std, 3),
                            "training_mean": round(float(t_mean[k]), 3), "training_std": round(train_std, 3),
                            "z": round(float(m[k] - t_mean[k]) / train_std, 3),
                            "spread_ratio": round(scene_std / train_std, 3)}
    return {"card": card.get("name"), "basis": basis, "groups": groups,
            "outside": any(g["outside"] for g in groups.values()),
            "bands": bands, "not_checked": [b for b in train_bands if b not in bands]}


def domain_warning(check: dict[str, Any]) -> str | None:
    """One line saying which band groups of the scene are outside the card's training domain, with
    the bands that differ most; None when none is."""
    outside = [(name, g) for name, g in check["groups"].items() if g["outside"]]
    if not outside:
        return None
    parts = []
    for name, g in outside:
        worst = sorted(g["bands"], key=lambda b: -(check["bands"][b]["z"] ** 2
                                                    + (check["bands"][b]["spread_ratio"] - 1) ** 2))[:3]
        details = ", ".join(f"{b} mean {check['bands'][b]['scene_mean']:.4g} (training "
                            f"{check['bands'][b]['training_mean']:.4g} +- {check['bands'][b]['training_std']:.3g})"
                            for b in worst)
        parts.append(f"{name} bands {g['d2_ratio']:.1f}x as far from the training pixels as those are "
                     f"(limit {g['limit']}): {details}")
    return (f"the scene is outside the training domain of {check['card']}: {'; '.join(parts)}; "
            "detections here are less reliable than the card's metrics say")
