"""Block jobs: inference of one block of the analysis grid, restartable and distributable.

A block job carries paths, a window and a detector *spec* (never arrays or models), so it can run
in this process, in a Dask worker on this machine, or on a remote cluster that sees the same
files. Each finished block leaves ``blocks/b_<row>_<col>.tif`` (probability and entropy of its
core) and a completion record ``b_<row>_<col>.json`` carrying the run's fingerprint; a rerun of the
same run skips every block whose record matches, so an interrupted scan resumes where it stopped.
The blocks are then copied into ``prob.tif`` / ``uncertainty_raw.tif``; because every block blends
the global patch layout, the result does not depend on the block size or on where blocks ran.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from tasks.bands import BAND_NAMES, validate_bands
from tasks.outputs import WORK_COMPRESSION
from tasks.stitch import Stitcher, binary_entropy
from tasks.tiling import iter_blocks, iter_windows, read_patches, windows_intersect

log = logging.getLogger(__name__)

_DETECTORS: dict = {}  # per-process cache: a worker loads each checkpoint once


@dataclass(frozen=True)
class BlockJob:
    row: int
    col: int
    window: tuple[int, int, int, int]  # col_off, row_off, width, height of the block's core
    stack_path: str
    valid_path: str
    detector: str | None  # checkpoint spec or "index"; resolved in the worker
    device: str
    overlap: int
    batch_size: int
    blocks_dir: str
    fingerprint: str
    torch_threads: int | None = None

    @property
    def stem(self) -> str:
        return f"b_{self.row:04d}_{self.col:04d}"


def cached_detector(spec: str | None, device: str):
    """The detector of ``spec`` on ``device``, loaded once per process (the scan's inference step
    and every block job it runs here share it)."""
    from tasks.inference import load_detector

    key = (spec, device)
    if key not in _DETECTORS:
        _DETECTORS[key] = load_detector(spec, device)
    return _DETECTORS[key]


class BorderPatches:
    """Predictions of the patches that straddle block borders, kept until every block that needs
    them has taken them, so that blocks run one after another in one process predict each patch
    once (blocks on a Dask cluster run in other processes and predict such a patch once per block
    it touches: +6-9 % forward passes with 2048 px blocks).

    A taken prediction is the one a second forward pass would give: every forward pass has the same
    batch size (``blend_block`` pads short batches), a network's output for a patch then does not
    depend on the other patches of its batch (checked bitwise in ``tests/tasks/test_blocks_shared.py``;
    it does depend on the batch size), and every block adds its patches in the global layout's order,
    so outputs do not depend on which block predicted a patch. Memory: the patches along the
    borders of the blocks still to run, at most about two patch rows across the grid (an estimated
    20 MB for a full Sentinel-2 tile).
    """

    def __init__(self, windows: list[Window], blocks: list[Window]):
        rows = np.array([int(w.row_off) for w in windows])
        cols = np.array([int(w.col_off) for w in windows])
        heights = np.array([int(w.height) for w in windows])
        widths = np.array([int(w.width) for w in windows])
        uses = np.zeros(len(windows), dtype=np.int64)
        for b in blocks:  # the same test as windows_intersect, for all windows at once
            uses += ((cols < b.col_off + b.width) & (b.col_off < cols + widths)
                     & (rows < b.row_off + b.height) & (b.row_off < rows + heights))
        self._uses = {(int(rows[i]), int(cols[i])): int(uses[i]) for i in np.flatnonzero(uses > 1)}
        self._kept: dict[tuple[int, int], tuple] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def shared(self, key: tuple[int, int]) -> bool:
        """Whether another block (still to run) needs this patch too."""
        return key in self._uses

    def has(self, key: tuple[int, int]) -> bool:
        return key in self._kept

    def offer(self, key: tuple[int, int], entry: tuple) -> None:
        """Keep a fresh prediction for the other blocks that need it."""
        if self._uses.get(key, 0) > 1:
            self._kept[key] = entry
            self._uses[key] -= 1

    def take(self, key: tuple[int, int]) -> tuple:
        """A kept prediction; dropped once the last block that needs it has taken it."""
        entry = self._kept[key]
        self._uses[key] -= 1
        if self._uses[key] <= 0:
            del self._kept[key], self._uses[key]
        return entry


def blend_block(stack, valid, detector, block: Window, windows: list[Window], overlap: int,
                batch_size: int, border: BorderPatches | None = None,
                ) -> tuple[np.ndarray, np.ndarray, set[tuple[int, int]], int]:
    """Blend every patch of the global layout touching ``block``; return its core probability, its
    core uncertainty, the patches blended (global row/col offsets) and the forward passes (patches
    the network ran on, short batches' padding included).

    The uncertainty is the detector's own per-pixel uncertainty blended like the probability when
    it has one (an ensemble: std of member probabilities), else the predictive entropy (bits) of
    the blended probability. ``border`` (blocks run in this process) supplies the patches an earlier
    block predicted and keeps the ones later blocks need.
    """
    size = detector.patch_size
    band_idx = [BAND_NAMES.index(b) for b in validate_bands(detector.bands)]
    sel = [w for w in windows if windows_intersect(w, block)]
    r0 = min(int(w.row_off) for w in sel)
    c0 = min(int(w.col_off) for w in sel)
    r1 = max(int(w.row_off + w.height) for w in sel)
    c1 = max(int(w.col_off + w.width) for w in sel)
    stitcher = Stitcher(r1 - r0, c1 - c0, size, overlap)
    own_unc = hasattr(detector, "predict_with_uncertainty")
    unc_stitcher = Stitcher(r1 - r0, c1 - c0, size, overlap) if own_unc else None
    keys = [(int(w.row_off), int(w.col_off)) for w in sel]
    to_predict = [w for w, key in zip(sel, keys) if border is None or not border.has(key)]
    # patches are added in the layout's order whoever predicted them, so every pixel sums the same
    # values in the same order (bitwise the same result for any block size or split of the work)
    ready: dict[tuple[int, int], tuple | None] = {}  # None: an empty patch (no valid pixel)
    predicted: set[tuple[int, int]] = set()
    n_added = 0

    def add_ready() -> None:
        nonlocal n_added
        while n_added < len(sel):
            key, w = keys[n_added], sel[n_added]
            if key in ready:
                entry = ready.pop(key)
            elif border is not None and border.has(key):
                entry = border.take(key)
            else:
                return  # its batch has not been predicted yet
            n_added += 1
            if entry is None:
                continue
            prob, unc, ok = entry
            predicted.add(key)
            local = Window(w.col_off - c0, w.row_off - r0, w.width, w.height)
            stitcher.add(local, prob, ok)
            if unc_stitcher is not None:
                unc_stitcher.add(local, unc, ok)

    def batches():
        """(windows read, their non-empty patches): batch_size patches each, fewer in the last."""
        start = 0
        while start < len(to_predict):
            taken, patches = [], []
            while len(patches) < batch_size and start < len(to_predict):
                more = to_predict[start:start + batch_size - len(patches)]
                start += len(more)
                taken += more
                patches += read_patches(stack, valid, more, band_idx, size)
            yield taken, patches

    n_forward = 0
    for batch_windows, patches in batches():
        for w in batch_windows:
            ready[(int(w.row_off), int(w.col_off))] = None
        if patches:
            # every forward pass gets exactly batch_size patches (a short batch repeats its first
            # patch): a network's output for a patch depends on the batch size, not on the other
            # patches in it, so a patch gets the same bits whichever block or batch it falls in
            rows = [*range(len(patches)), *[0] * (batch_size - len(patches))]
            batch = np.stack([patches[i].data for i in rows])
            ok = np.stack([patches[i].valid for i in rows])
            if own_unc:
                prob, unc = detector.predict_with_uncertainty(batch, ok)
            else:
                prob, unc = detector.predict(batch, ok), None
            n_forward += len(batch)  # padding included: the network ran on it
            for j, patch in enumerate(patches):
                key = (int(patch.window.row_off), int(patch.window.col_off))
                ready[key] = (prob[j], None if unc is None else unc[j], patch.valid)
                if border is not None and border.shared(key):  # a copy: not the whole batch
                    border.offer(key, (prob[j].copy(), None if unc is None else unc[j].copy(),
                                       patch.valid))
        add_ready()
    add_ready()
    br, bc = int(block.row_off) - r0, int(block.col_off) - c0
    core = stitcher.result()[br:br + int(block.height), bc:bc + int(block.width)]
    unc_core = (unc_stitcher.result()[br:br + int(block.height), bc:bc + int(block.width)]
                if unc_stitcher is not None else binary_entropy(core))
    return core, unc_core, predicted, n_forward


def block_record(job: BlockJob) -> dict | None:
    """The completion record of a finished block of this run, else None."""
    path = Path(job.blocks_dir) / f"{job.stem}.json"
    if not path.exists() or not (Path(job.blocks_dir) / f"{job.stem}.tif").exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("fingerprint") == job.fingerprint else None


def run_block(job: BlockJob, border: BorderPatches | None = None) -> dict:
    """Predict one block (or skip it if its completion record matches); return its record.

    ``border``: shared border-patch predictions of the blocks run in this process (see
    :class:`BorderPatches`); None on a Dask worker.
    """
    done = block_record(job)
    if done is not None:
        return {**done, "skipped": True}
    t0 = time.perf_counter()
    if job.torch_threads:
        import torch

        torch.set_num_threads(job.torch_threads)
    detector = cached_detector(job.detector, job.device)
    forward_before = detector.forward_s
    block = Window(*job.window)
    from tasks.scan_steps import gdal_env  # the same GDAL cache bound in Dask workers

    with gdal_env(), rasterio.open(job.stack_path) as stack, rasterio.open(job.valid_path) as valid:
        windows = list(iter_windows(stack.height, stack.width, detector.patch_size, job.overlap))
        core, unc_core, predicted, n_forward = blend_block(stack, valid, detector, block, windows,
                                                           job.overlap, job.batch_size, border)
        profile = stack.profile.copy()
    blocks_dir = Path(job.blocks_dir)
    tif = blocks_dir / f"{job.stem}.tif"
    # Dask may run one block twice at once (a worker it declared dead still running it): each
    # attempt writes its own temporary file and renames it, so no attempt writes into another's.
    # A killed attempt's temporary file stays in .work, which publishing removes.
    attempt = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = blocks_dir / f".{job.stem}.{attempt}.tmp.tif"
    profile.update(count=2, dtype="float32", nodata=np.nan, width=int(block.width),
                   height=int(block.height), transform=rasterio.windows.transform(block, profile["transform"]),
                   tiled=False, predictor=3, interleave="band", **WORK_COMPRESSION)
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(core, 1)
        dst.write(unc_core, 2)
    os.replace(tmp, tif)
    record = {"fingerprint": job.fingerprint, "block": [job.row, job.col], "window": list(job.window),
              "patches": sorted(predicted), "forward_passes": n_forward,
              "model_forward_s": detector.forward_s - forward_before,
              "seconds": time.perf_counter() - t0, "worker_pid": os.getpid()}
    rec_tmp = blocks_dir / f".{job.stem}.{attempt}.json.tmp"
    rec_tmp.write_text(json.dumps(record))
    os.replace(rec_tmp, blocks_dir / f"{job.stem}.json")  # written last: the block is complete
    return {**record, "skipped": False}


def make_jobs(stack_path: str, valid_path: str, detector: str | None, device: str, overlap: int,
              batch_size: int, block_px: int, blocks_dir: str | Path, fingerprint: str,
              torch_threads: int | None = None) -> list[BlockJob]:
    blocks_dir = Path(blocks_dir)
    blocks_dir.mkdir(parents=True, exist_ok=True)
    with rasterio.open(stack_path) as src:
        h, w = src.height, src.width
    return [BlockJob(row=int(b.row_off) // block_px, col=int(b.col_off) // block_px,
                     window=(int(b.col_off), int(b.row_off), int(b.width), int(b.height)),
                     stack_path=str(stack_path), valid_path=str(valid_path), detector=detector,
                     device=device, overlap=overlap, batch_size=batch_size,
                     blocks_dir=str(blocks_dir), fingerprint=fingerprint, torch_threads=torch_threads)
            for b in iter_blocks(h, w, block_px)]


def run_jobs(jobs: list[BlockJob], client=None, progress: bool = True) -> list[dict]:
    """Run block jobs here (``client`` None) or on a dask.distributed cluster; records in job order.

    Blocks whose completion record matches (a resumed run) are not submitted; their records come
    back with ``skipped`` True. A block whose worker dies (killed, out of memory) is run again on
    another worker by the scheduler, up to ``distributed.scheduler.allowed-failures`` times; the
    outputs do not depend on which worker ran a block.

    Raises:
        LandslideError: a block killed its worker more often than the scheduler allows.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="blocks", unit="block", disable=not progress, mininterval=1.0)
    records: dict[str, dict] = {}
    pending: list[BlockJob] = []
    for job in jobs:
        done = block_record(job)
        if done is not None:
            records[job.stem] = {**done, "skipped": True}
            bar.update(1)
        else:
            pending.append(job)
    if client is None and pending:
        # one after another in this process: patches on block borders are predicted once
        with rasterio.open(pending[0].stack_path) as src:
            height, width = src.height, src.width
        size = cached_detector(pending[0].detector, pending[0].device).patch_size
        border = BorderPatches(list(iter_windows(height, width, size, pending[0].overlap)),
                               [Window(*job.window) for job in pending])
        for job in pending:
            records[job.stem] = run_block(job, border)
            bar.update(1)
    elif client is not None and pending:
        from distributed import KilledWorker, as_completed

        futures = client.map(run_block, pending, pure=False, retries=2,
                             key=[f"block-{job.fingerprint[:8]}-{job.stem}" for job in pending])
        by_key = {f.key: job.stem for f, job in zip(futures, pending)}
        completed = as_completed(futures)
        del futures  # as_completed holds them; each is released once its record is in hand
        try:
            for future in completed:
                # A retry of a block another attempt of this run finished reports it as skipped;
                # it was still computed by this run, not resumed from an earlier one.
                records[by_key[future.key]] = {**future.result(), "skipped": False}
                future.release()
                bar.update(1)
        except KilledWorker as exc:
            from tasks.errors import LandslideError

            raise LandslideError(
                f"block {by_key.get(exc.task, exc.task)}: every Dask worker that ran it died "
                f"({exc.allowed_failures + 1} tries; out of memory?): use a smaller --block-px or "
                f"workers with more memory; the same command then resumes from the finished "
                f"blocks") from exc
    bar.close()
    return [records[job.stem] for job in jobs]


