"""Reading what Prometheus scrapes and what Grafana provisions and shows (deploy/compose,
deploy/grafana). A helper, not a test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from tests.deploy.compose import _compose_settings, _host_path, _metrics_addr, _services
from tests.deploy.manifests import (
    DASHBOARD_FILE,
    OTEL_COLLECTOR_FILE,
    PROMETHEUS_FILE,
    SERVICE_ADDR,
    _host_port,
    _list,
    _load,
    _map,
)


def _prometheus_config() -> dict[str, Any]:
    [doc] = _load(PROMETHEUS_FILE)
    return _map(doc, "prometheus.yml")


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    service: str
    port: int
    discovery: str  # "static" or "dns"


def _scrape_targets() -> list[ScrapeTarget]:
    jobs = _list(_prometheus_config().get("scrape_configs"), "scrape_configs")
    names = [str(_map(job, "scrape config")["job_name"]) for job in jobs]
    assert len(names) == len(set(names)), f"duplicate job names {names}"
    targets: list[ScrapeTarget] = []
    for job in jobs:
        known = {"job_name", "static_configs", "dns_sd_configs", "metrics_path", "scrape_interval"}
        assert job.keys() <= known, (
            f"{job['job_name']}: unchecked keys {sorted(job.keys() - known)}"
        )
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = _host_port(str(target))
                targets.append(ScrapeTarget(job["job_name"], host, port, "static"))
        for dns in job.get("dns_sd_configs", []):
            # Type A names carry no port: the config gives it (SRV records would).
            assert dns.get("type") == "A" and isinstance(dns.get("port"), int), dns
            for host in dns["names"]:
                targets.append(ScrapeTarget(job["job_name"], str(host), dns["port"], "dns"))
    return targets


def _collector_metrics_port() -> int:
    """The port the OpenTelemetry collector serves its own metrics on (otel-collector.yaml)."""
    [config] = _load(OTEL_COLLECTOR_FILE)
    readers = config["service"]["telemetry"]["metrics"]["readers"]
    [prometheus] = [r["pull"]["exporter"]["prometheus"] for r in readers]
    assert prometheus["host"] == "0.0.0.0", "the collector's metrics are not reachable"
    port = prometheus["port"]
    assert isinstance(port, int)
    return port


def _served_metrics_port(service: str) -> int:
    if service in SERVICE_ADDR:
        return _metrics_addr(_compose_settings(service))[1]
    if service == "otel-collector":
        return _collector_metrics_port()
    raise AssertionError(
        f"Prometheus scrapes {service}, whose metrics port this test does not know"
    )


def _grafana() -> dict[str, Any]:
    return _services()["grafana"]


def _provisioning(kind: str) -> list[dict[str, Any]]:
    """Grafana's provisioning files of `kind` (datasources, dashboards), from the mounts."""
    folder = _host_path(_grafana(), f"/etc/grafana/provisioning/{kind}")
    assert folder is not None and folder.is_dir(), f"no {kind} provisioning mounted"
    files = sorted(p for p in folder.iterdir() if p.suffix in {".yaml", ".yml"})
    assert files, f"{folder} has no provisioning files"
    docs = [_map(doc, str(path)) for path in files for doc in _load(path)]
    for doc in docs:
        assert doc.get("apiVersion") == 1, doc
    return docs


@cache
def _dashboard() -> dict[str, Any]:
    with DASHBOARD_FILE.open(encoding="utf-8") as f:
        return _map(json.load(f), DASHBOARD_FILE.name)


def _panels() -> list[dict[str, Any]]:
    """Every panel, rows' nested ones included."""
    out: list[dict[str, Any]] = []
    for panel in _list(_dashboard()["panels"], "panels"):
        out.append(_map(panel, "panel"))
        out.extend(_map(p, "panel") for p in panel.get("panels", []))
    return out


def _variables() -> dict[str, dict[str, Any]]:
    variables = _list(_dashboard()["templating"]["list"], "templating")
    return {str(v["name"]): _map(v, "variable") for v in variables}


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    return str(query.get("query") if isinstance(query, dict) else query)


def _dashboard_queries() -> list[str]:
    return [
        str(target["expr"])
        for panel in _panels()
        if panel.get("type") != "row"
        for target in panel.get("targets", [])
    ]
