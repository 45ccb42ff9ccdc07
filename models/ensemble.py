"""Ensembles: a card listing member cards plus a combination rule (DESIGN.md section 6).

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
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import CheckpointError


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
        out.append(str(p if p.is_absolute() or not (base / p).exists() else base / p))
    return out


def save_ensemble(card: EnsembleCard, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{card.name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(card.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
    return path
