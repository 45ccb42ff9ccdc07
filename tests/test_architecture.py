"""The layer rules of docs/architecture.md hold: import-linter's contracts (pyproject.toml) are kept,
they catch a broken rule, and no import circle exists anywhere, function-level imports included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "models", "devservers", "benchmarks", "webapp")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_layer_contracts_are_kept():
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_contracts_catch_a_reintroduced_circle(tmp_path):
    """A copy of the tree where ``models`` reaches up into ``tasks.run`` (the circle the layout
    removed) breaks the models contract and the circle contract, and lint-imports says which."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    metrics = tmp_path / "models" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _bad():\n    from tasks.run import plan  # noqa\n")
    run = _lint(tmp_path)
    assert run.returncode == 1, run.stdout[-3000:]
    assert "models imports only tasks.core of the project BROKEN" in run.stdout
    assert "models.metrics -> tasks.run.plan" in run.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_anywhere():
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    assert len(graph.modules) > 60
    assert _cycles(graph) == []
    # the checker itself finds a circle
    graph.add_import(importer="tasks.core.bands", imported="tasks.run.plan")
    assert any("tasks.core.bands" in c for c in _cycles(graph))


@pytest.mark.parametrize("first", ["models", "tasks", "flows", "tasks.core.grid"])
def test_importing_any_of_our_packages_makes_smp_importable_on_cpu_torch(first):
    """A user's own script: import one of our packages, then smp/timm/torchvision directly. The
    registry's torchvision is a CUDA build that does not import on CPU torch without the fix."""
    code = (f"import sys, {first}\n"
            "lazy = 'torch' not in sys.modules  # tasks and flows defer the fix (and torch)\n"
            "import segmentation_models_pytorch, timm, torchvision\n"
            f"assert lazy or {first!r} == 'models', 'importing {first} imported torch'\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
