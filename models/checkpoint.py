"""Checkpoints: safetensors weights plus a JSON model card (docs/contracts.md section 4).

A checkpoint is two files side by side::

    <name>.safetensors   the network's state dict (float32 or float16), never a pickle
    <name>.json          the model card: what the network is, which bands it reads in which units,
                         how it was trained and evaluated, and the sha256 of the weights file

Pickle checkpoints (``torch.save``) are never loaded: unpickling runs arbitrary code. A file that is
not safetensors is recognised from its header and refused with a message saying how to convert it.

The card's ``input_transform`` maps physical units (``tasks.core.bands``: reflectance x 10000, degrees,
metres) to the network input, per channel: ``((physical * scale + offset) - mean) / std``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.accel import DEFAULT_MAX_ABS_PROB, DEFAULT_MAX_FLIP_FRACTION
from models.cards import (
    CARD_SUFFIX,
    CHECKPOINT_DIR,
    WEIGHTS_SUFFIX,
    list_checkpoints,
    resolve_checkpoint,
)
from models.registry import build_model, canonical_arch, check_encoder
from tasks.core.bands import BAND_NAMES, normalize_band_name, validate_bands
from tasks.core.errors import CheckpointError, InputError
from tasks.core.files import atomic_write, utc_now_iso

WEIGHTS_DTYPES: tuple[str, ...] = ("float32", "float16")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
_SHOW_KEYS = 3  # mismatching state-dict keys named in an error message
# InputTransform.apply_filled works on this many bytes of a batch at a time (whole patches, at least
# one): small enough for the CPU's caches
FILL_CHUNK_BYTES = 2 * 2**20

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


_INVALID_PREFIX = re.compile(r"^invalid [A-Za-z]+: ")


def _summarize_validation(exc: ValidationError, limit: int = 3) -> str:
    """Pydantic errors on one line: ``field.path: message; ...``."""
    errors = exc.errors()
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field (not part of the format; remove it or fix its spelling)"
        # Validators raise InputError (a ValueError); _Strict.__init__ runs inside pydantic's
        # validation too, so a nested model's summary arrives here as "invalid <Model>: ...".
        msg = _INVALID_PREFIX.sub("", msg.removeprefix("Value error, "))
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > limit:
        parts.append(f"(+{len(errors) - limit} more)")
    return "; ".join(parts)


class _Strict(BaseModel):
    """Base of the card models: unknown keys are errors; bad values raise ``InputError``.

    Constructing a model directly (``ModelCard(...)``) raises ``InputError`` with a one-line
    summary; ``model_validate`` raises pydantic's ``ValidationError`` (``read_card`` turns that
    into a ``CheckpointError`` naming the file).
    """

    model_config = ConfigDict(extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InputError(f"invalid {type(self).__name__}: {_summarize_validation(exc)}") from exc


class PCAProjection(_Strict):
    """Principal components of some standardized channels, fitted on the training split only.

    ``bands`` are indices into the card's band list (the spectral bands); ``components`` is a
    k x len(bands) matrix applied to those standardized channels (each row already divided by the
    square root of its eigenvalue, so the k outputs have unit variance on the training pixels).
    """

    bands: list[int] = Field(min_length=2)
    components: list[list[FiniteFloat]] = Field(min_length=1)
    explained_variance_ratio: list[FiniteFloat] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "PCAProjection":
        if len(set(self.bands)) != len(self.bands) or min(self.bands) < 0:
            raise InputError(f"pca.bands must be distinct band indices >= 0, got {self.bands}")
        if any(len(row) != len(self.bands) for row in self.components):
            raise InputError(f"pca.components rows need {len(self.bands)} values (one per pca band)")
        if len(self.components) > len(self.bands):
            raise InputError(f"pca keeps {len(self.components)} components of {len(self.bands)} bands")
        return self


class InputTransform(_Strict):
    """Per-channel map from physical units to the network input.

    ``input = ((physical * scale + offset) - mean) / std``, one value per band of the card, in the
    card's band order. ``scale``/``offset`` bring physical units into the units the statistics were
    computed in (e.g. ``scale = 1 / L4S_SCALE`` for statistics of Landslide4Sense h5 values);
    ``mean``/``std`` standardize. With ``pca``, the standardized channels listed in ``pca.bands``
    are replaced by their principal components: the network sees the k components first, then the
    other bands in card order (:attr:`n_outputs` channels).
    """

    scale: list[FiniteFloat]
    offset: list[FiniteFloat]
    mean: list[FiniteFloat]
    std: list[FiniteFloat]
    pca: PCAProjection | None = None

    @model_validator(mode="after")
    def _check(self) -> "InputTransform":
        lengths = {k: len(getattr(self, k)) for k in ("scale", "offset", "mean", "std")}
        if len(set(lengths.values())) != 1 or not self.scale:
            raise InputError(f"scale, offset, mean and std need one value per band each; got lengths "
                             f"{lengths}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"std values must be > 0, got {self.std}")
        if any(s == 0 for s in self.scale):
            raise InputError(f"scale values must be non-zero, got {self.scale}")
        if self.pca is not None and max(self.pca.bands) >= len(self.scale):
            raise InputError(f"pca.bands {self.pca.bands} name bands beyond the {len(self.scale)} "
                             "of the transform")
        return self

    @property
    def n_bands(self) -> int:
        """Number of channels the transform applies to."""
        return len(self.scale)

    @property
    def n_outputs(self) -> int:
        """Number of network input channels it produces (fewer than bands with ``pca``)."""
        if self.pca is None:
            return self.n_bands
        return self.n_bands - len(self.pca.bands) + len(self.pca.components)

    def output_index(self, band_index: int) -> int | None:
        """Where band ``band_index`` (of the card's list) lands in the network input; None if it
        is folded into the principal components."""
        if self.pca is None:
            return band_index
        if band_index in self.pca.bands:
            return None
        kept = [i for i in range(self.n_bands) if i not in self.pca.bands]
        return len(self.pca.components) + kept.index(band_index)

    @classmethod
    def from_stats(cls, means: Sequence[float], stds: Sequence[float]) -> "InputTransform":
        """Standardization only: ``scale = 1``, ``offset = 0``.

        Args:
            means: per-band mean in physical units.
            stds: per-band standard deviation in physical units (> 0).

        Returns:
            The transform.

        Raises:
            InputError: lengths differ, a value is not finite, or a std is not positive.
        """
        means = [float(m) for m in means]
        stds = [float(s) for s in stds]
        return cls(scale=[1.0] * len(means), offset=[0.0] * len(means), mean=means, std=stds)

    def fill_values(self) -> np.ndarray:
        """Per band, the physical value that becomes 0 after :meth:`apply` (the training mean)."""
        scale, offset, mean = (np.asarray(v, dtype=np.float32) for v in (self.scale, self.offset,
                                                                          self.mean))
        return ((mean - offset) / scale).astype(np.float32)

    def apply_filled(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """:meth:`apply` after replacing nodata (NaN) with :meth:`fill_values`: nodata pixels
        enter the network as 0, the band's training mean.

        ``out``: where to write the result, an array of ``x``'s shape in any memory order (the
        detectors pass a channels-last view, so the network's input needs no further copy);
        ignored with a PCA, which changes the channel count. ``x`` is not changed.

        A batch is transformed a few patches at a time (:data:`FILL_CHUNK_BYTES`), so the copy,
        the fill and the four in-place steps run on data in the CPU's caches: the batch is read
        once and the result written once, instead of seven passes over the whole batch (512
        patches of 12 bands on this project's 2-core machine: 0.118 -> 0.093 s). Every value goes
        through the same float32 operations: the bits do not change.
        """
        x = np.asarray(x, dtype=np.float32)
        self._check_shape(x)
        if x.ndim == 3:
            return self.apply_filled(x[None], None if out is None else out[None])[0]
        fill = self.fill_values().reshape((-1, 1, 1))
        if self.pca is not None:  # the projection runs on the whole batch, as before
            filled = np.where(np.isfinite(x), x, fill).astype(np.float32, copy=False)
            return self.apply(filled, in_place=True)
        per = max(1, FILL_CHUNK_BYTES // max(1, x[:1].nbytes))
        result = out if out is not None else np.empty(x.shape, dtype=np.float32)
        # written in place where the result is C-contiguous; else through a contiguous scratch
        # chunk (the in-place steps run fastest there) and one reordering copy per chunk
        scratch = (None if out is None else np.empty((min(per, len(x)), *x.shape[1:]), np.float32))
        for start in range(0, len(x), per):
            part = x[start:start + per]
            dst = result[start:start + per] if scratch is None else scratch[:len(part)]
            np.copyto(dst, part)
            np.copyto(dst, np.broadcast_to(fill, part.shape), where=~np.isfinite(part))
            self.apply(dst, in_place=True)
            if scratch is not None:
                np.copyto(result[start:start + per], dst)
        return result

    def _check_shape(self, x: np.ndarray) -> None:
        if x.ndim not in (3, 4):
            raise InputError(f"input_transform.apply needs (C, H, W) or (B, C, H, W), got shape "
                             f"{x.shape}")
        if x.shape[-3] != self.n_bands:
            raise InputError(f"input_transform has {self.n_bands} band(s) but the array has "
                             f"{x.shape[-3]} channel(s) (shape {x.shape}); select the card's bands "
                             "from the stack first")

    def apply(self, x: np.ndarray, in_place: bool = False) -> np.ndarray:
        """Transform physical values to network input.

        Args:
            x: ``(B, C, H, W)`` or ``(C, H, W)`` array in physical units, C = number of bands.
                NaN stays NaN: fill nodata before (see ``models.detectors``).
            in_place: transform ``x`` (float32) itself, without a copy; with a PCA the result is
                still a new array.

        Returns:
            A float32 array of the same shape: a new one, or ``x`` when ``in_place``.

        Raises:
            InputError: the array is not 3- or 4-dimensional or has the wrong number of channels.
        """
        x = np.asarray(x, dtype=np.float32)
        self._check_shape(x)

        def col(values: list[float]) -> np.ndarray:
            return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)

        # one float32 operation at a time, in place: the same bits as x * scale + offset - mean / std
        out = np.multiply(x, col(self.scale), out=x if in_place else None)
        out += col(self.offset)
        out -= col(self.mean)
        out /= col(self.std)
        if self.pca is None:
            return out
        comps = np.asarray(self.pca.components, dtype=np.float32)  # (k, n_pca)
        pca_idx = list(self.pca.bands)
        kept = [i for i in range(self.n_bands) if i not in pca_idx]
        projected = np.einsum("kc,...chw->...khw", comps, out[..., pca_idx, :, :])
        return np.concatenate([projected, out[..., kept, :, :]], axis=-3).astype(np.float32)


class TrainedOn(_Strict):
    """Provenance of the training data."""

    dataset: str = Field(min_length=1)
    split: str = Field(min_length=1)
    file_list_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    labels: str = ""  # how the labels were made (manual, weak labels from a rule, ...)
    attribution: str | None = None  # what the labels' licence requires to be cited with them


class Training(_Strict):
    """How the network was trained. Further keys (optimizer, lr, batch_size, ...) are allowed."""

    model_config = ConfigDict(extra="allow")

    epochs: int = Field(ge=0)
    loss: str = Field(min_length=1)
    augmentation: str | list[str] = "none"
    seed: int


class TrainingStatistics(_Strict):
    """Mean vector and covariance of the card's bands over its training pixels, in physical units
    (``tasks.core.moments``); ``models.cards.domain_check`` compares each scene's with them."""

    bands: list[str]
    n_px: int = Field(ge=1)
    mean: list[FiniteFloat]
    covariance: list[list[FiniteFloat]]
    pixels: str = ""  # which pixels were counted

    @model_validator(mode="after")
    def _check(self) -> "TrainingStatistics":
        k = len(self.bands)
        if len(self.mean) != k or len(self.covariance) != k or any(len(r) != k for r in self.covariance):
            raise InputError(f"training_statistics: mean and covariance need {k} values per band of "
                             f"{self.bands}")
        return self


class InferenceTolerance(_Strict):
    """How far a reduced-precision forward pass (CUDA float16/bfloat16 autocast, CPU bfloat16) may
    move this network's probabilities from its float32 ones on validation patches
    (``models.accel.precision_within_tolerance``); beyond it the scan runs in float32."""

    max_abs_prob: float = Field(default=DEFAULT_MAX_ABS_PROB, gt=0.0, le=1.0)
    max_flip_fraction: float = Field(default=DEFAULT_MAX_FLIP_FRACTION, ge=0.0, le=1.0)


class ModelCard(_Strict):
    """The model card of one trained network (``<name>.json`` next to ``<name>.safetensors``)."""

    kind: Literal["model"] = "model"
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    version: str = Field(min_length=1)
    arch: str
    encoder: str
    bands: list[str]
    input_transform: InputTransform
    fill: dict[str, str] = Field(default_factory=dict)
    patch_size: int = Field(default=128, ge=32)
    threshold: float = Field(ge=0.0, le=1.0)
    trained_on: TrainedOn
    metrics: dict[str, dict[str, FiniteFloat]] = Field(default_factory=dict)
    training: Training
    training_statistics: TrainingStatistics | None = None  # absent on cards trained before issue 21
    inference_tolerance: InferenceTolerance | None = None  # None: models.accel's defaults
    created: str = Field(default_factory=utc_now_iso)
    weights_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    weights_dtype: Literal["float32", "float16"] = "float32"
    description: str = ""

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        return canonical_arch(v)

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, v: str) -> str:
        return check_encoder(v)

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: list[str]) -> list[str]:
        canon = [normalize_band_name(b) for b in v]
        ordered = list(validate_bands(canon))
        if canon != ordered:
            raise InputError(f"bands {canon} are not in contract order; list them as {ordered} "
                             f"(order {' '.join(BAND_NAMES)}) and order input_transform the same way")
        return canon

    @field_validator("training_statistics")
    @classmethod
    def _statistics(cls, v: TrainingStatistics | None, info: ValidationInfo) -> TrainingStatistics | None:
        bands = info.data.get("bands")
        if v is not None and bands is not None and not set(v.bands) <= set(bands):
            raise InputError(f"training_statistics names bands the card does not read: "
                             f"{sorted(set(v.bands) - set(bands))}")
        return v

    @field_validator("fill")
    @classmethod
    def _fill(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        bands = info.data.get("bands")  # absent when the bands failed validation
        fill = {}
        for band, policy in v.items():
            key = normalize_band_name(band)
            if bands is not None and key not in bands:
                raise InputError(f"fill names {band!r}, which is not one of the card's bands {bands}")
            if not policy.strip():
                raise InputError(f"fill policy for {key} is empty")
            fill[key] = policy
        return fill

    @field_validator("created")
    @classmethod
    def _created(cls, v: str) -> str:
        try:
            datetime.fromisoformat(v)
        except ValueError:
            raise InputError(f"created {v!r} is not an ISO 8601 date-time "
                             "(e.g. 2024-05-01T12:00:00+00:00)") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        if self.input_transform.n_bands != len(self.bands):
            raise InputError(f"input_transform has {self.input_transform.n_bands} value(s) per list "
                             f"but the card has {len(self.bands)} band(s) {self.bands}")
        # DeepLabV3+ runs its encoder at output stride 16; smp refuses other sides.
        if self.arch == "DeepLabV3Plus" and self.patch_size % 16:
            raise InputError(f"patch_size {self.patch_size} must be a multiple of 16 for "
                             "DeepLabV3Plus")
        return self

    @property
    def in_channels(self) -> int:
        """Number of input channels of the network (one per band, fewer with PCA)."""
        return self.input_transform.n_outputs

    @property
    def model_ref(self) -> str:
        """``name@<first 12 hex of the weights' sha256>``, recorded with every prediction."""
        return f"{self.name}@{self.weights_sha256[:12]}"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_card(path: str | Path) -> ModelCard:
    """Read and validate a model card file (without touching the weights).

    Args:
        path: the ``.json`` card.

    Returns:
        The validated ``ModelCard``.

    Raises:
        CheckpointError: the file is missing, not JSON, or not a valid model card.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model card {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"model card {path} is not JSON text (not UTF-8); a card is the "
                              "<name>.json file written by save_checkpoint") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"model card {path} is not valid JSON ({exc.msg} at line {exc.lineno} "
                              f"column {exc.colno})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"model card {path} must hold a JSON object, found "
                              f"{type(data).__name__}")
    if data.get("kind", "model") != "model":
        raise CheckpointError(f"{path} is a {data.get('kind')!r} card, not a single model card; "
                              "load ensembles with models.ensemble")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise CheckpointError(f"model card {path} is invalid: {_summarize_validation(exc)}; fix the "
                              "card (format: docs/contracts.md section 4)") from None


def _check_safetensors_header(path: Path) -> None:
    """Refuse anything that is not a safetensors file, without unpickling it.

    The header is validated first: a real safetensors file may start with byte 0x80 (the low byte of
    its header length), so the first bytes alone cannot tell a pickle apart. Only a file that fails
    the header check is described as a pickle when it looks like one.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = None
        if 2 <= n <= min(size - 8, _MAX_HEADER_BYTES):
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                header = None
    if isinstance(header, dict):
        return
    # torch.save writes a zip archive (PK..) since torch 1.6, a raw pickle (0x80 proto) before.
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is not a safetensors file: it is a PyTorch pickle (torch.save) file, which "
            "is never loaded because unpickling can run code; on a machine you trust, load it "
            "and re-export it with models.checkpoint.save_checkpoint"
        )
    raise CheckpointError(f"{path} is not a safetensors file (no valid JSON header); write "
                          "checkpoints with models.checkpoint.save_checkpoint")


