"""Review decisions in the inventory / a run's GeoPackage (tasks/inventory/review.py): written and
read back with GDAL, valid GeoPackages, two writer processes plus a merge at once, failures and a
crash mid-write, merges keeping reviews, old files without review columns, and the labels export
that `landslide make-dataset` turns into 1 / 0 / 255 on a real scan of the bundled Iburi sample."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from shapely.geometry import box

from tasks.core.errors import InputError
from tasks.core.grid import AnalysisGrid
from tasks.inventory import review
from tasks.inventory.merge import merge_run, read_inventory
from tasks.inventory.review import (
    REVIEWS_LAYER,
    export_labels,
    list_polygons,
    lock_path,
    record_review,
    review_history,
)
from tasks.vector.geopackage import GPKG_DATASET_OPTIONS, GPKG_LAYER_OPTIONS
from tasks.vector.rasterize import rasterize_polygons
from tests.tasks.test_inventory import A, B, C, _run_gpkg

REPO = Path(__file__).resolve().parents[2]
GPKG_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
VALIDATOR = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")
SCAN_BBOX = "141.95,42.72,141.99,42.75"  # the sample run's bbox: a few seconds with --detector index


def query(gpkg: Path, sql: str, *args) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True)) as con:
        return con.execute(sql, args).fetchall()


def assert_valid_gpkg(gpkg: Path) -> None:
    """GDAL opens every layer without a warning; GDAL's own GeoPackage validator (python3-gdal of
    the system Python, when installed) finds nothing."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    if shutil.which("ogrinfo"):
        ogr = subprocess.run(["ogrinfo", "-ro", "-al", "-so", str(gpkg)], capture_output=True,
                             text=True, env=env)
        assert ogr.returncode == 0 and not re.search(r"warning|error", ogr.stderr, re.I), ogr.stderr
    if VALIDATOR.exists() and Path("/usr/bin/python3").exists():
        check = subprocess.run(["/usr/bin/python3", str(VALIDATOR), str(gpkg)], capture_output=True,
                               text=True, env=env)
        assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "region" / "inventory.gpkg"
    merge_run(inv, _run_gpkg(tmp_path / "r1.gpkg", [A, B, C], "2024-05-01T10:00:00Z", "r1"), "r1",
              ["s1"], "m@abc")
    return inv


def _state(inv: Path) -> dict[int, tuple]:
    return {p.polygon_id: (p.review_status, p.reviewed_by, p.review_note) for p in list_polygons(inv)}


# ------------------------------------------------------------------------------ write and read


def test_decisions_are_written_and_read_back_with_gdal(inventory: Path) -> None:
    assert {s for s, *_ in _state(inventory).values()} == {"unreviewed"}  # merge writes the columns
    assert review_history(inventory) == []
    e = record_review(inventory, [1, 2], "confirm", "ann", "fresh scar")
    assert [(x.entry_id, x.polygon_id, x.review_status) for x in e] == [(1, 1, "confirmed"),
                                                                        (2, 2, "confirmed")]
    record_review(inventory, [3], "reject", "bob")
    record_review(inventory, [3], "note", "carl", "road cut, not a slide")
    record_review(inventory, [1], "reject", "bob")  # a later decision wins; the note stays

    land = gpd.read_file(inventory, layer="landslides").set_index("inventory_id")
    assert land.loc[1, "review_status"] == "rejected" and land.loc[1, "reviewed_by"] == "bob"
    assert land.loc[1, "review_note"] == "fresh scar"
    assert land.loc[2, "review_status"] == "confirmed" and land.loc[2, "reviewed_by"] == "ann"
    assert land.loc[3, "review_status"] == "rejected" and land.loc[3, "reviewed_by"] == "carl"
    assert land.loc[3, "review_note"] == "road cut, not a slide"
    assert str(land["reviewed_at"].dtype).startswith("datetime64") and land["reviewed_at"].notna().all()

    info = pyogrio.read_info(inventory, layer=REVIEWS_LAYER)
    assert info["geometry_type"] is None and info["features"] == 5
    rows = pyogrio.read_dataframe(inventory, layer=REVIEWS_LAYER, read_geometry=False)
    assert list(rows["decision"]) == ["confirm", "confirm", "reject", "note", "reject"]
    assert list(rows["inventory_id"]) == [1, 2, 3, 3, 1]
    assert list(rows["review_status"]) == ["confirmed", "confirmed", "rejected", "rejected", "rejected"]
    assert [e.reviewed_by for e in review_history(inventory, 3)] == ["bob", "carl"]

    # GeoPackage conventions: an attributes table, datetimes with milliseconds, documented fields
    assert query(inventory, "SELECT data_type, description != '' FROM gpkg_contents WHERE "
                            "table_name = 'reviews'") == [("attributes", 1)]
    assert all(GPKG_DATETIME.match(t) for (t,) in query(inventory, "SELECT reviewed_at FROM reviews"))
    assert all(GPKG_DATETIME.match(t) for (t,) in query(
        inventory, "SELECT reviewed_at FROM landslides WHERE reviewed_at IS NOT NULL"))
    last = dict(query(inventory, "SELECT table_name, last_change FROM gpkg_contents"))
    assert last["landslides"] == last["reviews"] == query(inventory, "SELECT MAX(reviewed_at) FROM reviews")[0][0]
    documented = {(t, c) for t, c in query(inventory, "SELECT table_name, column_name FROM gpkg_data_columns")}
    for col in review.REVIEW_COLUMNS:
        assert ("landslides", col) in documented and ("reviews", col if col != "review_status"
                                                      else "decision") in documented
    assert not lock_path(inventory).exists()
    assert_valid_gpkg(inventory)


