"""data_catalog.yaml: the shipped catalog validates; typos and bad values are clear errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from tasks.core.bands import BAND_NAMES, L4S_SCALE, normalize_band_name, validate_bands
from tasks.core.errors import InputError
from tasks.sources.catalog import load_catalog


def test_shipped_catalog_has_both_entries(catalog_path):
    cat = load_catalog(catalog_path)
    iburi = cat.region("iburi-2018")
    assert iburi.source == "iburi-2018-local"
    src = cat.source(iburi.source)
    assert src.scenes[0].band_names == ("B02", "B03", "B04")
    assert cat.resolve(src.dem).exists()
    t18 = cat.source(cat.region("t18svg-2016").source)
    scene = t18.scenes[0]
    assert scene.band_names == tuple(BAND_NAMES[:12])  # all 12 L4S bands, B10 included, no B8A
    for band in scene.band_names:
        assert scene.band_path(band, cat.root).exists(), band


def test_misspelled_key_is_named(tmp_path, catalog_path):
    raw = yaml.safe_load(catalog_path.read_text())
    raw["sources"]["iburi-2018-local"]["scenes"][0]["band_templte"] = "x_{band}.tif"
    bad = tmp_path / "cat.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="unknown key .*band_templte"):
        load_catalog(bad)


def test_unknown_region_lists_the_known_ones(catalog_path):
    with pytest.raises(InputError, match="unknown region 'nowhere'.*iburi-2018"):
        load_catalog(catalog_path).region("nowhere")


def test_unknown_band_in_catalog(tmp_path):
    bad = tmp_path / "cat.yaml"
    bad.write_text(yaml.safe_dump({"sources": {"s": {"kind": "local", "scenes": [
        {"scene_id": "a", "acquired": "2020-01-01T00:00:00Z", "bands": {"B13": "x.tif"}}]}}}))
    with pytest.raises(InputError, match="B13"):
        load_catalog(bad)


def test_source_kind_must_be_known(tmp_path):
    bad = tmp_path / "cat.yaml"
    bad.write_text(yaml.safe_dump({"sources": {"s": {"kind": "ftp"}}}))
    with pytest.raises(InputError, match="kind"):
        load_catalog(bad)


def test_not_yaml_and_missing(tmp_path):
    bad = tmp_path / "cat.yaml"
    bad.write_text("sources: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_catalog(bad)
    with pytest.raises(InputError, match="not found"):
        load_catalog(tmp_path / "missing.yaml")


def test_scene_dates(catalog_path):
    src = load_catalog(catalog_path).source("iburi-2018-local")
    post, pre = src.scenes
    assert post.overlaps(dt.date(2018, 9, 7), None)
    assert not pre.overlaps(dt.date(2018, 9, 7), None)
    assert pre.overlaps(None, dt.date(2018, 1, 1))


def test_band_contract():
    assert len(BAND_NAMES) == 14 and BAND_NAMES[9] == "B10" and BAND_NAMES[-2:] == ("SLOPE", "DEM")
    assert len(L4S_SCALE) == 14
    assert normalize_band_name("b4") == "B04"
    assert validate_bands(["DEM", "B04", "b02"]) == ("B02", "B04", "DEM")
    with pytest.raises(InputError, match="B8A is not part"):
        normalize_band_name("B8A")
    with pytest.raises(InputError, match="twice"):
        validate_bands(["B02", "b2"])


@pytest.mark.parametrize("name", ["pc-l2a-alos", "earth-search-l1c", "cdse-sentinelhub"])
def test_commented_catalog_examples_validate(tmp_path, name):
    """Each commented-out example of a real service in data_catalog.yaml is a valid entry."""
    shipped = (Path(__file__).resolve().parents[2] / "data_catalog.yaml").read_text()
    block = shipped.split(f"# BEGIN {name}\n", 1)[1].split(f"  # END {name}", 1)[0]
    entry = "\n".join(line.replace("  # ", "  ", 1) for line in block.splitlines())
    path = tmp_path / "data_catalog.yaml"
    path.write_text("version: 1\nsources:\n" + entry + "\n")
    assert load_catalog(path).source(name)
