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


def test_one_scheduled_deployment_per_region_and_it_is_the_incremental_one(repo):
    """`prefect deploy --all` must not switch on two schedules that scan the same region."""
    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    active: dict[str, list[str]] = {}
    for dep in spec["deployments"]:
        if any(s.get("active", True) for s in dep.get("schedules") or []):
            active.setdefault(dep["parameters"]["region"], []).append(dep)
    assert active, "no scheduled deployment at all"
    for region, deps in active.items():
        assert len(deps) == 1, f"{region}: {[d['name'] for d in deps]} are all scheduled"
        assert deps[0]["entrypoint"].endswith(":regional_scan_flow"), deps[0]["name"]