def test_bad_decisions_and_ids_are_one_line_input_errors(inventory: Path) -> None:
    before = inventory.read_bytes()
    for args, match in (((inventory, [1], "approve", "ann"), "unknown review decision 'approve'"),
                        ((inventory, [1, 99], "confirm", "ann"), "no polygon with inventory_id 99"),
                        ((inventory, [], "confirm", "ann"), "no polygon id"),
                        ((inventory, [1], "note", "ann"), "needs the note's text"),
                        ((inventory, [1], "confirm", "  "), "no reviewer name"),
                        ((inventory.parent / "missing.gpkg", [1], "confirm", "ann"), "does not exist")):
        with pytest.raises(InputError, match=match) as err:
            record_review(*args)
        assert "\n" not in str(err.value)
    assert inventory.read_bytes() == before  # id 1 of [1, 99] was not written either
    with pytest.raises(InputError, match="unknown review status"):
        list_polygons(inventory, "maybe")


# ------------------------------------------------------------------ concurrency, failure, crash

_WRITER = textwrap.dedent("""
    import pathlib, random, sys, time
    from tasks.inventory.review import record_review
    inv, name, seed, started = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
    rng = random.Random(seed)
    while not started.exists():  # the merger is merging: write while it does
        time.sleep(0.01)
    for i in range(20):
        time.sleep(0.03)
        decision = rng.choice(["confirm", "reject", "note"])
        note = f"{name} {i}" if decision == "note" or rng.random() < 0.5 else None
        record_review(inv, [rng.randint(1, 3)], decision, name, note)
""")
_MERGER = textwrap.dedent("""
    import pathlib, sys, time
    from tasks.inventory.merge import merge_run
    inv, run, started, stop = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
    i = 0
    while not stop.exists() and i < 200:  # merge again and again until both reviewers are done
        merge_run(inv, run, f"m{i}", [f"s{i}"], "m@abc")
        started.touch()
        i += 1
        time.sleep(0.05)  # flock is not fair: back-to-back merges would starve the reviewers
    print(i)
""")


