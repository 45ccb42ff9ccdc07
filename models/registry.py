"""Model registry: architecture + encoder names -> segmentation-models-pytorch (smp 0.6.0) networks.

The source paper compares U-Net with 11 encoders and DeepLabV3+ with a ResNet-34 encoder; those 12
are ``PAPER_MODELS``. Any other encoder smp accepts (including ``tu-<timm model>``) builds too, so
a checkpoint may use it, but only the paper's 12 are listed by ``list_models``.

Networks are always built with ``encoder_weights=None``: pretrained weights would be downloaded from
the Hugging Face hub, which these machines cannot reach (smp retries for ~23 s, then fails). Trained
weights come from our own checkpoints (``models.checkpoint``).

Input size: smp 0.6.0's U-Net interpolates skip connections, so it runs on any patch side; the
DeepLabV3+ forward needs sides divisible by 16 (its encoder output stride) and, in training mode,
a batch of more than one patch (its ASPP pooling branch has a BatchNorm over a 1 x 1 map).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any

import torch

# The torchvision shim must run before smp/timm are imported. Imported by its full name (not
# `import models`): under pytest, tests/models can shadow the package name `models`.
from models import _torchvision_compat  # noqa: F401,I001
import segmentation_models_pytorch as smp  # noqa: I001  (after the shim)
from models.cards import ARCHITECTURES, DEEPLAB_PAPER_ENCODER, PAPER_MODEL_NAMES, UNET_ENCODERS
from tasks.core.errors import InputError

_ARCH_CLASSES: dict[str, type[torch.nn.Module]] = {
    "Unet": smp.Unet,
    "DeepLabV3Plus": smp.DeepLabV3Plus,
}
# Lower-case spellings accepted for each architecture ("unet", "u-net", "deeplabv3+", ...).
_ARCH_KEYS: dict[str, str] = {a.lower(): a for a in ARCHITECTURES}
# Arguments build_model sets itself; they may not come in through **kwargs.
_RESERVED_KWARGS = ("encoder_name", "in_channels", "classes")


def _arch_key(name: str) -> str:
    return str(name).strip().lower().replace("+", "plus").replace("-", "").replace("_", "")


def canonical_arch(arch: str) -> str:
    """Return the canonical spelling of an architecture name (case-insensitive).

    Args:
        arch: ``"Unet"``, ``"unet"``, ``"DeepLabV3Plus"``, ``"deeplabv3plus"``, ``"deeplabv3+"``...

    Returns:
        ``"Unet"`` or ``"DeepLabV3Plus"``.

    Raises:
        InputError: the architecture is not one of ``ARCHITECTURES``.
    """
    canon = _ARCH_KEYS.get(_arch_key(arch))
    if canon is None:
        raise InputError(
            f"unknown architecture {arch!r}; valid architectures are {', '.join(ARCHITECTURES)} "
            "(case-insensitive)"
        )
    return canon


def available_encoders() -> list[str]:
    """Encoder names smp 0.6.0 builds by name (timm encoders are also accepted as ``tu-<name>``)."""
    return list(smp.encoders.get_encoder_names())


def check_encoder(encoder: str) -> str:
    """Validate an encoder name against smp's encoders (and timm's models for ``tu-`` names).

    Args:
        encoder: an smp encoder name such as ``"resnet34"``, or ``"tu-<timm model name>"``.

    Returns:
        The encoder name, unchanged.

    Raises:
        InputError: smp does not know the encoder; the message lists the valid names.
    """
    name = str(encoder).strip()
    known = available_encoders()
    if name in known:
        return name
    if name.startswith("tu-"):
        import timm

        if timm.is_model(name[3:]):
            return name
        raise InputError(
            f"unknown timm encoder {name!r}: timm has no model {name[3:]!r}; "
            "list them with `timm.list_models()` and pass `tu-<model name>`"
        )
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise InputError(
        f"unknown encoder {encoder!r}; {hint}the paper's encoders are {', '.join(UNET_ENCODERS)}; "
        f"smp {smp.__version__} accepts: {', '.join(known)}, or 'tu-<timm model name>'"
    )


@dataclass(frozen=True)
class ModelSpec:
    """One architecture + encoder pair, e.g. ``ModelSpec("Unet", "resnet34")``.

    The architecture is canonicalized (``"unet"`` -> ``"Unet"``) and both names are validated.
    """

    arch: str
    encoder: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", canonical_arch(self.arch))
        object.__setattr__(self, "encoder", check_encoder(self.encoder))

    @property
    def name(self) -> str:
        """Registry name such as ``"unet-resnet34"`` or ``"deeplabv3plus-resnet34"``."""
        return f"{self.arch.lower()}-{self.encoder}"

    def build(self, in_channels: int, classes: int = 1, **kwargs: Any) -> torch.nn.Module:
        """Build this network with random weights (see ``build_model``)."""
        return build_model(self.arch, self.encoder, in_channels, classes, **kwargs)


PAPER_MODELS: tuple[ModelSpec, ...] = tuple(ModelSpec("Unet", e) for e in UNET_ENCODERS) + (
    ModelSpec("DeepLabV3Plus", DEEPLAB_PAPER_ENCODER),
)


def list_models() -> list[str]:
    """Names of the source paper's 12 models (11 U-Net encoders, then DeepLabV3+ ResNet-34)."""
    return list(PAPER_MODEL_NAMES)


