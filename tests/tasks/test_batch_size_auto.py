"""--batch-size auto (issue 19): parsed by the CLI, resolved to a number once when the scan is
planned (the CPU's is the default, so CPU outputs do not change), recorded in the plan."""

from __future__ import annotations

import argparse

import pytest

from flows.options import parse_batch_size
from tasks.core import defaults
from tasks.core.errors import InputError
from tasks.run.plan import plan_scan, resolve_batch_size
from tasks.run.request import ScanRequest, check_numbers

BBOX = (141.95, 42.72, 141.965, 42.735)


def test_cli_value():
    assert parse_batch_size("auto") == "auto" and parse_batch_size("AUTO") == "auto"
    assert parse_batch_size("32") == 32
    with pytest.raises(argparse.ArgumentTypeError, match="'auto'"):
        parse_batch_size("big")


def test_request_accepts_auto_and_checks_numbers(tmp_path):
    check_numbers(ScanRequest(out=str(tmp_path / "r"), batch_size="auto"))
    with pytest.raises(InputError, match="--batch-size must be >= 1"):
        check_numbers(ScanRequest(out=str(tmp_path / "r"), batch_size=0))


def test_auto_resolves_to_the_default_on_cpu(tmp_path):
    req = ScanRequest(out=str(tmp_path / "r"), region="iburi-2018", detector="index",
                      device="cpu", batch_size="auto")
    assert resolve_batch_size(req).batch_size == defaults.BATCH_SIZE
    fixed = req.model_copy(update={"batch_size": 8})
    assert resolve_batch_size(fixed) is fixed


def test_the_plan_records_the_resolved_number(tmp_path):
    req = ScanRequest(out=str(tmp_path / "r"), region="iburi-2018", bbox=BBOX, detector="index",
                      device="cpu", batch_size="auto", progress=False)
    plan = plan_scan(req)
    assert plan.request.batch_size == defaults.BATCH_SIZE
    # the same request again (a resumed run) is the same run, not "other settings"
    assert plan_scan(req).run_id == plan.run_id


def test_the_block_fingerprint_holds_the_precision(tmp_path):
    """A run resumed where the detector computes in another precision (another GPU) must not reuse
    the blocks computed before: the precision is part of what a completion record must match."""
    from types import SimpleNamespace

    from tasks.run.steps import _fingerprint, _precision_of

    req = ScanRequest(out=str(tmp_path / "r"), region="iburi-2018", bbox=BBOX, detector="index",
                      device="cpu", progress=False)
    plan = plan_scan(req)
    assert _fingerprint(plan, "float32") == _fingerprint(plan, "float32")
    assert _fingerprint(plan, "float32") != _fingerprint(plan, "bfloat16")
    members = [SimpleNamespace(precision="float16"), SimpleNamespace(precision="float32")]
    assert _precision_of(SimpleNamespace(members=members)) == "float16,float32"
    assert _precision_of(SimpleNamespace(precision="bfloat16")) == "bfloat16"
    assert _precision_of(object()) is None  # a rule (the index detector) has none
