"""A run opens well in QGIS 3.22 LTR with no manual styling (issue 18, part A).

The fast tests read the session's sample run (``iburi_run``, tests/conftest.py) with SQLite, XML
and rasterio. The slow test opens it with the real client: PyQGIS under the system Python
(``tests/flows/qgis_render.py``), plus GDAL 3.6's ``ogrinfo`` from Debian's gdal-bin.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import warnings
import xml.etree.ElementTree as ET
from contextlib import closing
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image
from scipy import ndimage
from shapely import STRtree
from shapely.geometry import Point

from tasks.run.outputs import FINAL_NAMES, MASK_CLASSES, NODATA_U8, PROB_SCALE, QGIS_NAMES
from tasks.run.qgis_project import PROBABILITY_RAMP
from tasks.vector.fields import FOOTPRINT_FIELDS, LANDSLIDE_FIELDS
from tasks.vector.geopackage import GPKG_1_2_USER_VERSION, LINEAGE_MIME_TYPE, LINEAGE_STANDARD_URI
from tasks.vector.styles import PROB_CLASSES
from tasks.vector.vectorize import EVENT_COLUMN_NAMES, LANDSLIDE_COLUMN_NAMES

REPO = Path(__file__).resolve().parents[2]
COGS = ("probability.tif", "uncertainty.tif", "mask.tif")
# the columns of layer_styles as QGIS 3.22 creates the table ("save as default" into a GeoPackage)
QGIS_LAYER_STYLES_COLUMNS = [
    ("id", "INTEGER"), ("f_table_catalog", "TEXT(256)"), ("f_table_schema", "TEXT(256)"),
    ("f_table_name", "TEXT(256)"), ("f_geometry_column", "TEXT(256)"), ("styleName", "TEXT(30)"),
    ("styleQML", "TEXT"), ("styleSLD", "TEXT"), ("useAsDefault", "BOOLEAN"), ("description", "TEXT"),
    ("owner", "TEXT(30)"), ("ui", "TEXT(30)"), ("update_time", "DATETIME")]
GPKG_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def query(gpkg: Path, sql: str, *args) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True)) as con:
        return con.execute(sql, args).fetchall()


def attribute_columns(gpkg: Path, table: str) -> list[str]:
    geom = query(gpkg, "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", table)[0][0]
    return [r[1] for r in query(gpkg, f'PRAGMA table_info("{table}")') if not r[5] and r[1] != geom]


# ---------------------------------------------------------------------------------------------
# The field dict is the single source of truth: code, GeoPackage and README agree with it


def test_every_landslides_field_is_documented_once():
    assert list(LANDSLIDE_FIELDS) == list(LANDSLIDE_COLUMN_NAMES + EVENT_COLUMN_NAMES)
    aliases = [d.alias for d in LANDSLIDE_FIELDS.values()]
    assert len(set(aliases)) == len(aliases)  # gpkg_data_columns: (table_name, name) is unique
    for name, doc in LANDSLIDE_FIELDS.items():
        assert doc.alias and doc.description, name
        if name.endswith(("_m2", "_m", "_deg")):  # the unit in the name is the documented one
            assert doc.unit in {"_m2": "m²", "_m": "m", "_deg": "degree"}[name[name.rindex("_"):]], name


def readme_field_table() -> list[tuple[str, str, str, str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Fields of the `landslides` layer"):]
    section = section[:section.index("\n### ")]
    rows = []
    for line in section.splitlines():
        m = re.match(r"^\| `(\w+)` \|(.*)\|(.*)\|(.*)\|$", line)
        if m:
            rows.append(tuple(v.strip() for v in m.groups()))
    return rows


def test_readme_field_table_matches_the_dict():
    assert readme_field_table() == [(n, d.alias, d.unit, d.description) for n, d in LANDSLIDE_FIELDS.items()]
    text = (REPO / "README.md").read_text()
    listed = re.search(r"Layer `landslides` \([^)]*\): `([^`]+)`", text).group(1)
    assert [f.strip() for f in listed.split(",")] == list(LANDSLIDE_COLUMN_NAMES)


def test_every_output_file_is_listed(iburi_run):
    assert sorted(p.name for p in iburi_run.iterdir()) == sorted(FINAL_NAMES)
    assert set(QGIS_NAMES) <= set(FINAL_NAMES)
    manifest = json.loads((iburi_run / "manifest.json").read_text())
    assert set(manifest["outputs"]) == set(FINAL_NAMES) - {"manifest.json"}
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## What a scan writes"):readme.index("### Fields of")]
    for name in FINAL_NAMES:
        assert f"`{name}`" in table, name


# ---------------------------------------------------------------------------------------------
# GeoPackage conventions


def test_geopackage_1_2_with_millisecond_datetimes(iburi_run):
    gpkg = iburi_run / "landslides.gpkg"
    assert query(gpkg, "PRAGMA application_id")[0][0] == 0x47504B47  # "GPKG"
    assert query(gpkg, "PRAGMA user_version")[0][0] == GPKG_1_2_USER_VERSION == 10200
    rows = query(gpkg, "SELECT acquired, detected_at FROM landslides")
    assert rows, "the sample run has landslides"
    values = [v for row in rows for v in row if v is not None]
    assert len(values) >= len(rows) and all(GPKG_DATETIME.match(v) for v in values), values[:4]


def test_layer_descriptions_and_field_documentation(iburi_run):
    gpkg = iburi_run / "landslides.gpkg"
    described = dict(query(gpkg, "SELECT table_name, description FROM gpkg_contents"))
    assert described["landslides"].startswith("Landslides detected") and described["footprint"]
    ext = query(gpkg, "SELECT table_name, extension_name, scope FROM gpkg_extensions "
                      "WHERE extension_name = 'gpkg_schema'")
    assert ("gpkg_data_columns", "gpkg_schema", "read-write") in ext
    for layer, docs in (("landslides", LANDSLIDE_FIELDS), ("footprint", FOOTPRINT_FIELDS)):
        rows = {r[0]: r[1:] for r in query(
            gpkg, "SELECT column_name, name, title, description FROM gpkg_data_columns "
                  "WHERE table_name = ?", layer)}
        columns = attribute_columns(gpkg, layer)
        assert sorted(rows) == sorted(columns), layer  # every field, nothing else
        for col in columns:
            name, title, description = rows[col]
            assert name == title == docs[col].alias
            assert description.startswith(docs[col].description)
            if docs[col].unit:
                assert description.endswith(f"[{docs[col].unit}]")
    assert query(gpkg, "SELECT description FROM gpkg_data_columns WHERE column_name = 'area_m2' "
                       "AND table_name = 'landslides'")[0][0].endswith("[m²]")


def test_default_styles_in_layer_styles(iburi_run):
    gpkg = iburi_run / "landslides.gpkg"
    columns = [(r[1], r[2]) for r in query(gpkg, 'PRAGMA table_info("layer_styles")')]
    assert columns == QGIS_LAYER_STYLES_COLUMNS
    rows = query(gpkg, "SELECT f_table_name, f_geometry_column, styleQML, styleSLD, useAsDefault "
                       "FROM layer_styles ORDER BY f_table_name")
    assert [(r[0], r[1], r[4]) for r in rows] == [("footprint", "geom", 1), ("landslides", "geom", 1)]
    styles = {r[0]: (ET.fromstring(r[2]), ET.fromstring(r[3])) for r in rows}

    qml, sld = styles["landslides"]
    renderer = qml.find("renderer-v2")
    assert renderer.get("type") == "graduatedSymbol" and renderer.get("attr") == "mean_prob"
    ranges = [(float(r.get("lower")), float(r.get("upper")), r.get("label")) for r in renderer.iter("range")]
    assert ranges == [(c.lower, c.upper, c.label) for c in PROB_CLASSES]
    assert ranges[0][0] == 0.0 and ranges[-1][1] == 1.0 and [0.5, 0.7, 0.85] == [r[0] for r in ranges[1:]]
    fills = [dict((p.get("k"), p.get("v")) for p in sym.iter("prop")) for sym in renderer.iter("symbol")]
    alphas = [int(f["color"].split(",")[3]) for f in fills]
    assert all(0 < a < 255 for a in alphas) and all(f["style"] == "solid" for f in fills)  # see-through
    aliases = {a.get("field"): a.get("name") for a in qml.iter("alias")}
    assert aliases["area_m2"] == LANDSLIDE_FIELDS["area_m2"].alias
    se = "{http://www.opengis.net/se}"
    assert len(sld.findall(f".//{se}Rule")) == len(PROB_CLASSES)

    qml, sld = styles["footprint"]
    renderer = qml.find("renderer-v2")
    assert renderer.get("type") == "singleSymbol"
    props = {p.get("k"): p.get("v") for p in renderer.iter("prop")}
    assert props["style"] == "no" and props["outline_style"] == "dash"  # hollow, dashed
    assert sld.find(f".//{se}Fill") is None and sld.find(f".//{se}Stroke") is not None


def test_lineage_in_gpkg_metadata(iburi_run):
    gpkg = iburi_run / "landslides.gpkg"
    manifest = json.loads((iburi_run / "manifest.json").read_text())
    rows = query(gpkg, "SELECT id, md_scope, md_standard_uri, mime_type, metadata FROM gpkg_metadata")
    assert len(rows) == 1
    md_id, scope, uri, mime, text = rows[0]
    assert (scope, uri, mime) == ("dataset", LINEAGE_STANDARD_URI, LINEAGE_MIME_TYPE)
    lineage = json.loads(text)
    assert lineage["run_id"] == manifest["run_id"] and lineage["manifest"] == "manifest.json"
    assert lineage["scene_ids"] == manifest["inputs"]["scene_ids"]
    assert lineage["model"] == manifest["detector"]["ref"]
    assert lineage["parameters"] == manifest["parameters"]
    refs = query(gpkg, "SELECT reference_scope, table_name, md_file_id, timestamp FROM gpkg_metadata_reference")
    assert [r[:3] for r in refs] == [("geopackage", None, md_id)] and GPKG_DATETIME.match(refs[0][3])
    ext = {r[0] for r in query(gpkg, "SELECT table_name FROM gpkg_extensions "
                                     "WHERE extension_name = 'gpkg_metadata'")}
    assert ext == {"gpkg_metadata", "gpkg_metadata_reference"}


# ---------------------------------------------------------------------------------------------
# COGs and their QGIS sidecars


def test_cogs_carry_statistics_units_and_classes(iburi_run):
    for name in COGS:
        with rasterio.open(iburi_run / name) as src:
            values = src.read(1)
            tags = src.tags(1)
            valid = values[values != NODATA_U8].astype(np.float64)
            assert float(tags["STATISTICS_MINIMUM"]) == valid.min()
            assert float(tags["STATISTICS_MAXIMUM"]) == valid.max()
            assert float(tags["STATISTICS_MEAN"]) == pytest.approx(valid.mean(), rel=1e-9)
            assert float(tags["STATISTICS_STDDEV"]) == pytest.approx(valid.std(), rel=1e-9)
            assert float(tags["STATISTICS_VALID_PERCENT"]) == pytest.approx(100 * valid.size / values.size,
                                                                            abs=1e-3)
            assert src.descriptions[0] and "255 = not analysed" in src.descriptions[0]
            if name == "mask.tif":
                assert src.scales[0] == 1.0 and src.units[0] in (None, "")
                cmap = src.colormap(1)
                for value, (label, rgba) in MASK_CLASSES.items():
                    assert cmap[value][:3] == rgba[:3] and tags[f"CLASS_{value}"] == label
            else:
                assert src.scales[0] == pytest.approx(1 / PROB_SCALE) and src.offsets[0] == 0.0
                assert src.units[0] == ("1" if name == "probability.tif" else "bit")


def test_reading_the_cogs_writes_no_aux_xml(iburi_run):
    for name in COGS:
        with rasterio.open(iburi_run / name) as src:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stats = src.statistics(1, approx=False)  # gdalinfo -stats: GDALGetRasterStatistics
            assert stats.max == float(src.tags(1)["STATISTICS_MAXIMUM"])
            src.read(1, out_shape=(src.height // 4, src.width // 4))  # an overview
    assert not list(iburi_run.glob("*.aux.xml"))


def test_raster_styles_match_the_encoding(iburi_run):
    ramps = {}
    for name in ("probability", "uncertainty"):
        root = ET.parse(iburi_run / f"{name}.qml").getroot()
        renderer = root.find("pipe/rasterrenderer")
        assert renderer.get("type") == "singlebandpseudocolor" and renderer.get("band") == "1"
        assert root.find("pipe/rasterrenderer/minMaxOrigin/limits").text == "None"  # no stats needed
        shader = renderer.find("rastershader/colorrampshader")
        # QGIS applies the band scale, so the ramp spans the decoded range 0..254/254 = 0..1
        assert float(shader.get("minimumValue")) == 0 / PROB_SCALE
        assert float(shader.get("maximumValue")) == 254 / PROB_SCALE
        ramps[name] = [(float(i.get("value")), i.get("color"), int(i.get("alpha")))
                       for i in shader.iter("item")]
    prob = ramps["probability"]
    assert prob == [(s.value, "#{:02x}{:02x}{:02x}".format(*s.colour[:3]), s.colour[3])
                    for s in PROBABILITY_RAMP]
    assert prob[0][2] == 0 and prob[-1][2] > 0  # transparent at p = 0, never black
    assert prob[-1][1] != "#000000" and all(c != "#000000" for _, c, _ in prob)
    mask = ET.parse(iburi_run / "mask.qml").getroot()
    assert mask.find("pipe/rasterrenderer").get("type") == "paletted"
    entries = {int(e.get("value")): (e.get("label"), int(e.get("alpha")))
               for e in mask.iter("paletteEntry")}
    assert entries == {v: (label, rgba[3]) for v, (label, rgba) in MASK_CLASSES.items()}
    assert entries[0][1] == 0 and entries[1][1] == 255


def test_run_qgs_opens_the_run_with_relative_paths(iburi_run):
    root = ET.parse(iburi_run / "run.qgs").getroot()
    assert root.tag == "qgis" and root.find("properties/Paths/Absolute").text == "false"
    tree = [(n.get("name"), n.get("checked"), n.get("source"))
            for n in root.find("layer-tree-group").iter("layer-tree-layer")]
    assert [(n, c) for n, c, _ in tree] == [
        ("footprint (analysed area)", "Qt::Checked"), ("landslides", "Qt::Checked"),
        ("mask", "Qt::Unchecked"), ("probability", "Qt::Checked"), ("uncertainty", "Qt::Unchecked")]
    layers = {ml.find("id").text: ml for ml in root.iter("maplayer")}
    assert set(layers) == {n.get("id") for n in root.iter("layer-tree-layer")}
    assert all(len(i) > 10 for i in layers)  # QGIS 3.22 replaces shorter layer ids
    for ml in layers.values():
        source = ml.find("datasource").text
        assert source.startswith("./") and not Path(source.split("|")[0]).is_absolute()
        assert (iburi_run / source.split("|")[0]).is_file(), source
        assert ml.find("srs/spatialrefsys/authid").text == "EPSG:32654"
    assert root.find("projectCrs/spatialrefsys/authid").text == "EPSG:32654"
    assert "/" + str(iburi_run).strip("/") not in (iburi_run / "run.qgs").read_text()


# ---------------------------------------------------------------------------------------------
# The real client: QGIS 3.22 and GDAL 3.6 from Debian's packages

SYSTEM_PYTHON = "/usr/bin/python3"
APT_PACKAGES = ["qgis", "python3-qgis", "gdal-bin", "python3-gdal"]


def _system_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.setdefault("XDG_RUNTIME_DIR", "/tmp/runtime-" + str(os.getuid()))
    return env


def ensure_qgis() -> None:
    """PyQGIS under the system Python and GDAL's ogrinfo; installed with apt-get when run as root."""
    def ready() -> bool:
        if not (Path(SYSTEM_PYTHON).exists() and shutil.which("ogrinfo")):
            return False
        return subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], env=_system_env(),
                              capture_output=True).returncode == 0

    if ready():
        return
    install = "apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"QGIS 3.22 (PyQGIS for {SYSTEM_PYTHON}) and GDAL's ogrinfo are needed: "
                    f"run `{install}` as root (Debian 12), then rerun")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
    subprocess.run(install.split(), check=True, env=env, capture_output=True)
    assert ready(), f"{install} ran but PyQGIS still does not import under {SYSTEM_PYTHON}"


