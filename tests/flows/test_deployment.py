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
