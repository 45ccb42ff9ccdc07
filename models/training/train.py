"""The training loop for every dataset layout (scene, L4S, chips).

Random 128 x 128 crops of a labelled scene (or of one patch of a patch mosaic), augmented by
:mod:`models.training.augment` (flips, 90-degree rotations, optional zoom and rotation, Gaussian noise) plus a
brightness gain shared by the spectral bands and a DEM offset, a loss from :mod:`models.training.losses`
(ignore = 255 never counts), validation on a separate split (a strip held out by location, or the
official validation list) after every epoch, and the checkpoint chosen on the validation F1 only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.accel import FP32, keep_freed_memory, training_precision
from models.checkpoint import (
    InputTransform,
    ModelCard,
    PCAProjection,
    read_card,
    resolve_checkpoint,
    save_checkpoint,
)
from models.data.datasets import SceneData, file_list_sha256, load_scene_dataset, load_training_data
from models.detectors import select_device
from models.metrics import IGNORE, evaluate_probabilities
from models.registry import ModelSpec, build_model, parse_model_name
from models.training.augment import AugmentConfig, augment
from models.training.augment import describe as describe_augment
from models.training.losses import CompositeLoss, build_loss, class_weights, describe_loss
from models.training.run_log import RunLog
from models.training.state import (
    TrainingState,
    check_same_config,
    load_state,
    numpy_rng_state,
    restore_numpy_rng,
    save_state,
)
from tasks.core.bands import SPECTRAL_BAND_NAMES, band_index, validate_bands
from tasks.core.blend import predict_array
from tasks.core.errors import InputError
from tasks.core.files import atomic_write, utc_now_iso
from tasks.core.moments import moments_of
from tasks.core.tiling import pad_to

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    model: str = "unet-mobilenet_v2"
    bands: tuple[str, ...] = ("B02", "B03", "B04", "SLOPE", "DEM")
    epochs: int = 12
    steps_per_epoch: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    patch_size: int = 128
    loss: str = "bce+dice"  # models.training.losses spec, e.g. "0.5*bce+dice", "focal+lovasz", "tversky"
    pos_weight: float | None = None  # None: negatives / positives of the training labels, capped at 10
    brightness_jitter: float = 0.1  # multiplicative, one gain for all spectral bands
    noise_std: float = 0.03  # Gaussian noise in normalized units
    scale_range: tuple[float, float] | None = None  # zoom (min, max), e.g. (0.8, 1.25); None: off
    rotate_deg: float = 0.0  # arbitrary rotation +- this angle (corners ignored); 0: off
    spectral_jitter: float = 0.0  # per-band gain 1 +- j on the spectral bands; 0: off
    pca_components: int | None = None  # replace the spectral bands by this many principal components
    dem_jitter_m: float = 50.0  # random elevation offset per crop: the model must not memorize altitude
    min_labelled_fraction: float = 0.3
    threads: int | None = None
    save_dtype: str = "float16"
    threshold: float = 0.5
    patience: int | None = None  # stop after this many epochs without a better validation F1
    device: str = "auto"  # auto (CUDA if present), cpu, cuda, cuda:N; AMP on CUDA only


@dataclass
class _Compute:
    """Where and in which precision a run computes: float32 on the CPU (as before, bit for bit);
    on CUDA mixed precision (bfloat16 autocast where supported, else float16 with a gradient
    scaler). ``models.accel.training_precision`` decides."""

    device: torch.device
    precision: str = FP32
    scaler: "torch.amp.GradScaler | None" = None
    malloc: dict | None = None  # on the CPU: the allocator setting (models.accel.keep_freed_memory)

    @classmethod
    def of(cls, device: str) -> "_Compute":
        dev = select_device(device)
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        precision, scaled = training_precision(dev.type, bf16)
        # on the CPU each step page-faulted its activations and gradients in again (66,000-69,000
        # faults per step of 16 patches; 1.30 -> 1.44-1.50 steps/s with the setting)
        malloc = keep_freed_memory().as_dict() if dev.type == "cpu" else None
        return cls(dev, precision, torch.amp.GradScaler("cuda") if scaled else None, malloc)

    def autocast(self):
        if self.precision == FP32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.precision))

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def record(self) -> dict:
        return {"device_used": str(self.device), "precision": self.precision,
                "grad_scaler": self.scaler is not None, **({"malloc": self.malloc} if self.malloc else {})}


@dataclass
class _InMemoryDetector:
    """Adapter so validation uses the same tiling/stitching code as a scan."""

    model: torch.nn.Module
    transform: InputTransform
    bands: tuple[str, ...]
    patch_size: int = 128
    threshold: float = 0.5
    forward_s: float = 0.0
    name: str = "training"
    ref: str = "training"

    def predict(self, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(self.transform.apply_filled(batch)))
        device = next(self.model.parameters()).device
        with torch.inference_mode():  # float32 on every device: selection compares epochs exactly
            return torch.sigmoid(self.model(x.to(device))[:, 0]).cpu().numpy()

    def describe(self) -> dict:
        return {}


def augment_config(cfg: TrainConfig, bands: tuple[str, ...],
                   mean_over_std: np.ndarray) -> AugmentConfig:
    """The per-patch augmentation a training config asks for (brightness and DEM offset aside).

    With PCA the spectral bands are gone from the network input, so no per-band gain applies."""
    spectral = tuple(i for i, b in enumerate(bands) if b in SPECTRAL_BAND_NAMES)
    if cfg.pca_components:
        spectral = ()
    return AugmentConfig(
        flip=True, rot90=True,
        scale_range=tuple(cfg.scale_range) if cfg.scale_range else None,
        rotate_deg=cfg.rotate_deg, noise_std=cfg.noise_std,
        spectral_jitter=cfg.spectral_jitter if spectral else 0.0,
        spectral_bands=spectral if cfg.spectral_jitter else (),
        spectral_mean_over_std=(tuple(float(mean_over_std[i]) for i in spectral)
                                if cfg.spectral_jitter and spectral else ()))


def fit_pca(transform: InputTransform, data: SceneData, bands: tuple[str, ...],
            n_components: int, max_pixels: int = 2_000_000, seed: int = 0) -> InputTransform:
    """``transform`` plus a whitened PCA of its standardized spectral bands, fitted on the labelled,
    finite pixels of ``data`` (the training split only)."""
    spectral = [i for i, b in enumerate(bands) if b in SPECTRAL_BAND_NAMES]
    if len(spectral) < 2:
        raise InputError(f"PCA needs at least 2 spectral bands, got {[bands[i] for i in spectral]}")
    if not 1 <= n_components <= len(spectral):
        raise InputError(f"--pca {n_components}: choose 1..{len(spectral)} components for the "
                         f"{len(spectral)} spectral bands")
    idx = [band_index(bands[i]) for i in spectral]
    values = transform.apply(data.image[[band_index(b) for b in bands]])[spectral]
    values = values.reshape(len(spectral), -1)
    labelled = (data.labels != IGNORE).reshape(-1) if data.labels is not None else True
    keep = labelled & np.isfinite(values).all(axis=0) & np.isfinite(data.image[idx]).all(axis=0).reshape(-1)
    samples = values[:, keep].T.astype(np.float64)
    if samples.shape[0] > max_pixels:
        samples = samples[np.random.default_rng(seed).choice(samples.shape[0], max_pixels, replace=False)]
    if samples.shape[0] < 10 * len(spectral):
        raise InputError(f"too few labelled pixels ({samples.shape[0]}) to fit a PCA")
    samples -= samples.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov(samples, rowvar=False))
    order = np.argsort(eigval)[::-1][:n_components]
    eigval, eigvec = np.maximum(eigval[order], 1e-12), eigvec[:, order]
    components = (eigvec / np.sqrt(eigval)).T  # whitened: unit variance on the training pixels
    pca = PCAProjection(bands=spectral, components=components.tolist(),
                        explained_variance_ratio=(eigval / np.cov(samples, rowvar=False).trace()).tolist())
    return transform.model_copy(update={"pca": pca})


def band_stats(data: SceneData, bands: tuple[str, ...]) -> tuple[list[float], list[float]]:
    """Per-band mean/std over finite, labelled pixels of the training scene."""
    means, stds = [], []
    labelled = data.labels != IGNORE if data.labels is not None else np.ones(data.valid.shape, bool)
    for b in bands:
        values = data.image[band_index(b)][labelled]
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise InputError(f"band {b} has no finite labelled pixel in the training data")
        means.append(float(values.mean()))
        stds.append(float(max(values.std(), 1e-3)))
    return means, stds


def training_statistics(data: SceneData, bands: tuple[str, ...]) -> dict:
    """The card's ``training_statistics``: mean vector and covariance of ``bands`` (physical units)
    over the labelled training pixels where every band is finite. ``models.cards.domain_check``
    compares a scene's with them."""
    labelled = data.labels != IGNORE if data.labels is not None else np.ones(data.valid.shape, bool)
    moments = moments_of(data.image[[band_index(b) for b in bands]][:, labelled], bands)
    if not moments.n_px:
        raise InputError(f"no labelled training pixel has every band of {', '.join(bands)}")
    return {**moments.to_json(), "pixels": "labelled pixels of the training split with every band finite"}


