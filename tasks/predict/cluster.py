"""Dask clusters for block jobs: a client for ``--dask-address`` or a local cluster of
single-thread worker processes for ``--workers N``; with a CUDA device, each worker process is
pinned to one GPU (``CUDA_VISIBLE_DEVICES`` set in its environment, round-robin over the visible
GPUs). ``distributed`` is imported only when a cluster is asked for."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence


@contextlib.contextmanager
def dask_client(dask_address: str | None, workers: int = 1, device: str = "cpu") -> Iterator[Any]:
    """A dask.distributed client for ``--dask-address`` or ``--workers N`` (N > 1), else None.

    ``device`` (the scan's ``--device``): with ``cuda`` or ``auto`` on a machine with GPUs, the
    local workers are pinned one GPU each (:func:`worker_gpus`)."""
    if dask_address:
        from distributed import Client

        with Client(dask_address, timeout="30s") as client:
            yield client
    elif workers > 1:
        from distributed import Client

        gpus = worker_gpus(device, workers, os.environ.get("CUDA_VISIBLE_DEVICES"), _cuda_count(device))
        with local_cluster(workers, gpus) as cluster, Client(cluster) as client:
            yield client
    else:
        yield None


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536. Setting it switches off glibc's
# dynamic mmap threshold, so every tensor buffer above 128 kB is mapped and unmapped anew, and a
# torch forward in a worker ran much slower than in a plain process (benchmarks/README.md).
WORKER_ENV_UNSET = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def local_cluster(n_workers: int, gpus: Sequence[str] | None = None):
    """A local cluster of ``n_workers`` single-thread worker processes, started without the nanny's
    malloc trim setting (``WORKER_ENV_UNSET``); with ``gpus`` (one id per worker, from
    :func:`worker_gpus`) each worker sees only its own GPU. Use it as a context manager."""
    import dask

    # imported before the config change: a first import inside it would add distributed's defaults
    # to the config that dask.config.set restores on exit, and they would be gone afterwards
    from distributed import LocalCluster, Scheduler, SpecCluster

    with dask.config.set(WORKER_ENV_UNSET):
        if gpus:
            return SpecCluster(workers=gpu_worker_specs(gpus),
                               scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=None)


def visible_gpus(cuda_visible_devices: str | None, device_count: int) -> list[str]:
    """The GPU ids this process may hand out: the entries of ``CUDA_VISIBLE_DEVICES`` when it is
    set (indices or UUIDs, as given), else ``0 .. device_count - 1``."""
    if cuda_visible_devices is not None:
        return [g.strip() for g in cuda_visible_devices.split(",") if g.strip()]
    return [str(i) for i in range(device_count)]


def worker_gpus(device: str, workers: int, cuda_visible_devices: str | None,
                device_count: int) -> list[str] | None:
    """The GPU of each of ``workers`` local workers (round-robin over the visible GPUs: with more
    workers than GPUs, GPUs are shared), or None when the workers are not to be pinned: a CPU
    device, ``cuda:N`` (the user chose one GPU), or no GPU."""
    if device not in ("cuda", "auto"):
        return None
    gpus = visible_gpus(cuda_visible_devices, device_count)
    if not gpus or device_count == 0:
        return None
    return [gpus[i % len(gpus)] for i in range(workers)]


def gpu_worker_specs(gpus: Sequence[str]) -> dict[str, dict]:
    """``SpecCluster`` worker specs: one single-thread nanny-managed worker per entry of ``gpus``,
    named ``gpu<i>-<id>``, whose process environment has ``CUDA_VISIBLE_DEVICES=<id>`` (it then
    sees that GPU as ``cuda:0``)."""
    return {f"gpu{i}-{gpu}": {"cls": "distributed.Nanny",
                              "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(gpu)}}}
            for i, gpu in enumerate(gpus)}


def _cuda_count(device: str) -> int:
    """CUDA GPUs torch sees here (0 for a CPU device: torch is not even asked)."""
    if device not in ("cuda", "auto"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
