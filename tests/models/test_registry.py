"""The registry builds the source paper's 12 networks and explains bad names."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from models.registry import (  # noqa: E402
    ARCHITECTURES,
    PAPER_MODELS,
    UNET_ENCODERS,
    ModelSpec,
    build_model,
    count_parameters,
    list_models,
    parse_model_name,
)
from tasks.core.bands import BAND_NAMES  # noqa: E402
from tasks.core.errors import InputError  # noqa: E402


def test_paper_models_are_the_twelve():
    names = list_models()
    assert len(names) == 12 == len(PAPER_MODELS) == len(set(names))
    assert names[:11] == [f"unet-{e}" for e in UNET_ENCODERS]
    assert names[11] == "deeplabv3plus-resnet34"
    assert ARCHITECTURES == ("Unet", "DeepLabV3Plus")
    for spec in PAPER_MODELS:
        assert parse_model_name(spec.name) == spec


@pytest.mark.parametrize("spec", PAPER_MODELS, ids=lambda s: s.name)
def test_paper_model_builds_and_runs_on_5_bands(spec: ModelSpec):
    torch.manual_seed(0)
    model = build_model(spec.arch, spec.encoder, in_channels=5).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 5, 128, 128))
    assert out.shape == (1, 1, 128, 128)
    assert torch.isfinite(out).all()
    assert count_parameters(model) > 1_000_000


def test_build_14_bands_and_case_insensitive_arch():
    model = build_model("unet", "efficientnet-b0", in_channels=len(BAND_NAMES))
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 14
    spec = parse_model_name("DeepLabV3Plus-efficientnet-b0")
    assert spec == ModelSpec("DeepLabV3Plus", "efficientnet-b0")
    assert spec.name == "deeplabv3plus-efficientnet-b0"
    assert ModelSpec("deeplabv3+", "resnet34").arch == "DeepLabV3Plus"
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


def test_unknown_encoder_lists_valid_ones():
    with pytest.raises(InputError) as info:
        build_model("Unet", "resnet35", in_channels=3)
    msg = str(info.value)
    assert "'resnet35'" in msg and "did you mean" in msg
    for encoder in UNET_ENCODERS:
        assert encoder in msg
    assert "resnet50" in msg  # smp encoders beyond the paper's are listed too
    assert "\n" not in msg


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(InputError, match="Unet, DeepLabV3Plus"):
        build_model("PSPNet", "resnet34", in_channels=3)
    with pytest.raises(InputError, match="<arch>-<encoder>"):
        parse_model_name("resnet34")


def test_pretrained_weights_refused():
    with pytest.raises(InputError, match="encoder_weights"):
        build_model("Unet", "resnet34", in_channels=3, encoder_weights="imagenet")


@pytest.mark.parametrize("kwargs", [{"in_channels": 0}, {"in_channels": 2.0}, {"classes": 0}])
def test_bad_channel_counts(kwargs):
    args = {"in_channels": 3, **kwargs}
    with pytest.raises(InputError, match=">= 1"):
        build_model("Unet", "mobilenet_v2", **args)


def test_misspelled_keyword_and_impossible_combination():
    with pytest.raises(InputError, match="decoder_chanels"):
        build_model("Unet", "mobilenet_v2", in_channels=3, decoder_chanels=(8, 8, 8, 8, 8))
    with pytest.raises(InputError, match="dilated"):
        build_model("DeepLabV3Plus", "densenet121", in_channels=3)