def add_training_statistics(card_ref: str | Path, train_dir: str | Path, layout: str = "scene",
                            split_list: str | None = None) -> Path:
    """Add ``training_statistics`` to a card trained before cards carried them, from its training split.

    The split must be the one the card was trained on: each band's recomputed mean and standard
    deviation must equal the card's input transform (to 0.1 %), else nothing is written.

    Returns:
        The card's path (rewritten atomically; the weights are untouched).

    Raises:
        InputError: the data does not reproduce the card's statistics, or the card uses PCA.
    """
    card_path = resolve_checkpoint(card_ref)
    card = read_card(card_path)
    bands = tuple(card.bands)
    data = load_training_data(train_dir, layout, split_list)
    data.require_bands(bands, "the card's bands")
    means, stds = band_stats(data, bands)
    t = card.input_transform
    want_mean = [(m - o) / s for m, o, s in zip(t.mean, t.offset, t.scale)]
    want_std = [sd / abs(s) for sd, s in zip(t.std, t.scale)]
    for band, got_m, got_s, m, sd in zip(bands, means, stds, want_mean, want_std):
        if abs(got_m - m) > 1e-3 * max(abs(m), sd) or abs(got_s - sd) > 1e-3 * sd:
            raise InputError(f"{train_dir} is not the training split of {card.name}: band {band} has "
                             f"mean {got_m:.4g} and std {got_s:.4g} there, the card {m:.4g} and {sd:.4g}")
    stats = training_statistics(data, bands)
    raw = json.loads(card_path.read_text(encoding="utf-8"))
    raw["training_statistics"] = stats
    ModelCard.model_validate(raw)  # the result must still be a valid card
    with atomic_write(card_path) as tmp:
        tmp.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return card_path