def _state_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    """Describe key and shape differences between two state dicts ('' when they agree)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} vs {tuple(expected[k].shape)} expected"
              for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) missing from the weights, e.g. "
                     f"{', '.join(missing[:_SHOW_KEYS])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. "
                     f"{', '.join(unexpected[:_SHOW_KEYS])}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:_SHOW_KEYS])}")
    return "; ".join(parts)


def _build_from_card(card: ModelCard) -> torch.nn.Module:
    return build_model(card.arch, card.encoder, in_channels=card.in_channels)


def save_checkpoint(
    model: torch.nn.Module,
    card: ModelCard,
    directory: str | Path,
    *,
    dtype: Literal["float32", "float16"] = "float32",
) -> tuple[Path, Path]:
    """Write ``<directory>/<card.name>.safetensors`` and ``<card.name>.json``.

    Floating-point tensors are stored as ``dtype``; integer buffers (BatchNorm counters) keep
    theirs. The card written gets ``weights_sha256`` and ``weights_dtype`` filled in; the ``card``
    object passed in is not modified. Both files are written under temporary names in the same
    folder and renamed into place, so a failure leaves no file under a final name.

    Args:
        model: the trained network; its state dict must fit ``build_model(card.arch,
            card.encoder, in_channels=len(card.bands))``.
        card: the model card.
        directory: output folder (created if missing).
        dtype: ``"float32"`` or ``"float16"``.

    Returns:
        ``(weights_path, card_path)``.

    Raises:
        InputError: unknown dtype.
        CheckpointError: the model's state dict does not fit the card's arch/encoder/bands.
    """
    if dtype not in WEIGHTS_DTYPES:
        raise InputError(f"dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {dtype!r}")
    from safetensors.torch import save_file

    target = _TORCH_DTYPES[dtype]
    state = {}
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu")
        t = t.to(target) if t.is_floating_point() else t
        state[key] = t.contiguous().clone()  # safetensors refuses shared or strided storage
    mismatch = _state_mismatch(_build_from_card(card).state_dict(), state)
    if mismatch:
        raise CheckpointError(f"cannot save {card.name}: the model does not match the card "
                              f"({card.arch}, encoder {card.encoder}, {card.in_channels} band(s)): "
                              f"{mismatch}")

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = folder / f"{card.name}{WEIGHTS_SUFFIX}"
    card_path = folder / f"{card.name}{CARD_SUFFIX}"
    # The weights are renamed into place first and the card last (the outer atomic_write), so a card
    # is never beside weights it does not describe; when the card's rename fails the new weights go.
    # Temporary names are hidden and of this process (.NAME.PID-RANDOM.tmp.json): list_checkpoints
    # skips them, and two processes saving one name never write into the same file.
    weights_in_place = False
    try:
        with atomic_write(card_path, unique=True) as tmp_card:
            with atomic_write(weights_path, unique=True) as tmp_weights:
                # One metadata entry only: safetensors writes metadata from an unordered map, so several
                # entries come out in a different order on each save and the file's sha256 would change
                # with identical weights. The JSON string inside is key-sorted.
                save_file(state, str(tmp_weights), metadata={"landslide_pipeline": json.dumps(
                    {"format": "pt", "name": card.name, "arch": card.arch, "encoder": card.encoder,
                     "bands": list(card.bands)}, sort_keys=True)})
                with open(tmp_weights, "rb+") as f:
                    os.fsync(f.fileno())
                data = card.model_dump(mode="json")
                data.update(weights_sha256=sha256_file(tmp_weights), weights_dtype=dtype)
                final_card = ModelCard.model_validate(data)
                with open(tmp_card, "w", encoding="utf-8") as f:
                    f.write(final_card.model_dump_json(indent=2) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                for tmp in (tmp_weights, tmp_card):  # checkpoints are shared: 0644 whatever the umask
                    os.chmod(tmp, 0o644)
            weights_in_place = True
    except BaseException:
        if weights_in_place:
            weights_path.unlink(missing_ok=True)
        raise
    return weights_path, card_path


def load_checkpoint(ref: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[torch.nn.Module, ModelCard]:
    """Load a checkpoint after checking that card and weights belong together.

    Args:
        ref: path to the ``.json`` card or the ``.safetensors`` weights, or a bare name in
            ``models/checkpoints/``.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:0"``, a ``torch.device``).

    Returns:
        ``(model, card)``: the network in eval mode on ``device`` with float32 parameters (fp16
        weights are upcast), and its card.

    Raises:
        CheckpointError: card missing, not JSON or invalid; weights missing or not safetensors
            (pickles are refused, never unpickled); sha256 of the weights differs from the card's;
            the weights' keys or shapes do not fit the network the card describes.
        InputError: the device is unknown or not available.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card_path = resolve_checkpoint(ref)
    card = read_card(card_path)
    weights_path = card_path.with_suffix(WEIGHTS_SUFFIX)
    if not weights_path.is_file():
        raise CheckpointError(f"weights {weights_path} not found for card {card_path}; the "
                              f"{WEIGHTS_SUFFIX} file must sit next to the card with the same name")
    _check_safetensors_header(weights_path)
    if not card.weights_sha256:
        raise CheckpointError(f"card {card_path} has no weights_sha256; write checkpoints with "
                              "models.checkpoint.save_checkpoint")
    digest = sha256_file(weights_path)
    if digest != card.weights_sha256:
        raise CheckpointError(f"sha256 mismatch: {weights_path} has {digest[:12]}..., card "
                              f"{card_path} expects {card.weights_sha256[:12]}...; the weights were "
                              "modified or belong to another card: re-export both with save_checkpoint")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {exc}") from None
    try:
        model = _build_from_card(card)
    except InputError as exc:
        raise CheckpointError(f"card {card_path}: {exc}") from None
    expected = model.state_dict()
    mismatch = _state_mismatch(expected, tensors)
    if mismatch:
        raise CheckpointError(f"weights {weights_path} do not fit the network of card {card_path} "
                              f"({card.arch}, encoder {card.encoder}, {card.in_channels} band(s)): "
                              f"{mismatch}; the card's arch, encoder and bands must be those of the "
                              "network that produced the weights")
    for key, value in tensors.items():
        want = expected[key].dtype
        if value.is_floating_point() and value.dtype != want:
            tensors[key] = value.to(want)  # fp16 storage -> the model's fp32
    model.load_state_dict(tensors, strict=True)
    model.eval()
    try:
        model.to(torch.device(device))
    except (RuntimeError, AssertionError, TypeError) as exc:
        raise InputError(f"cannot put the model on device {device!r}: {exc}; use 'cpu' or an "
                         "available 'cuda:N'") from None
    return model, card


__all__ = [
    "CHECKPOINT_DIR",
    "InputTransform",
    "ModelCard",
    "TrainedOn",
    "Training",
    "list_checkpoints",
    "load_checkpoint",
    "read_card",
    "resolve_checkpoint",
    "save_checkpoint",
    "sha256_file",
]


class CardFields:
    """The Detector fields a network's card holds (for detectors with a ``card`` attribute)."""

    card: ModelCard

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def ref(self) -> str:
        return self.card.model_ref

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.card.bands)

    @property
    def threshold(self) -> float:
        return float(self.card.threshold)

    @property
    def patch_size(self) -> int:
        return int(self.card.patch_size)
