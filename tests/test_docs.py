"""The docs are self-contained: every repository path README.md and docs/*.md name exists.

A path counts when it starts at a top-level entry of the repository (``tasks/...``, ``docs/...``,
``prefect.yaml``, ...) or at ``../shared/`` (the data beside the repository), inside backticks or a
Markdown link; run-time paths (``runs/``, ``build/``, ``.work/``) and placeholders are not checked. A
shipped checkpoint may be named without its ``.json``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
        ROOT / "tests" / "servers" / "README.md"]
CODE = [p for d in ("tasks", "flows", "models", "benchmarks", "devservers", "tests")
        for p in sorted((ROOT / d).rglob("*.py")) if p.name != "test_docs.py"]
TOP = ("tasks/", "flows/", "models/", "tests/", "docs/", "benchmarks/", "devservers/", "data/", ".ci/",
       "../shared/", "README.md", "prefect.yaml", "pyproject.toml", "data_catalog.yaml", "constraints.txt")
REF = re.compile(r"\]\(([^)#\s]+)\)|`([^`\s]+)`")


def repo_paths(text: str) -> list[str]:
    refs = []
    for match in REF.finditer(text):
        ref = (match.group(1) or match.group(2)).rstrip(".,;:")
        if ref.startswith(TOP) and not any(c in ref for c in "<>{}*$|"):
            refs.append(re.sub(r"\.py:\w+$", ".py", ref))  # flows/scan.py:scan_flow -> the file
    return refs


def test_the_check_finds_paths_and_would_catch_a_missing_one():
    refs = repo_paths("see `tasks/core/bands.py`, [arch](docs/architecture.md), `flows/scan.py:scan_flow`, "
                      "`runs/x/landslides.gpkg`, `docs/nowhere.md`")
    assert refs == ["tasks/core/bands.py", "docs/architecture.md", "flows/scan.py", "docs/nowhere.md"]
    assert sum(len(repo_paths(doc.read_text())) for doc in DOCS) > 50


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_repository_path_in_the_docs_exists(doc):
    missing = []
    for ref in repo_paths(doc.read_text()):
        candidates = [ROOT / ref, doc.parent / ref, ROOT / f"{ref}.json"]
        if not any(c.exists() for c in candidates):
            missing.append(ref)
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_no_doc_cites_files_outside_the_repository_or_this_machine():
    for doc in DOCS:
        text = doc.read_text()
        assert "DESIGN.md" not in text, doc.name
        assert not re.search(r"cd /(work|root|home)/", text), doc.name


def test_no_code_cites_a_document_outside_the_repository():
    """Docstrings and messages point users at docs/contracts.md, never at a file they do not have."""
    citing = [str(p.relative_to(ROOT)) for p in CODE if "DESIGN.md" in p.read_text()]
    assert not citing, citing
