"""``landslide review`` / ``reviews`` / ``export-labels``: decisions through the CLI, JSON output,
and user mistakes as one ``error:`` line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pyogrio
import pytest

from flows.cli import main
from tasks.inventory.merge import merge_run
from tasks.inventory.review import list_polygons
from tests.tasks.test_inventory import A, B, C, _run_gpkg


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "state" / "r" / "inventory.gpkg"
    merge_run(inv, _run_gpkg(tmp_path / "r1.gpkg", [A, B, C], "2024-05-01T10:00:00Z", "r1"), "r1",
              ["s1"], "m@abc")
    return inv


def test_review_reviews_and_export(inventory: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("USER", "ann")
    assert main(["review", str(inventory), "--id", "1", "--id", "2", "--confirm", "--note", "scar"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("1: confirm -> confirmed by ann at ") and "(scar)" in out[0]
    assert main(["review", str(inventory), "--id", "3", "--reject", "--by", "bob", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["polygon_id"], e["review_status"], e["reviewed_by"]) for e in entries] == [(3, "rejected", "bob")]
    assert main(["review", str(inventory.parent), "--id", "3", "--note-only", "--note", "road"]) == 0
    capsys.readouterr()
    assert [(p.review_status, p.review_note) for p in list_polygons(inventory)] == [
        ("confirmed", "scar"), ("confirmed", "scar"), ("rejected", "road")]

    assert main(["reviews", str(inventory), "--json"]) == 0
    hist = json.loads(capsys.readouterr().out)
    assert hist["key"] == "inventory_id" and [e["decision"] for e in hist["reviews"]] == [
        "confirm", "confirm", "reject", "note"]
    assert main(["reviews", str(inventory)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "4 review entries"
    assert main(["reviews", str(inventory), "--polygons", "--status", "confirmed", "--json"]) == 0
    assert [p["polygon_id"] for p in json.loads(capsys.readouterr().out)["polygons"]] == [1, 2]
    assert main(["reviews", str(inventory), "--polygons"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 confirmed, 1 rejected"

    labels = tmp_path / "labels.gpkg"
    assert main(["export-labels", str(inventory), "--out", str(labels)]) == 0
    assert "2 confirmed, 1 rejected polygons" in capsys.readouterr().out
    assert [name for name, _ in pyogrio.list_layers(labels)] == ["confirmed", "rejected", "reviewed_area"]
    assert main(["export-labels", str(inventory), "--out", str(labels), "--overwrite"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["review", "{inv}", "--id", "9", "--confirm", "--by", "a"], "no polygon with inventory_id 9"),
    (["review", "{inv}", "--id", "1", "--by", "a"], "one of the arguments --confirm --reject --note-only"),
    (["review", "{inv}", "--id", "1", "--confirm", "--reject"], "not allowed with argument"),
    (["review", "{inv}", "--id", "x", "--confirm"], "invalid int value"),
    (["review", "{inv}", "--id", "1", "--note-only", "--by", "a"], "needs the note's text"),
    (["review", "{inv}", "--id", "1", "--confirm", "--note", " ", "--by", "a"], "--note is empty"),
    (["review", "{tmp}/missing.gpkg", "--id", "1", "--confirm", "--by", "a"], "does not exist"),
    (["review", "{tmp}/r1.gpkg.txt", "--id", "1", "--confirm", "--by", "a"], "not a GeoPackage"),
    (["reviews", "{inv}", "--status", "confirmed"], "add --polygons"),
    (["export-labels", "{inv}", "--out", "{tmp}/labels.gpkg"], "no polygon is confirmed or rejected"),
    (["export-labels", "{inv}", "--out", "{tmp}/labels.shp"], "must be a GeoPackage"),
])
def test_mistakes_are_one_line_and_exit_2(inventory: Path, tmp_path: Path, capsys, argv, message) -> None:
    (tmp_path / "r1.gpkg.txt").write_text("not a database")
    before = inventory.read_bytes()
    args = [a.format(inv=inventory, tmp=tmp_path) for a in argv]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert inventory.read_bytes() == before
