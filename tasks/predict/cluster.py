"""Dask clusters for block jobs: a client for ``--dask-address`` or a local cluster of
single-thread worker processes for ``--workers N``. ``distributed`` is imported only when a
cluster is asked for."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


@contextlib.contextmanager
def dask_client(dask_address: str | None, workers: int = 1) -> Iterator[Any]:
    """A dask.distributed client for ``--dask-address`` or ``--workers N`` (N > 1), else None."""
    if dask_address:
        from distributed import Client

        with Client(dask_address, timeout="30s") as client:
            yield client
    elif workers > 1:
        from distributed import Client

        with local_cluster(workers) as cluster, Client(cluster) as client:
            yield client
    else:
        yield None


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536. Setting it switches off glibc's
# dynamic mmap threshold, so every tensor buffer above 128 kB is mapped and unmapped anew, and a
# torch forward in a worker ran much slower than in a plain process (benchmarks/README.md).
WORKER_ENV_UNSET = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def local_cluster(n_workers: int):
    """A LocalCluster of ``n_workers`` single-thread worker processes, started without the nanny's
    malloc trim setting (``WORKER_ENV_UNSET``); use it as a context manager."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(WORKER_ENV_UNSET):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=None)
