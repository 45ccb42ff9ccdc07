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
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
DEFAULT_CHECKPOINT = "iburi2018-real-unet-efficientnet-b0"

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