def _sample_crop(rng: np.random.Generator, labels: np.ndarray, size: int, min_frac: float,
                 pitch: int | None = None) -> tuple[int, int]:
    """A crop origin whose window holds at least ``min_frac`` labelled pixels (best of 30 tries).

    With ``pitch`` (a mosaic of independent patches) the crop stays inside one cell."""
    h, w = labels.shape
    best, best_frac = (0, 0), -1.0
    for _ in range(30):
        if pitch:
            cell_r = int(rng.integers(0, h // pitch)) * pitch
            cell_c = int(rng.integers(0, w // pitch)) * pitch
            r = cell_r + int(rng.integers(0, max(pitch - size, 0) + 1))
            c = cell_c + int(rng.integers(0, max(pitch - size, 0) + 1))
        else:
            r = int(rng.integers(0, max(h - size, 0) + 1))
            c = int(rng.integers(0, max(w - size, 0) + 1))
        frac = float(np.mean(labels[r:r + size, c:c + size] != IGNORE))
        if frac >= min_frac:
            return r, c
        if frac > best_frac:
            best, best_frac = (r, c), frac
    return best


def make_batch(rng: np.random.Generator, image_norm: np.ndarray, labels: np.ndarray,
               cfg: TrainConfig, spectral_idx: list[int], dem_idx: int | None,
               dem_std: float, mean_over_std: np.ndarray, aug: AugmentConfig,
               pitch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented batch: (B, C, S, S) float32 normalized inputs, (B, S, S) uint8 labels."""
    xs, ys = [], []
    size = cfg.patch_size
    for _ in range(cfg.batch_size):
        r, c = _sample_crop(rng, labels, size, cfg.min_labelled_fraction, pitch)
        x = pad_to(image_norm[:, r:r + size, c:c + size], size)
        y = labels[r:r + size, c:c + size]
        y = np.pad(y, [(0, size - y.shape[0]), (0, size - y.shape[1])], constant_values=IGNORE)
        x, y = augment(x, y, rng, aug)
        if spectral_idx and cfg.brightness_jitter:
            gain = 1.0 + rng.uniform(-cfg.brightness_jitter, cfg.brightness_jitter)
            # v' = gain * v in physical units is gain * x + (gain - 1) * mean / std once normalized
            x[spectral_idx] = (x[spectral_idx] * gain
                               + (gain - 1.0) * mean_over_std[spectral_idx, None, None])
        if dem_idx is not None and cfg.dem_jitter_m:
            x[dem_idx] += rng.uniform(-cfg.dem_jitter_m, cfg.dem_jitter_m) / dem_std
        xs.append(x.astype(np.float32, copy=False))
        ys.append(y)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def evaluate_model(model: torch.nn.Module, transform: InputTransform, bands: tuple[str, ...],
                   data: SceneData, threshold: float = 0.5) -> dict[str, float]:
    """Scan-style (tiled, blended) prediction over a scene and metrics over its labelled pixels."""
    model.eval()
    det = _InMemoryDetector(model, transform, bands)
    # independent patches (data.pitch): each cell is tiled on its own
    prob = predict_array(data.image, data.valid, det, cell_px=data.pitch or None)
    return evaluate_probabilities(prob, data.labels, threshold)


@dataclass(frozen=True)
class _TrainInputs:
    """What the training split gives the loop: the network input, the loss and the augmentation."""

    transform: InputTransform  # physical units -> network input (standardization, optional PCA)
    image_norm: np.ndarray  # (C, H, W) network input of the training image, nodata filled
    pos_weight: float  # weight of the landslide pixels in the loss
    loss_fn: CompositeLoss
    spectral_idx: list[int]  # spectral channels in the network input (the shared brightness gain)
    dem_idx: int | None  # the DEM channel in the network input; None without DEM
    dem_std_m: float  # the DEM's standard deviation on the training split (m); 1.0 without DEM
    mean_over_std: np.ndarray  # (bands,) float32 per-band mean / std
    aug: AugmentConfig
    statistics: dict  # the card's training_statistics (mean vector and covariance, physical units)


@dataclass
class _RunProgress:
    """Where a run stands: its numpy RNG, the finished epochs' rows and the best epoch so far."""

    rng: np.random.Generator
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None  # the weights of the best epoch
    best_f1: float = -1.0
    best_epoch: int = -1
    first_epoch: int = 1  # the next epoch to run


def train_scene_model(train_dir: str | Path, val_dir: str | Path, out_dir: str | Path, name: str,
                      cfg: TrainConfig = TrainConfig(), progress: bool = True,
                      report_dirs: dict[str, str | Path] | None = None,
                      run_dir: str | Path | None = None, resume: bool = True,
                      layout: str = "scene", train_list: str | None = None,
                      val_list: str | None = None) -> Path:
    """Train, select on validation F1, and save a checkpoint + card. Returns the card path.

    ``report_dirs`` (name -> scene-layout folder) are only scored for the card after training,
    never used for selection (e.g. the validation strip labelled by the reference alone).

    The run folder (default ``<out_dir>/<name>.run``) receives the per-epoch state (resume: an
    interrupted run started again with the same settings continues after its last finished
    epoch), ``metrics.csv``/``metrics.json``, ``curves.png`` and TensorBoard events.

    ``layout`` is ``scene`` (default), ``l4s`` (``train_dir``/``val_dir`` = the download root,
    ``train_list``/``val_list`` = official split lists) or ``chips``
    (see :func:`models.data.datasets.load_training_data`).
    """
    t_start = time.perf_counter()
    bands = _contract_bands(cfg)
    spec = parse_model_name(cfg.model)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    compute = _Compute.of(cfg.device)
    log.info("training on %s in %s%s", compute.device, compute.precision,
             " with a gradient scaler" if compute.scaler else "")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train = load_training_data(train_dir, layout, train_list)
    val = load_training_data(val_dir, layout, val_list)
    val.require_bands(bands, "--bands")
    inputs = _prepare_inputs(cfg, bands, train, train_dir)

    model = build_model(spec.arch, spec.encoder, in_channels=inputs.transform.n_outputs)
    model = model.to(compute.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr,
                                                total_steps=cfg.epochs * cfg.steps_per_epoch)
    run_dir = Path(run_dir) if run_dir is not None else Path(out_dir) / f"{name}.run"
    run_config = _run_config(cfg, train_dir, val_dir, layout, train_list, val_list)
    if compute.precision != FP32:  # an AMP run resumes only in the same precision
        run_config["amp"] = compute.precision
    run = _resume_run(run_dir, run_config, model, opt, sched, progress) if resume else None
    if run is None:
        run = _RunProgress(rng)
    _run_epochs(model, opt, sched, run, inputs, bands, train, val, cfg, run_dir, run_config, progress,
                compute)
    if run.best_state is None:
        raise InputError(f"{run_dir}: no finished epoch to select a checkpoint from (epochs={cfg.epochs})")

    _load_selected_weights(model, run.best_state, cfg.save_dtype)
    metrics = _score_splits(model, inputs.transform, bands, _report_splits(train, val, report_dirs),
                            cfg.threshold)
    files_sha256 = file_list_sha256([Path(f) for f in (*train.files, *val.files)])
    card = _model_card(name, spec, bands, cfg, inputs, run, train.provenance, train_dir, val_dir,
                       files_sha256, metrics, run_dir, wall_s=round(time.perf_counter() - t_start, 1),
                       compute=compute.record())
    _, card_path = save_checkpoint(model, card, out_dir, dtype=cfg.save_dtype)
    return card_path


def _contract_bands(cfg: TrainConfig) -> tuple[str, ...]:
    """``cfg.bands``, checked to be known bands in contract order."""
    bands = validate_bands(cfg.bands)
    if tuple(cfg.bands) != bands:
        raise InputError(f"--bands must be in contract order: {' '.join(bands)}")
    return bands


def _prepare_inputs(cfg: TrainConfig, bands: tuple[str, ...], train: SceneData,
                    train_dir: str | Path) -> _TrainInputs:
    """The input transform (fitted on ``train``), the normalized training image, the loss and the
    augmentation of a run. Raises InputError when the training labels lack a class."""
    train.require_bands(bands, "--bands")
    idx = [band_index(b) for b in bands]
    means, stds = band_stats(train, bands)
    transform = InputTransform.from_stats(means, stds)
    if cfg.pca_components:
        transform = fit_pca(transform, train, bands, cfg.pca_components, seed=cfg.seed)
    image_norm = transform.apply_filled(train.image[idx])
    n_pos = int(np.sum(train.labels == 1))
    n_neg = int(np.sum(train.labels == 0))
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"the training labels in {train_dir} need both classes (landslide: "
                         f"{n_pos} px, background: {n_neg} px)")
    pos_weight = (cfg.pos_weight if cfg.pos_weight is not None
                  else class_weights(train.labels)["pos_weight"])
    loss_fn = build_loss(cfg.loss, pos_weight=pos_weight)
    # channel positions in the network input (PCA folds the spectral bands into components)
    spectral_idx = [transform.output_index(i) for i, b in enumerate(bands) if b in SPECTRAL_BAND_NAMES]
    spectral_idx = [i for i in spectral_idx if i is not None]
    dem_idx = transform.output_index(bands.index("DEM")) if "DEM" in bands else None
    dem_std_m = stds[bands.index("DEM")] if dem_idx is not None else 1.0
    mean_over_std = np.asarray(means, np.float32) / np.asarray(stds, np.float32)
    return _TrainInputs(transform, image_norm, pos_weight, loss_fn, spectral_idx, dem_idx, dem_std_m,
                        mean_over_std, augment_config(cfg, bands, mean_over_std),
                        training_statistics(train, bands))


def _config_record(cfg: TrainConfig) -> dict:
    """``cfg`` as a JSON-able dict (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def _run_config(cfg: TrainConfig, train_dir: str | Path, val_dir: str | Path, layout: str,
                train_list: str | None, val_list: str | None) -> dict:
    """The settings a resumed run must share with the saved one (the thread count aside)."""
    run_config = {**_config_record(cfg),
                  "train_dir": str(Path(train_dir).resolve()), "val_dir": str(Path(val_dir).resolve()),
                  "layout": layout, "train_list": train_list, "val_list": val_list}
    run_config.pop("threads", None)  # how many cores a run uses does not change its result
    run_config.pop("device", None)  # the precision used is (train_scene_model adds "amp")
    return run_config


def _resume_run(run_dir: Path, run_config: dict, model: torch.nn.Module, opt: torch.optim.Optimizer,
                sched: torch.optim.lr_scheduler.LRScheduler, progress: bool) -> _RunProgress | None:
    """Restore the run state saved in ``run_dir`` into ``model``, ``opt``, ``sched`` and torch's RNG, and
    return where it stood; None when there is none. Raises InputError when its settings differ."""
    saved = load_state(run_dir)
    if saved is None:
        return None
    check_same_config(saved.config, run_config, run_dir)
    model.load_state_dict(saved.model)
    opt.load_state_dict(saved.optimizer)
    sched.load_state_dict(saved.scheduler)
    rng = restore_numpy_rng(saved.numpy_rng)
    torch.set_rng_state(saved.torch_rng)
    log.info("resuming %s after epoch %d", run_dir, saved.epoch)
    if progress:
        tqdm.write(f"resuming from {run_dir} after epoch {saved.epoch}")
    return _RunProgress(rng=rng, history=saved.history, best_state=saved.best_model, best_f1=saved.best_f1,
                        best_epoch=saved.best_epoch, first_epoch=saved.epoch + 1)


def _run_epochs(model: torch.nn.Module, opt: torch.optim.Optimizer,
                sched: torch.optim.lr_scheduler.LRScheduler, run: _RunProgress, inputs: _TrainInputs,
                bands: tuple[str, ...], train: SceneData, val: SceneData, cfg: TrainConfig, run_dir: Path,
                run_config: dict, progress: bool, compute: _Compute | None = None) -> None:
    """Epochs ``run.first_epoch`` .. ``cfg.epochs`` (or until early stop): train, validate, keep the
    best epoch in ``run``, and write the metrics log and the run state to ``run_dir`` after each."""
    run_log = RunLog(run_dir)
    for epoch in range(run.first_epoch, cfg.epochs + 1):
        if cfg.patience is not None and run.best_epoch > 0 and epoch - run.best_epoch > cfg.patience:
            log.info("early stop: no better validation F1 for %d epochs", cfg.patience)
            break
        losses = _train_epoch(model, opt, sched, run.rng, inputs, train, cfg, epoch, progress, compute)
        val_metrics = evaluate_model(model, inputs.transform, bands, val, cfg.threshold)
        row = _epoch_row(epoch, losses, float(sched.get_last_lr()[0]), val_metrics)
        run.history.append(row)
        _log_epoch(row, cfg.epochs, progress)
        _keep_if_best(run, epoch, val_metrics["f1"], model)
        run_log.write(run.history)
        save_state(run_dir, TrainingState(
            epoch=epoch, model=model.state_dict(), best_model=run.best_state, optimizer=opt.state_dict(),
            scheduler=sched.state_dict(), numpy_rng=numpy_rng_state(run.rng),
            torch_rng=torch.get_rng_state(), best_f1=run.best_f1, best_epoch=run.best_epoch,
            history=run.history, config=run_config))
    run_log.close()


def _train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler, rng: np.random.Generator, inputs: _TrainInputs,
                 train: SceneData, cfg: TrainConfig, epoch: int, progress: bool,
                 compute: _Compute | None = None) -> list[float]:
    """``cfg.steps_per_epoch`` optimizer steps on random augmented crops of ``train``; the step losses.
    ``compute`` (None: the CPU in float32): the device, autocast and gradient scaler."""
    compute = compute or _Compute(torch.device("cpu"))
    model.train()
    losses = []
    bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}",
               disable=not progress, leave=False, mininterval=2.0)
    for _ in bar:
        x, y = make_batch(rng, inputs.image_norm, train.labels, cfg, inputs.spectral_idx, inputs.dem_idx,
                          inputs.dem_std_m, inputs.mean_over_std, inputs.aug, train.pitch)
        x, y = compute.to_device(x), compute.to_device(y)
        with compute.autocast():
            logits = model(x)[:, 0]
        loss = inputs.loss_fn(logits.float(), y)  # the loss in float32 (a no-op on the CPU path)
        opt.zero_grad(set_to_none=True)
        if compute.scaler is not None:  # float16: scaled gradients, steps skipped on inf/NaN
            compute.scaler.scale(loss).backward()
            compute.scaler.step(opt)
            compute.scaler.update()
        else:
            loss.backward()
            opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def _epoch_row(epoch: int, losses: list[float], lr: float, val_metrics: dict[str, float]) -> dict:
    """One row of the run's history: mean training loss, learning rate, validation metrics."""
    return {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": lr,
            **{f"val_{k}": val_metrics[k] for k in ("precision", "recall", "f1", "iou", "auc")}}


def _log_epoch(row: dict, epochs: int, progress: bool) -> None:
    """Log an epoch's row; also on the progress bar's stream when ``progress``."""
    log.info("epoch %d: loss %.4f val f1 %.3f iou %.3f auc %.3f", row["epoch"], row["train_loss"],
             row["val_f1"], row["val_iou"], row["val_auc"])
    if progress:
        tqdm.write(f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}  "
                   f"val f1 {row['val_f1']:.3f}  iou {row['val_iou']:.3f}  auc {row['val_auc']:.3f}")


def _keep_if_best(run: _RunProgress, epoch: int, val_f1: float, model: torch.nn.Module) -> None:
    """Record ``epoch`` and a copy of the weights in ``run`` when its validation F1 beats the best so far."""
    if val_f1 > run.best_f1:
        run.best_f1, run.best_epoch = val_f1, epoch
        run.best_state = copy.deepcopy(model.state_dict())


def _load_selected_weights(model: torch.nn.Module, best_state: dict, save_dtype: str) -> None:
    """Load the selected epoch's weights, rounded through float16 when they ship as float16 (so the
    card's metrics are those of the weights as shipped)."""
    model.load_state_dict(best_state)
    if save_dtype == "float16":
        model.load_state_dict({k: (v.half().float() if v.is_floating_point() else v)
                               for k, v in model.state_dict().items()})


def _report_splits(train: SceneData, val: SceneData,
                   report_dirs: dict[str, str | Path] | None) -> list[tuple[str, SceneData]]:
    """The card's scored splits: train and val, then each ``report_dirs`` scene (loaded here)."""
    # both named after the training labels (a val folder may carry no dataset.json of its own)
    reports = [(split_key("train", train.provenance), train), (split_key("val", train.provenance), val)]
    reports += [(key, load_scene_dataset(d)) for key, d in (report_dirs or {}).items()]
    return reports


def _score_splits(model: torch.nn.Module, transform: InputTransform, bands: tuple[str, ...],
                  reports: list[tuple[str, SceneData]], threshold: float) -> dict[str, dict]:
    """Split name -> the card's metrics of the model over that split (rounded to 4 decimals)."""
    metrics = {}
    for split, data in reports:
        m = evaluate_model(model, transform, bands, data, threshold)
        metrics[split] = {k: round(float(m[k]), 4) for k in
                          ("precision", "recall", "f1", "iou", "dice", "auc", "labelled_px")}
    return metrics


def _model_card(name: str, spec: ModelSpec, bands: tuple[str, ...], cfg: TrainConfig, inputs: _TrainInputs,
                run: _RunProgress, provenance: dict, train_dir: str | Path, val_dir: str | Path,
                files_sha256: str, metrics: dict[str, dict], run_dir: Path, wall_s: float,
                compute: dict | None = None) -> ModelCard:
    """The checkpoint's card: model, bands, transform, training data (``files_sha256``: of its files),
    metrics and training record."""
    return ModelCard(
        name=name, version="1", arch=spec.arch, encoder=spec.encoder, bands=list(bands),
        input_transform=inputs.transform,
        fill={b: "nodata pixels are filled with the band's training mean (0 after normalization)"
              for b in bands},
        patch_size=cfg.patch_size, threshold=cfg.threshold,
        trained_on={"dataset": provenance.get("name", str(train_dir)),
                    "split": f"train={Path(train_dir).name}, val={Path(val_dir).name} "
                             f"({provenance.get('split', 'held out by location')})",
                    "file_list_sha256": files_sha256,
                    "labels": provenance.get("labels", "see dataset.json"),
                    "attribution": provenance.get("attribution")},
        metrics=metrics,
        training_statistics=inputs.statistics,
        training={**_config_record(cfg),
                  "loss": describe_loss(cfg.loss, inputs.pos_weight),
                  "augmentation": f"random {cfg.patch_size} px crops; {describe_augment(inputs.aug)}; "
                                  f"brightness x(1+-{cfg.brightness_jitter}) shared by the "
                                  f"spectral bands; DEM offset +-{cfg.dem_jitter_m} m",
                  "selected_epoch": run.best_epoch, "selection": "best validation F1 at the threshold",
                  "run_dir": str(run_dir),
                  "history": run.history, "wall_s": wall_s, **(compute or {}),
                  "torch": torch.__version__},
        created=utc_now_iso(),
        weights_sha256="", weights_dtype=cfg.save_dtype,
        description=_card_description(spec, provenance),
    )


def _card_description(spec: ModelSpec, provenance: dict) -> str:
    """What the card's metrics mean: weak-label agreement, or scores against the dataset's labels."""
    model = f"{spec.arch} {spec.encoder}"
    if _is_weak(provenance):
        return (f"{model} trained on WEAK labels (agreement of a published CNN's predictions and a "
                "spectral-terrain rule), not on ground truth; metrics are against those weak "
                "labels. " + provenance.get("summary", ""))
    labels = provenance.get("labels", "the labels of the training dataset (see its dataset.json)")
    return (f"{model} trained on {labels}. Metrics are against those labels on the dataset's "
            f"splits; val is held out in space and chose the epoch (so its figures are somewhat "
            f"optimistic). " + provenance.get("summary", "")).strip()


def split_key(split: str, provenance: dict) -> str:
    """A card's metrics key for ``split`` (train / val): named after what the labels are, so weak
    labels say so (``val_weak_labels``) and real labels keep the plain name (``val``)."""
    return f"{split}_weak_labels" if _is_weak(provenance) else split


def _is_weak(provenance: dict) -> bool:
    return "weak" in str(provenance.get("labels", "")).lower()
