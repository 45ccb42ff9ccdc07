"""prefect.yaml declares a loadable deployment of the scan flow with a cron schedule."""

from __future__ import annotations

import yaml


def test_prefect_yaml_deployment(repo, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    dep = deployments["iburi-2018-weekly"]
    assert dep["work_pool"]["name"] and dep["parameters"]["region"] == "iburi-2018"
    assert "{run_id}" in dep["parameters"]["out"]
    from prefect.client.schemas.schedules import CronSchedule

    CronSchedule(cron=dep["schedules"][0]["cron"], timezone="UTC")  # raises on an invalid cron
    monkeypatch.chdir(repo)
    flow = load_flow_from_entrypoint(dep["entrypoint"])
    assert flow.name == "landslide-scan"
    params = set(flow.parameters.properties)
    assert set(dep["parameters"]) <= params, set(dep["parameters"]) - params


def test_regional_deployments_load_and_match_the_flow(repo, monkeypatch):
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    from tasks.sources.catalog import load_catalog

    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    regional = [d for d in spec["deployments"] if d["entrypoint"].endswith(":regional_scan_flow")]
    assert {d["name"] for d in regional} == {"iburi-2018-regional-weekly", "iburi-2018-regional-dask"}
    monkeypatch.chdir(repo)
    flow = load_flow_from_entrypoint(regional[0]["entrypoint"])
    assert flow.name == "landslide-regional-scan"
    catalog = load_catalog(repo / "data_catalog.yaml")
    for dep in regional:
        CronSchedule(cron=dep["schedules"][0]["cron"], timezone="UTC")
        assert set(dep["parameters"]) <= set(flow.parameters.properties)
        catalog.region(dep["parameters"]["region"])  # a region of the catalog
    dask = next(d for d in regional if "dask" in d["name"])
    assert dask["parameters"]["options"]["workers"] == 2
