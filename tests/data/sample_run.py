"""The small Iburi sample run that several test modules read (``iburi_run`` in tests/conftest.py).

One scan of a few hundred pixels a side with the weights-free ``--detector index``, run once per
test session; credentials set in the environment must never reach its outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IBURI_BBOX = (141.95, 42.72, 141.99, 42.75)
SECRET = "do-not-leak-0123456789abcdef"


def run_iburi_sample(out: Path) -> Path:
    """Scan the sample bbox into ``out`` through the CLI entry point; returns ``out``."""
    from flows.cli import main

    argv = ["scan", "--catalog", REPO / "data_catalog.yaml", "--out", out, "--no-progress",
            "--region", "iburi-2018", "--bbox", ",".join(f"{v:.6f}" for v in IBURI_BBOX),
            "--detector", "index"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SH_CLIENT_ID", SECRET + "-id")
        mp.setenv("SH_CLIENT_SECRET", SECRET)
        code = main([str(a) for a in argv])
    assert code == 0, f"the sample scan failed with exit status {code}"
    return out
