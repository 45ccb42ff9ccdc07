"""What ``landslide dev-server`` hands a person: a catalog entry for the running server, a
mechanics-only detector for the served bands, and the exact scan command.

The served scenes are the real T18SVG subset (Virginia coast, 2016-01-12) and the served DEM is the
real GLO-30 crop over Sao Tome: they do not overlap, so a scan over the scenes has no SLOPE/DEM and
neither the shipped model nor the index rule (both need SLOPE) can run on it. The dev catalog
therefore comes with ``dev-rgb-random``: a U-Net with *random* weights on B02, B03, B04, which
exercises every stage (search, download, alignment, inference, vectorization) but detects nothing
meaningful. Use a real checkpoint with real data.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from devservers.stac_server import GLO30_TIF, S2_JP2_DIR, SHARED_DATA, SHARED_DATA_ENV
from tasks.core.errors import InputError

STAC_SOURCE = "dev-stac"
SENTINELHUB_SOURCE = "dev-sentinelhub"
# ~1.8 x 1.7 km inside the served 3 km x 3 km crop of T18SVG (EPSG:4326 degrees)
DEV_BBOX = (-75.695, 37.718, -75.675, 37.733)
DEV_START, DEV_END = "2016-01-01", "2016-12-31"
MECHANICS_CHECKPOINT = "dev-rgb-random"


def check_shared_data() -> Path:
    """The real files the servers cut their crops from; a one-line error naming the fix if absent.

    Raises:
        InputError: ``../shared/data`` (or ``$LANDSLIDE_SHARED_DATA``) lacks the T18SVG bands or GLO-30.
    """
    for needed in (S2_JP2_DIR / "s2_B02.jp2", GLO30_TIF):
        if not needed.exists():
            raise InputError(f"dev-server: {needed} not found; the servers need the shared test data "
                             f"(../shared/data beside the repository) or --data-dir / ${SHARED_DATA_ENV} "
                             f"pointing at it (now {SHARED_DATA})")
    return SHARED_DATA


def stac_source_entry(url: str) -> dict:
    """The ``data_catalog.yaml`` source for the running STAC API."""
    return {"kind": "stac", "description": "local dev STAC API (landslide dev-server stac)", "url": url,
            "collection": "sentinel-2-l1c", "dem_collection": "cop-dem-glo-30", "max_cloud_pct": 30}


def sentinelhub_source_entry(base_url: str, token_url: str) -> dict:
    """The ``data_catalog.yaml`` source for the running Sentinel Hub server."""
    return {"kind": "sentinelhub", "description": "local dev Sentinel Hub (landslide dev-server sentinelhub)",
            "base_url": base_url, "token_url": token_url, "collection": "sentinel-2-l1c",
            # the served GLO-30 is over Sao Tome: over T18SVG it would be all 0 m (the service's answer
            # outside coverage), which a scan would take for flat terrain, so the dev catalog asks for none
            "dem_collection": None, "max_cloud_pct": 30}


def write_catalog(path: Path, sources: dict[str, dict]) -> Path:
    """Write a catalog holding ``sources`` (name -> entry) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"version": 1, "sources": sources}, sort_keys=False))
    return path


def write_mechanics_checkpoint(folder: Path) -> Path:
    """A random-weight U-Net card on B02, B03, B04 (reused if already in ``folder``); returns the card.

    Random weights on purpose: it proves the plumbing, it is not a detector (its card says so).
    """
    card_path = folder / f"{MECHANICS_CHECKPOINT}.json"
    if card_path.exists() and card_path.with_suffix(".safetensors").exists():
        return card_path
    import torch

    from models.checkpoint import InputTransform, ModelCard, save_checkpoint
    from models.registry import build_model

    torch.manual_seed(0)
    model = build_model("Unet", "mobilenet_v2", in_channels=3)
    card = ModelCard(
        name=MECHANICS_CHECKPOINT, version="0", arch="Unet", encoder="mobilenet_v2", bands=["B02", "B03", "B04"],
        input_transform=InputTransform.from_stats([1500.0] * 3, [800.0] * 3), threshold=0.5,
        trained_on={"dataset": "none (random weights: a mechanics check of landslide dev-server)",
                    "split": "none", "file_list_sha256": "0" * 64, "labels": "none"},
        training={"epochs": 0, "loss": "none", "seed": 0},
        description="random weights for the dev servers' T18SVG scenes (no DEM there); not a detector")
    _, card_path = save_checkpoint(model, card, folder)
    return Path(card_path)


def scan_command(catalog: Path, source: str, detector: Path, out: str) -> str:
    """The ``landslide scan`` line a person runs against the dev server."""
    args = ["landslide", "scan", "--catalog", str(catalog), "--source", source,
            f"--bbox={','.join(str(v) for v in DEV_BBOX)}", "--start", DEV_START, "--end", DEV_END,
            "--detector", str(detector), "--out", out]
    return shlex.join(args)