def assemble(jobs: list[BlockJob], prob_path: str | Path, unc_path: str | Path) -> None:
    """Copy every block's core into the tiled prob/uncertainty rasters (one block in memory)."""
    prob_path, unc_path = Path(prob_path), Path(unc_path)
    with rasterio.open(jobs[0].stack_path) as src:
        profile = src.profile.copy()
    profile.update(count=1, dtype="float32", nodata=np.nan, tiled=True, blockxsize=256,
                   blockysize=256, predictor=3, interleave="band", **WORK_COMPRESSION)
    tmp_p, tmp_u = prob_path.with_suffix(".tmp.tif"), unc_path.with_suffix(".tmp.tif")
    with rasterio.open(tmp_p, "w", **profile) as dp, rasterio.open(tmp_u, "w", **profile) as du:
        dp.set_band_description(1, "landslide probability")
        du.set_band_description(1, "predictive entropy (bits)")
        for job in jobs:
            with rasterio.open(Path(job.blocks_dir) / f"{job.stem}.tif") as b:
                win = Window(*job.window)
                dp.write(b.read(1), 1, window=win)
                du.write(b.read(2), 1, window=win)
    os.replace(tmp_p, prob_path)
    os.replace(tmp_u, unc_path)


def job_dict(job: BlockJob) -> dict:
    return asdict(job)
