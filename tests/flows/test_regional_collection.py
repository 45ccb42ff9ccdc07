"""A region's state folder gets a STAC ``collection.json`` (issue 18): written when a regional run is
merged, it links every merged run's ``item.json`` (relative hrefs), holds the inventory as an asset,
and its extent is the union of the items' bboxes and times. Two real runs of the bundled Iburi pair
(pre- and post-event scene) on a small bbox with the weights-free index rule."""

from __future__ import annotations

import json
from pathlib import Path

from flows.regional import regional_scan_flow
from tasks.run.stac import stac_errors
from tests.flows.test_regional import POST, PRE, _catalog


def test_the_region_s_collection_links_its_runs_items_and_spans_them(prefect_harness, tmp_path):
    state, runs = tmp_path / "state", tmp_path / "runs"
    result = regional_scan_flow("atsuma", catalog=_catalog(tmp_path, [PRE, POST]), state_dir=str(state),
                                runs_dir=str(runs), detector="index")
    assert [r["scene_id"] for r in result["runs"]] == [PRE, POST]
    folder = state / "atsuma"
    collection = json.loads((folder / "collection.json").read_text())
    assert stac_errors(collection) == []
    assert collection["id"] == "landslides-atsuma" and collection["type"] == "Collection"

    links = [link for link in collection["links"] if link["rel"] == "item"]
    assert [link["title"] for link in links] == [r["run_id"] for r in result["runs"]]
    items = []
    for link in links:
        assert not link["href"].startswith("/") and "://" not in link["href"]
        path = (folder / link["href"]).resolve()
        assert path == (Path(result["runs"][len(items)]["run_dir"]) / "item.json").resolve()
        items.append(json.loads(path.read_text()))
    assert all(stac_errors(item) == [] for item in items)

    bbox = collection["extent"]["spatial"]["bbox"][0]
    assert bbox == [min(i["bbox"][0] for i in items), min(i["bbox"][1] for i in items),
                    max(i["bbox"][2] for i in items), max(i["bbox"][3] for i in items)]
    starts = [i["properties"].get("start_datetime") or i["properties"]["datetime"] for i in items]
    ends = [i["properties"].get("end_datetime") or i["properties"]["datetime"] for i in items]
    assert collection["extent"]["temporal"]["interval"] == [[min(starts), max(ends)]]
    assert starts[0] < starts[1]  # the pre-event composite's window comes first

    inventory = collection["assets"]["inventory"]
    assert inventory["href"] == "./inventory.gpkg" and (folder / "inventory.gpkg").exists()
    assert inventory["type"] == "application/geopackage+sqlite3"
