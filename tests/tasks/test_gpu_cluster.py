"""Multi-GPU block jobs (issue 19): local Dask workers pinned one GPU each, checked on a CPU with
fake GPU ids (only the environment each worker process sees is checked)."""

from __future__ import annotations

import os

from tasks.predict.cluster import gpu_worker_specs, local_cluster, visible_gpus, worker_gpus


def test_visible_gpus():
    assert visible_gpus(None, 3) == ["0", "1", "2"]
    assert visible_gpus("2, 5", 2) == ["2", "5"]  # as the parent process was pinned
    assert visible_gpus("GPU-1a2b", 1) == ["GPU-1a2b"]
    assert visible_gpus("", 0) == []


def test_worker_gpus_round_robin_only_for_a_cuda_device():
    assert worker_gpus("cuda", 2, None, 2) == ["0", "1"]
    assert worker_gpus("auto", 3, "4,7", 2) == ["4", "7", "4"]  # more workers than GPUs: shared
    assert worker_gpus("cpu", 2, None, 2) is None
    assert worker_gpus("cuda:1", 2, None, 2) is None  # the user chose one GPU
    assert worker_gpus("auto", 2, None, 0) is None  # no GPU: a plain CPU cluster


def test_worker_specs_pin_one_gpu_each():
    specs = gpu_worker_specs(["0", "1"])
    assert list(specs) == ["gpu0-0", "gpu1-1"]
    assert [s["options"]["env"] for s in specs.values()] == [{"CUDA_VISIBLE_DEVICES": "0"},
                                                             {"CUDA_VISIBLE_DEVICES": "1"}]
    assert all(s["options"]["nthreads"] == 1 and s["cls"] == "distributed.Nanny" for s in specs.values())


def test_each_worker_process_sees_its_own_gpu(monkeypatch):
    from distributed import Client

    # a nanny writes its pre-spawn variables into its parent's os.environ
    # (distributed.nanny: os.environ.update), so any cluster an earlier test started with dask's
    # defaults leaves MALLOC_TRIM_THRESHOLD_=65536 in this process, and every later worker inherits
    # it; start from a clean environment to see what local_cluster itself does
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with local_cluster(2, ["3", "5"]) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        seen = client.run(lambda: (os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                                   os.environ.get("MALLOC_TRIM_THRESHOLD_")))
    pids = {pid for pid, _, _ in seen.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes
    assert sorted(gpu for _, gpu, _ in seen.values()) == ["3", "5"]
    assert all(trim is None for _, _, trim in seen.values())  # the nanny's malloc trim is unset


def test_first_import_of_distributed_in_local_cluster_keeps_its_config():
    """A fresh process whose first import of distributed happens in local_cluster still has
    distributed's config afterwards (a first import inside dask.config.set lost it on exit, and
    the cluster then failed closing with KeyError 'distributed')."""
    import subprocess
    import sys

    code = ("import dask\nfrom tasks.predict.cluster import local_cluster\n"
            "with local_cluster(1):\n    pass\n"
            "print(dask.config.get('distributed.deploy.lost-worker-timeout'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "15s"
