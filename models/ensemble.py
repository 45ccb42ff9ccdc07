"""Ensembles: a card listing member cards plus a combination rule (docs/contracts.md section 4).

Rules, per pixel, over the member probabilities p_i:
- ``mean``: the mean of p_i;
- ``weighted``: sum(w_i p_i) / sum(w_i), weights typically the members' validation F1;
- ``majority``: the share of members voting landslide (p_i >= their own threshold); with the
  ensemble threshold 0.5 a strict majority decides.
The ensemble's per-pixel uncertainty is the standard deviation of the member probabilities
(member disagreement); ``uncertainty.tif`` and the polygons' ``uncertainty`` come from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.checkpoint import read_card, resolve_checkpoint
from tasks.core.errors import CheckpointError
from tasks.core.files import atomic_write_text, utc_now_iso


class EnsembleCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["ensemble"] = "ensemble"
    name: str
    version: str = "1"
    members: list[str] = Field(min_length=2, description="member card paths (relative to this "
                                                         "card) or shipped checkpoint names")
    rule: Literal["mean", "weighted", "majority"] = "mean"
    weights: list[float] | None = None
    threshold: float = Field(default=0.5, gt=0, lt=1)
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    description: str = ""
    created: str = ""

    @model_validator(mode="after")
    def _check(self) -> "EnsembleCard":
        if self.rule == "weighted":
            if not self.weights or len(self.weights) != len(self.members):
                raise ValueError("rule 'weighted' needs one weight per member")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be >= 0 with a positive sum")
        return self


def is_ensemble_card(path: str | Path) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("kind") == "ensemble"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def read_ensemble(path: str | Path) -> EnsembleCard:
    path = Path(path)
    try:
        return EnsembleCard.model_validate_json(path.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CheckpointError(f"ensemble card {path}: '{'.'.join(map(str, first['loc']))}': "
                              f"{first['msg']}") from None


def member_refs(card: EnsembleCard, card_path: str | Path) -> list[str]:
    """Member references resolved against the ensemble card's folder."""
    base = Path(card_path).parent
    out = []
    for m in card.members:
        p = Path(m)
        if p.is_absolute():
            out.append(str(p))
        elif (base / p).exists():
            out.append(str(base / p))
        elif (base / f"{m}.json").exists():  # a member named as a card beside the ensemble
            out.append(str(base / f"{m}.json"))
        else:
            out.append(m)  # a shipped checkpoint name
    return out


def save_ensemble(card: EnsembleCard, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(directory / f"{card.name}.json", card.model_dump_json(indent=2) + "\n")


def build_ensemble(members: list[str], name: str, out_dir: str | Path, rule: str = "mean",
                   weights_from: str | None = None, threshold: float = 0.5,
                   description: str = "") -> Path:
    """Write an ensemble card over member checkpoints (``models.evaluate.score_ensemble`` then
    scores it and adds the figures).

    Members are card names/paths; a member in ``out_dir`` is listed by its name, so the ensemble
    and its members move together. ``weights_from`` (rule ``weighted``) names the member-card
    metrics key whose F1 becomes each member's weight, e.g. ``val_weak_labels``: a validation
    split, never the data the ensemble is scored on afterwards if that score is to be unbiased.
    """
    out_dir = Path(out_dir)
    if len(members) < 2:
        raise CheckpointError("an ensemble needs at least 2 members")
    paths = [resolve_checkpoint(m) for m in members]
    cards = [read_card(p) for p in paths]
    if len({c.patch_size for c in cards}) != 1:
        raise CheckpointError(f"members use different patch sizes: {[c.patch_size for c in cards]}")
    weights = None
    if rule == "weighted":
        if not weights_from:
            raise CheckpointError("rule 'weighted' needs weights_from: a metrics key of the member "
                                  "cards (e.g. val_weak_labels) whose F1 becomes the weight")
        missing = [c.name for c in cards if "f1" not in c.metrics.get(weights_from, {})]
        if missing:
            raise CheckpointError(f"member card(s) {missing} have no metrics[{weights_from!r}].f1")
        weights = [round(float(c.metrics[weights_from]["f1"]), 4) for c in cards]
    listed = [p.stem if p.parent.resolve() == out_dir.resolve() else str(m)
              for p, m in zip(paths, members)]
    card = EnsembleCard(
        name=name, members=listed, rule=rule, weights=weights, threshold=threshold,
        description=description or (f"{rule} of {len(listed)} members"
                                    + (f", weights = member F1 on {weights_from}" if weights else "")),
        created=utc_now_iso())
    return save_ensemble(card, out_dir)