def _python(script: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_reviewers_and_a_merge_at_once_lose_nothing(inventory: Path, tmp_path: Path) -> None:
    """Without the lock merge_run shares with reviews, decisions get lost (a merge's rename drops
    reviews committed after its read): with the lock switched off in the merger process, this
    test found 38 of the 40 rows."""
    # a run that sees the same landslides: each merge rewrites the whole inventory
    run = _run_gpkg(tmp_path / "m.gpkg", [A, B, C], "2024-06-01", "m", "s")
    started, stop = tmp_path / "merging", tmp_path / "stop"
    merger = _python(_MERGER, inventory, run, started, stop)
    writers = [_python(_WRITER, inventory, "ann", 1, started), _python(_WRITER, inventory, "bob", 2, started)]
    for p in writers:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    stop.touch()
    out, err = merger.communicate(timeout=300)
    assert merger.returncode == 0, err[-2000:]
    merges = int(out.split()[-1])
    print(f"{merges} merges during the reviews")

    history = review_history(inventory)
    assert len(history) == 40 and [e.entry_id for e in history] == list(range(1, 41))
    assert sum(e.reviewed_by == "ann" for e in history) == sum(e.reviewed_by == "bob" for e in history) == 20
    land, scans = read_inventory(inventory)
    assert len(scans) == 1 + merges >= 3 and len(land) == 3  # every merge landed, no duplicate
    state = _state(inventory)
    for pid in (1, 2, 3):
        mine = [e for e in history if e.polygon_id == pid]
        if not mine:
            assert state[pid][0] == "unreviewed"
            continue
        decided = [e for e in mine if e.decision != "note"]
        notes = [e.review_note for e in mine if e.review_note]
        assert state[pid] == ((decided[-1].review_status if decided else "unreviewed"),
                              mine[-1].reviewed_by, notes[-1] if notes else None)
        assert {p.polygon_id: p.reviewed_at for p in list_polygons(inventory)}[pid] == mine[-1].reviewed_at
        assert mine[-1].review_status == state[pid][0]
    assert not lock_path(inventory).exists()
    assert_valid_gpkg(inventory)


def test_a_failure_mid_write_leaves_the_file_as_it_was(inventory: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    def failing(*args, **kwargs):
        raise OSError("disk full (simulated, after the polygon's UPDATE)")

    # an old run file: the failed first decision also rolls back the columns and table it added
    run = tmp_path / "landslides.gpkg"
    _run_gpkg(run, [A, B], "2024-05-01", "r1")
    record_review(inventory, [2], "confirm", "ann")
    for path in (inventory, run):
        before = path.read_bytes()
        monkeypatch.setattr(review, "_insert_entry", failing)
        with pytest.raises(OSError, match="simulated"):
            record_review(path, [1, 2], "reject", "bob", "x")
        monkeypatch.undo()
        assert path.read_bytes() == before, path
        assert not lock_path(path).exists() and not Path(f"{path}-journal").exists()
    assert _state(inventory)[2] == ("confirmed", "ann", None)
    assert "review_status" not in pyogrio.read_info(run, layer="landslides")["fields"]


def test_a_crash_mid_write_loses_only_that_decision(inventory: Path) -> None:
    record_review(inventory, [1], "confirm", "ann", "kept")
    crash = textwrap.dedent("""
        import os, sys
        from tasks.inventory import review
        def die(*args, **kwargs):
            os._exit(9)  # killed between the polygon's UPDATE and the reviews INSERT
        review._insert_entry = die
        review.record_review(sys.argv[1], [1, 2], "reject", "bob")
    """)
    p = _python(crash, inventory)
    p.communicate(timeout=120)
    assert p.returncode == 9
    assert Path(f"{inventory}-journal").exists()  # SQLite's hot journal: the next writer rolls back
    record_review(inventory, [3], "note", "carl", "after the crash")
    assert _state(inventory) == {1: ("confirmed", "ann", "kept"), 2: ("unreviewed", None, None),
                                 3: ("unreviewed", "carl", "after the crash")}
    assert [e.entry_id for e in review_history(inventory)] == [1, 2]
    assert_valid_gpkg(inventory)


# ----------------------------------------------------------------------------- merges, old files


def test_a_merge_keeps_the_reviews(inventory: Path, tmp_path: Path) -> None:
    record_review(inventory, [1], "confirm", "ann", "scar")
    record_review(inventory, [2], "reject", "bob", "field")
    before_history = review_history(inventory)
    before = {p.polygon_id: p for p in list_polygons(inventory)}
    # the next scene sees A moved a little (matched), not B, and a new landslide far away
    run = _run_gpkg(tmp_path / "r2.gpkg", [box(0, 10, 100, 110), box(2000, 0, 2100, 90)],
                    "2024-06-01", "r2", "s2")
    res = merge_run(inventory, run, "r2", ["s2"], "m@abc")
    assert (res.new, res.known_updated) == (1, 1)
    after = {p.polygon_id: p for p in list_polygons(inventory)}
    def kept(p):
        return p.review_status, p.reviewed_by, p.reviewed_at, p.review_note

    assert kept(after[1]) == kept(before[1]) and after[1].status == "known"
    assert kept(after[1])[:2] == ("confirmed", "ann")
    assert (after[2].review_status, after[2].review_note) == ("rejected", "field")
    assert after[4].review_status == "unreviewed" and after[4].reviewed_by is None
    assert review_history(inventory) == before_history
    land, _ = read_inventory(inventory)
    assert land.set_index("inventory_id").loc[1].geometry.equals(box(0, 10, 100, 110))
    assert_valid_gpkg(inventory)


def test_an_inventory_without_review_columns(inventory: Path, tmp_path: Path) -> None:
    """An inventory written before reviews existed: landslides and scans only."""
    land, scans = read_inventory(inventory)
    old = tmp_path / "old" / "inventory.gpkg"
    old.parent.mkdir()
    land.drop(columns=list(review.REVIEW_COLUMNS)).to_file(
        old, layer="landslides", driver="GPKG", dataset_options=GPKG_DATASET_OPTIONS,
        layer_options=GPKG_LAYER_OPTIONS)  # as the project wrote inventories
    scans.to_file(old, layer="scans", driver="GPKG", layer_options=GPKG_LAYER_OPTIONS)
    before = old.read_bytes()
    assert {s for s, *_ in _state(old).values()} == {"unreviewed"} and review_history(old) == []
    with pytest.raises(InputError, match="no polygon is confirmed or rejected"):
        export_labels(old, tmp_path / "labels.gpkg")
    assert old.read_bytes() == before  # reading writes nothing
    record_review(old, [2], "reject", "ann")
    assert _state(old) == {1: ("unreviewed", None, None), 2: ("rejected", "ann", None),
                           3: ("unreviewed", None, None)}
    assert_valid_gpkg(old)
    # and a merge of such a file (no review columns, no reviews layer) starts them
    old2 = tmp_path / "old2" / "inventory.gpkg"
    old2.parent.mkdir()
    old2.write_bytes(before)
    merge_run(old2, _run_gpkg(tmp_path / "r2.gpkg", [A], "2024-06-01", "r2"), "r2", ["s2"], "m@abc")
    assert {s for s, *_ in _state(old2).values()} == {"unreviewed"}
    assert review_history(old2) == [] and pyogrio.read_info(old2, layer=REVIEWS_LAYER)["features"] == 0


# ------------------------------------------------------- a real scan, its labels for make-dataset


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    from flows.cli import main

    out = tmp_path_factory.mktemp("review-scan") / "run"
    assert main(["scan", "--region", "iburi-2018", "--bbox", SCAN_BBOX, "--detector", "index",
                 "--orchestration", "in-process", "--no-progress", "--out", str(out)]) == 0
    return out


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_reviewed_run_exports_labels_that_make_dataset_burns(scan: Path, tmp_path: Path) -> None:
    from flows.cli import main

    run = tmp_path / "run"
    shutil.copytree(scan, run)
    gpkg = run / "landslides.gpkg"
    polys = gpd.read_file(gpkg, layer="landslides")
    big = polys[polys["area_m2"] >= 2000].sort_values("centroid_lat")
    yes = [int(big.iloc[0]["landslide_id"]), int(big.iloc[-1]["landslide_id"])]  # south, north
    no = [int(big.iloc[len(big) // 3]["landslide_id"]), int(big.iloc[2 * len(big) // 3]["landslide_id"])]
    record_review(run, yes, "confirm", "ann")  # the run folder resolves to its landslides.gpkg
    record_review(gpkg, no, "reject", "ann", "bare field")
    assert review.review_key(gpkg) == "landslide_id"
    assert_valid_gpkg(gpkg)

    labels = tmp_path / "labels.gpkg"
    r = export_labels(gpkg, labels)
    assert (r.confirmed, r.rejected, r.unreviewed) == (2, 2, len(polys) - 4)
    assert sorted(pyogrio.read_dataframe(labels, layer="confirmed")["landslide_id"]) == sorted(yes)
    assert_valid_gpkg(labels)
    with pytest.raises(InputError, match="already exists"):
        export_labels(gpkg, labels)

    out = tmp_path / "dataset"
    assert main(["make-dataset", "--region", "iburi-2018", "--bbox", SCAN_BBOX, "--labels",
                 str(labels), "--class", "landslide=confirmed", "--mapped-area", "reviewed_area",
                 "--val-fraction", "0.3", "--gap-px", "4", "--no-progress", "--out", str(out)]) == 0
    top = json.loads((out / "dataset.json").read_text())
    grid = AnalysisGrid.from_dict(top["grid"])
    confirmed = rasterize_polygons(gpd.read_file(labels, layer="confirmed").geometry, grid).astype(bool)
    rejected = rasterize_polygons(gpd.read_file(labels, layer="rejected").geometry, grid).astype(bool)
    ones = zeros = 0
    for part in ("train", "val"):
        w = top["spatial_split"][f"{part}_window"]
        sl = (slice(w["row0"], w["row1"]), slice(w["col0"], w["col1"]))
        lab = _read(out / part / "labels.tif")
        with rasterio.open(out / part / "image.tif") as src:
            valid = np.isfinite(src.read(2))
        expected = np.full(lab.shape, 255, dtype=np.uint8)
        expected[confirmed[sl] & valid] = 1
        expected[rejected[sl] & valid] = 0
        assert np.array_equal(lab, expected), part
        assert (lab == 1).any(), part  # a confirmed polygon on each side of the split
        ones, zeros = ones + int((lab == 1).sum()), zeros + int((lab == 0).sum())
    assert zeros > 0 and ones == top["train"]["landslide_px"] + top["val"]["landslide_px"]


_QGIS_STYLE = textwrap.dedent("""
    import json, os, sys
    from qgis.core import (QgsApplication, QgsExpressionContext, QgsExpressionContextUtils,
                           QgsRenderContext, QgsVectorLayer)
    app = QgsApplication([], False)
    app.initQgis()
    lyr = QgsVectorLayer(sys.argv[1] + "|layername=landslides", "landslides", "ogr")
    r = lyr.renderer()
    rc = QgsRenderContext()
    rc.setExpressionContext(QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(lyr)))
    r.startRender(rc, lyr.fields())
    out = {}
    for f in lyr.getFeatures():
        rc.expressionContext().setFeature(f)
        s = r.symbolForFeature(f, rc)
        out[f["inventory_id"]] = [s.symbolLayer(0).properties()["style"], s.color().name()]
    r.stopRender(rc)
    reviews = QgsVectorLayer(sys.argv[1] + "|layername=reviews", "reviews", "ogr")
    print(json.dumps({"renderer": r.type(), "symbols": out, "reviews": reviews.featureCount()}),
          flush=True)
    os._exit(0)  # exitQgis() with layers alive can crash at shutdown; the answer is out
""")


def test_qgis_draws_rejected_landslides_hatched(inventory: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    probe = subprocess.run(["/usr/bin/python3", "-c", "import qgis.core"], capture_output=True, env=env)
    if probe.returncode:
        pytest.skip("PyQGIS is not installed for /usr/bin/python3 (tests/flows/test_qgis_run.py installs it)")
    record_review(inventory, [1], "reject", "ann")
    record_review(inventory, [2], "confirm", "ann")
    proc = subprocess.run(["/usr/bin/python3", "-c", _QGIS_STYLE, str(inventory)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # the stored default style applies (it did not before layer_styles was registered) and a
    # reviewer's rejection shows, whatever the status
    assert report["renderer"] == "categorizedSymbol" and report["reviews"] == 2
    assert report["symbols"]["1"][0] == "b_diagonal"
    assert report["symbols"]["2"][0] == report["symbols"]["3"][0] == "solid"
    assert report["symbols"]["2"][1] == report["symbols"]["3"][1] != report["symbols"]["1"][1]
