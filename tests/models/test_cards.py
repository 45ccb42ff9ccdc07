"""Model cards read without torch (models.cards) and the install-time torchvision fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.cards import (
    DEFAULT_CHECKPOINT,
    PAPER_MODEL_NAMES,
    list_checkpoints,
    metric_basis,
    safetensors_parameter_count,
    summarize_card,
    summarize_checkpoints,
)

REPO = Path(__file__).resolve().parents[2]


def test_paper_model_names_match_the_registry():
    from models.registry import PAPER_MODELS

    assert list(PAPER_MODEL_NAMES) == [spec.name for spec in PAPER_MODELS]


@pytest.mark.parametrize("name", [s.name for s in summarize_checkpoints() if s.kind == "model"])
def test_parameter_count_from_the_safetensors_header_matches_the_network(name):
    from models.checkpoint import load_checkpoint
    from models.registry import count_parameters

    model, _card = load_checkpoint(name)
    assert summarize_card(name).parameters == count_parameters(model)


def test_every_shipped_card_is_summarized_and_weak_cards_never_claim_real_labels():
    summaries = summarize_checkpoints()
    assert [s.name for s in summaries][0] == DEFAULT_CHECKPOINT
    assert sorted(s.name for s in summaries) == list_checkpoints()
    for s in summaries:
        assert s.bands and s.size_bytes > 0 and s.metrics, s.name
        if s.labels != "real":
            assert all("not accuracy" in m.basis for m in s.metrics), s.name
    ensemble = next(s for s in summaries if s.kind == "ensemble")
    members = [summarize_card(m) for m in ensemble.members]
    assert ensemble.parameters == sum(m.parameters for m in members)


def test_metric_basis_names_what_was_measured():
    assert metric_basis("val", "real") == "real inventory labels"
    assert "not accuracy" in metric_basis("val", "weak")
    assert "not accuracy" in metric_basis("val_weak_labels", "real")
    assert "not accuracy" in metric_basis("east_rule_agreement", "real")


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x80\x04\x95pickle" + b"\0" * 32)
    with pytest.raises(ValueError, match="not a safetensors file"):
        safetensors_parameter_count(bad)


def test_a_card_with_missing_weights_is_listed_without_a_size(tmp_path):
    card = json.loads((REPO / "models/checkpoints" / f"{DEFAULT_CHECKPOINT}.json").read_text())
    (tmp_path / "copy.json").write_text(json.dumps(card))
    summary = summarize_card(tmp_path / "copy.json")
    assert summary.parameters is None and summary.labels == "real"


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run code in a new interpreter of this environment, from a folder outside the repository."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd="/")


def test_importing_models_does_not_import_torch():
    proc = _fresh_python("import sys, models.cards; assert 'torch' not in sys.modules")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_plain_import_of_smp_works_in_the_installed_environment():
    """Issue 21: ``python -c "import segmentation_models_pytorch"`` works after ``pip install``: the
    installed ``landslide_pipeline_torchvision.pth`` applies the torchvision fix on first import, and
    imports nothing of ours before that."""
    proc = _fresh_python("import sys\n"
                         "assert 'tasks' not in sys.modules and 'torch' not in sys.modules\n"
                         "import segmentation_models_pytorch, timm, torchvision\n"
                         "print(segmentation_models_pytorch.__version__)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "0.6.0"