def fill_over_white(rgba) -> np.ndarray:
    rgb, a = np.array(rgba[:3], float), rgba[3] / 255
    return a * rgb + (1 - a) * 255


@pytest.mark.slow
def test_the_run_opens_styled_in_qgis(iburi_run, tmp_path):
    ensure_qgis()
    run = tmp_path / "run"
    shutil.copytree(iburi_run, run)  # QGIS may touch the files it opens; keep the session's run intact
    ogr = subprocess.run(["ogrinfo", "-ro", "-al", str(run / "landslides.gpkg")], capture_output=True,
                         text=True, env=_system_env())
    assert ogr.returncode == 0, ogr.stderr
    assert not re.search(r"warning|error", ogr.stderr + ogr.stdout[:2000], re.I), ogr.stderr
    version = subprocess.run(["ogrinfo", "--version"], capture_output=True, text=True).stdout
    validator = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")
    if validator.exists():  # GDAL's GeoPackage validator (python3-gdal)
        check = subprocess.run([SYSTEM_PYTHON, str(validator), str(run / "landslides.gpkg")],
                               capture_output=True, text=True, env=_system_env())
        assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr

    out = tmp_path / "png"
    proc = subprocess.run([SYSTEM_PYTHON, str(REPO / "tests" / "flows" / "qgis_render.py"), str(run),
                           str(out)], capture_output=True, text=True, env=_system_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["qgis"].startswith("3."), report["qgis"]
    assert "GDAL 3." in version

    # dragged in: the GeoPackage's default styles and the .qml sidecars apply
    lands, foot = report["gpkg_layers"]["landslides"], report["gpkg_layers"]["footprint"]
    assert lands["valid"] and lands["renderer"] == "graduatedSymbol" and lands["attr"] == "mean_prob"
    assert [(r["lower"], r["upper"]) for r in lands["ranges"]] == [(c.lower, c.upper) for c in PROB_CLASSES]
    assert lands["aliases"]["mean_prob"] == LANDSLIDE_FIELDS["mean_prob"].alias
    assert foot["valid"] and foot["renderer"] == "singleSymbol"
    assert [(s["style"], s["outline_style"]) for s in foot["symbol_layers"]] == [("no", "dash")]
    assert {k: v["renderer"] for k, v in report["rasters"].items()} == {
        "probability": "singlebandpseudocolor", "uncertainty": "singlebandpseudocolor", "mask": "paletted"}

    # run.qgs: every layer found through its relative path, in order, the styles applied
    assert report["project_read"] and report["project_crs"] == "EPSG:32654"
    layers = report["project_layers"]
    assert [(lyr["name"], lyr["visible"], lyr["valid"]) for lyr in layers] == [
        ("footprint (analysed area)", True, True), ("landslides", True, True), ("mask", False, True),
        ("probability", True, True), ("uncertainty", False, True)]
    assert [lyr["renderer"] for lyr in layers] == ["singleSymbol", "graduatedSymbol", "paletted",
                                                   "singlebandpseudocolor", "singlebandpseudocolor"]
    assert all(Path(lyr["source"].split("|")[0]).resolve().parent == run.resolve() for lyr in layers)

    # the map: probability background not black
    project = np.asarray(Image.open(out / "project.png").convert("RGB")).astype(int)
    black = (project.max(axis=2) < 16).mean()
    assert black < 0.05, f"{black:.1%} of the map is black"

    # the landslides alone: drawn in the style's colours exactly where mask.tif says landslide
    lands_img = np.asarray(Image.open(out / "landslides.png").convert("RGB")).astype(float)
    with rasterio.open(run / "mask.tif") as src:
        mask, transform = src.read(1), src.transform
    assert tuple(report["size"]) == (mask.shape[1], mask.shape[0])  # one image pixel per raster pixel
    inside = ndimage.binary_erosion(mask == 1, iterations=2)  # away from the outlines
    outside = ndimage.binary_erosion(mask == 0, iterations=2)
    gdf = gpd.read_file(run / "landslides.gpkg", layer="landslides")
    tree = STRtree(gdf.geometry.to_numpy())
    rows, cols = np.nonzero(inside)
    pick = np.random.default_rng(0).choice(len(rows), size=min(300, len(rows)), replace=False)
    misses = 0
    for r, c in zip(rows[pick], cols[pick]):
        x, y = transform * (c + 0.5, r + 0.5)
        hit = tree.query(Point(x, y), predicate="within")
        assert len(hit) == 1
        p = gdf["mean_prob"].iloc[hit[0]]
        cls = next(k for k in PROB_CLASSES if k.lower <= p <= k.upper)
        misses += np.abs(lands_img[r, c] - fill_over_white(cls.fill)).max() > 12
    assert misses <= 0.05 * len(pick), f"{misses} of {len(pick)} landslide pixels not in the style's colour"
    background = lands_img[outside]
    assert (background.min(axis=1) > 250).mean() > 0.98  # no fill outside the polygons

    assert not list(run.glob("*.aux.xml")), "QGIS wrote statistics beside the COGs"


def test_regional_inventory_has_styles_and_field_docs(iburi_run, tmp_path):
    from tasks.inventory.merge import merge_run
    from tasks.vector.fields import INVENTORY_FIELDS, SCAN_FIELDS
    from tasks.vector.styles import INVENTORY_CLASSES, INVENTORY_STYLE_EXPRESSION

    inv = tmp_path / "inventory.gpkg"
    merge_run(inv, iburi_run / "landslides.gpkg", "r1", ["s1"], "m@abc")
    assert query(inv, "PRAGMA user_version")[0][0] == GPKG_1_2_USER_VERSION
    rows = dict(query(inv, "SELECT f_table_name, styleQML FROM layer_styles WHERE useAsDefault = 1"))
    renderer = ET.fromstring(rows["landslides"]).find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol"
    assert renderer.get("attr") == INVENTORY_STYLE_EXPRESSION  # status, rejected reviews apart
    categories = [(c.get("value"), c.get("label")) for c in renderer.iter("category")]
    assert categories == [("new", "new"), ("known", "known"), ("rejected", "rejected by a reviewer")]
    assert categories == [(c.value, c.label) for c in INVENTORY_CLASSES]
    colours = {p.get("v") for p in renderer.iter("prop") if p.get("k") == "color"}
    assert len(colours) == len(INVENTORY_CLASSES)  # distinct colours
    brushes = [p.get("v") for p in renderer.iter("prop") if p.get("k") == "style"]
    assert brushes == ["solid", "solid", "b_diagonal"]  # rejected: hatched
    props = {p.get("k"): p.get("v") for p in ET.fromstring(rows["scans"]).iter("prop")}
    assert props["style"] == "no" and props["outline_style"] == "dash"
    for layer, docs in (("landslides", INVENTORY_FIELDS), ("scans", SCAN_FIELDS)):
        documented = {r[0] for r in query(inv, "SELECT column_name FROM gpkg_data_columns "
                                               "WHERE table_name = ?", layer)}
        assert documented == set(attribute_columns(inv, layer)) and documented <= set(docs), layer
    assert GPKG_DATETIME.match(query(inv, "SELECT merged_at FROM scans")[0][0])
