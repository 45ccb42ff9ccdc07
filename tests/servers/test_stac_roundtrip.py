"""A run's ``item.json`` read back over HTTP on 127.0.0.1 (issue 18), two ways:

1. the run folder served as static files (``devservers.static_files.StaticFileServer``, a static
   catalog as on any web server or bucket): ``pystac`` reads the item, resolves its relative asset
   hrefs against the item's URL, and the assets download byte for byte;
2. a STAC API (``rustac serve``, ``devservers.stac_server.RustacServer``) over an item collection
   holding the item (with a ``collection`` and absolute asset hrefs to the static server, as an API
   serves them): ``pystac-client`` finds it by bbox and time and reads it back unchanged.

Uses the session's sample run (``sample_run`` in tests/conftest.py).
"""

from __future__ import annotations

import json

import pystac
import pytest
import requests
import shapely

from devservers.stac_server import RustacServer, find_rustac
from devservers.static_files import StaticFileServer
from tasks.run.stac import stac_errors

COLLECTION = "landslide-runs"


@pytest.fixture(scope="module")
def served_run(sample_run):
    with StaticFileServer(sample_run) as server:
        yield server


def test_pystac_reads_the_item_from_a_static_server_and_its_assets_resolve(sample_run, served_run):
    url = f"{served_run.url}/item.json"
    item = pystac.Item.from_file(url)
    local = json.loads((sample_run / "item.json").read_text())
    assert item.id == local["id"]
    assert shapely.geometry.shape(item.geometry).equals(shapely.geometry.shape(local["geometry"]))
    for key, asset in item.assets.items():
        href = asset.get_absolute_href()
        assert href == f"{served_run.url}/{local['assets'][key]['href'][2:]}", key
    for key in ("manifest", "quicklook"):
        body = requests.get(item.assets[key].get_absolute_href(), timeout=10)
        assert body.status_code == 200
        assert body.content == (sample_run / local["assets"][key]["href"]).read_bytes()


@pytest.mark.skipif(find_rustac() is None, reason="rustac is not installed (pip install rustac)")
def test_pystac_client_finds_the_item_on_a_stac_api(sample_run, served_run, tmp_path):
    from pystac_client import Client

    item = json.loads((sample_run / "item.json").read_text())
    items_path = tmp_path / "items.json"
    server = RustacServer(items_path)  # its port is chosen now: the item links to its collection
    served = dict(item, collection=COLLECTION,
                  links=[{"rel": "collection", "href": f"{server.url}/collections/{COLLECTION}",
                          "type": "application/json"}])
    served["assets"] = {k: dict(a, href=f"{served_run.url}/{a['href'][2:]}") for k, a in item["assets"].items()}
    assert stac_errors(served) == []
    items_path.write_text(json.dumps({"type": "FeatureCollection", "features": [served]}))
    server.start()
    try:
        client = Client.open(server.url)
        props = item["properties"]
        found = list(client.search(collections=[COLLECTION], bbox=item["bbox"],
                                   datetime=[props["start_datetime"], props["end_datetime"]]).items())
        assert [i.id for i in found] == [item["id"]]
        got = found[0]
        assert shapely.geometry.shape(got.geometry).equals(shapely.geometry.shape(item["geometry"]))
        assert got.properties["landslide:polygons"] == props["landslide:polygons"]
        assert got.assets["landslides"].media_type == item["assets"]["landslides"]["type"]
        gpkg = requests.get(got.assets["landslides"].href, timeout=10)
        assert gpkg.content == (sample_run / "landslides.gpkg").read_bytes()
        # a bbox elsewhere finds nothing
        assert list(client.search(collections=[COLLECTION], bbox=[0, 0, 1, 1]).items()) == []
    finally:
        server.stop()