def parse_model_name(name: str) -> ModelSpec:
    """Parse a registry name such as ``"unet-resnet34"`` or ``"deeplabv3plus-efficientnet-b0"``.

    The part before the first ``-`` is the architecture (case-insensitive), the rest the encoder
    (encoder names may contain ``-``).

    Args:
        name: ``<arch>-<encoder>``.

    Returns:
        The ``ModelSpec``.

    Raises:
        InputError: the name has no ``-``, or names an unknown architecture or encoder.
    """
    arch, sep, encoder = str(name).strip().partition("-")
    if not sep or not arch or not encoder:
        raise InputError(
            f"model name {name!r} is not '<arch>-<encoder>'; the paper's models are "
            f"{', '.join(list_models())}"
        )
    return ModelSpec(arch, encoder)


def build_model(
    arch: str, encoder: str, in_channels: int, classes: int = 1, **kwargs: Any
) -> torch.nn.Module:
    """Build a segmentation network with randomly initialized weights.

    Args:
        arch: ``"Unet"`` or ``"DeepLabV3Plus"`` (case-insensitive).
        encoder: an smp encoder name (see ``available_encoders``) or ``"tu-<timm model>"``.
        in_channels: number of input channels (bands), at least 1.
        classes: number of output channels (1 for a landslide logit).
        **kwargs: further keyword arguments of the smp architecture class, e.g.
            ``decoder_channels`` or ``encoder_depth``. ``encoder_weights`` may only be None.

    Returns:
        The ``torch.nn.Module`` (in training mode, on the CPU); its forward maps
        ``(B, in_channels, H, W)`` to logits ``(B, classes, H, W)``.

    Raises:
        InputError: unknown architecture or encoder (the message lists the valid ones),
            ``in_channels`` or ``classes`` below 1, ``encoder_weights`` other than None, an
            argument the architecture does not take, or an encoder/architecture combination smp
            rejects (e.g. DeepLabV3+ with VGG, which cannot run dilated).
    """
    arch_name = canonical_arch(arch)
    encoder_name = check_encoder(encoder)
    for label, value in (("in_channels", in_channels), ("classes", classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{label} must be an integer >= 1, got {value!r}")
    weights = kwargs.pop("encoder_weights", None)
    if weights is not None:
        raise InputError(
            f"encoder_weights={weights!r} is not supported: pretrained weights cannot be downloaded "
            "here; build with encoder_weights=None and load trained weights from a checkpoint"
        )
    cls = _ARCH_CLASSES[arch_name]
    reserved = sorted(k for k in kwargs if k in _RESERVED_KWARGS)
    if reserved:
        raise InputError(f"build_model sets {', '.join(reserved)} itself; pass them as arguments")
    # smp silently ignores unknown keywords for its own encoders (they only reach timm encoders),
    # so a typo such as `decoder_chanels` would build a different network than intended.
    if not encoder_name.startswith("tu-"):
        params = inspect.signature(cls.__init__).parameters
        accepted = {
            n for n, p in params.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"
        }
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise InputError(
                f"{arch_name} does not take {', '.join(unknown)}; its arguments are "
                f"{', '.join(sorted(accepted - set(_RESERVED_KWARGS) - {'encoder_weights'}))}"
            )
    try:
        return cls(
            encoder_name=encoder_name,
            encoder_weights=None,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"smp cannot build {arch_name} with encoder {encoder_name!r}: {exc}"
        ) from exc


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of a model.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        The total number of parameter elements.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
