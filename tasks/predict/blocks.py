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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from models.detectors import cached_detector
from tasks.core.blend import BorderPatches, RasterPatches, blend_patches
from tasks.core.errors import LandslideError
from tasks.core.files import (
    WORK_COMPRESSION,
    atomic_write,
    atomic_write_json,
    compressed_like,
    work_raster_profile,
)
from tasks.core.gdal import gdal_env
from tasks.core.tiling import iter_blocks, iter_windows

log = logging.getLogger(__name__)


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
    with gdal_env(), rasterio.open(job.stack_path) as stack, rasterio.open(job.valid_path) as valid:
        windows = list(iter_windows(stack.height, stack.width, detector.patch_size, job.overlap))
        core, unc_core, predicted, n_forward = blend_patches(
            RasterPatches(stack, valid), detector, block, windows, job.overlap, job.batch_size,
            border)
        profile = compressed_like({
            **stack.profile, "driver": "GTiff", "count": 2, "dtype": "float32", "nodata": np.nan,
            "width": int(block.width), "height": int(block.height),
            "transform": rasterio.windows.transform(block, stack.transform), "tiled": False,
            "predictor": 3, "interleave": "band", **WORK_COMPRESSION}, stack)
    blocks_dir = Path(job.blocks_dir)
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    # Dask may run one block twice at once (a worker it declared dead still running it): each
    # attempt writes its own temporary file and renames it, so no attempt writes into another's.
    # A killed attempt's temporary file stays in .work, which publishing removes.
    with atomic_write(blocks_dir / f"{job.stem}.tif", unique=True) as tmp, \
            rasterio.open(tmp, "w", **profile) as dst:
        dst.write(core, 1)
        dst.write(unc_core, 2)
    record = {"fingerprint": job.fingerprint, "block": [job.row, job.col], "window": list(job.window),
              "patches": sorted(predicted), "forward_passes": n_forward,
              "model_forward_s": detector.forward_s - forward_before,
              "seconds": time.perf_counter() - t0, "worker_pid": os.getpid()}
    # written last: the block is complete
    atomic_write_json(blocks_dir / f"{job.stem}.json", record, indent=None, unique=True)
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
        profile = compressed_like(work_raster_profile(src.profile, dtype="float32", nodata=np.nan,
                                                      predictor=3, interleave="band"), src)
    with atomic_write(prob_path, suffix=".tmp.tif") as tmp_p, \
            atomic_write(unc_path, suffix=".tmp.tif") as tmp_u, \
            rasterio.open(tmp_p, "w", **profile) as dp, rasterio.open(tmp_u, "w", **profile) as du:
        dp.set_band_description(1, "landslide probability")
        du.set_band_description(1, "predictive entropy (bits)")
        for job in jobs:
            with rasterio.open(Path(job.blocks_dir) / f"{job.stem}.tif") as b:
                win = Window(*job.window)
                dp.write(b.read(1), 1, window=win)
                du.write(b.read(2), 1, window=win)
