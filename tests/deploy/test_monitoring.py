"""Prometheus scrapes every service where it serves metrics, and Grafana loads the compose
Prometheus and the dashboard."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest

from tests.deploy.compose import (
    _compose_settings,
    _depends_on,
    _environment,
    _host_path,
    _metrics_addr,
    _services,
)
from tests.deploy.manifests import (
    COMPOSE_DIR,
    DASHBOARD_FILE,
    METRICS_PORT,
    PROMETHEUS_FILE,
    SERVICE_ADDR,
    _host_port,
    _map,
)
from tests.deploy.monitoring import _grafana, _provisioning, _scrape_targets, _served_metrics_port


def test_bind_mount_lookup() -> None:
    svc = {"volumes": ["./a:/etc/a:ro", "data:/var/lib/x", "../b/c.json:/etc/c.json"]}
    assert _host_path(svc, "/etc/a/x.yaml") == COMPOSE_DIR / "a" / "x.yaml"
    assert _host_path(svc, "/etc/c.json") == (COMPOSE_DIR / "../b/c.json").resolve()
    assert _host_path(svc, "/var/lib/x") is None
    assert _host_path(svc, "/etc/ab") is None


@pytest.mark.parametrize("name", list(SERVICE_ADDR))
def test_compose_services_serve_metrics_to_other_containers(name: str) -> None:
    settings = _compose_settings(name)
    assert _metrics_addr(settings) == ("0.0.0.0", METRICS_PORT), f"{name}: {settings.metrics_addr}"
    _, grpc_port = _host_port(getattr(settings, SERVICE_ADDR[name]))
    assert grpc_port != METRICS_PORT


def test_prometheus_scrapes_every_service_where_it_serves_metrics() -> None:
    services = _services()
    targets = _scrape_targets()
    for target in targets:
        assert target.service in services, f"{target.job}: no compose service {target.service}"
        served = _served_metrics_port(target.service)
        assert target.port == served, f"{target.job}: scrapes :{target.port}, served on :{served}"
        replicas = int(
            _map(services[target.service].get("deploy") or {}, "deploy").get("replicas", 1)
        )
        if replicas > 1:
            # A static target resolves the name to one replica at a time: each scrape would hit
            # whichever answered, mixing their counters into one series.
            assert target.discovery == "dns", f"{target.service} has {replicas} replicas"
    scraped = {t.service for t in targets}
    assert scraped >= {*SERVICE_ADDR, "otel-collector"}, (
        f"not scraped: {set(SERVICE_ADDR) - scraped}"
    )


def test_prometheus_service_reads_the_config() -> None:
    svc = _services()["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", str(svc["image"])), "pin the image"
    flags = dict(str(a).partition("=")[::2] for a in svc.get("command", []))
    config_path = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
    assert _host_path(svc, config_path) == PROMETHEUS_FILE, f"{config_path} is not prometheus.yml"
    assert "--web.listen-address" not in flags, "the datasource below expects port 9090"
    assert "9090:9090" in [str(p) for p in svc["ports"]]


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    svc = _grafana()
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", str(svc["image"])), "pin the image"
    [datasource] = [ds for doc in _provisioning("datasources") for ds in doc["datasources"]]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert (url.scheme, url.hostname, url.port) == ("http", "prometheus", 9090), datasource["url"]
    assert _depends_on(svc).get("prometheus") == "service_healthy"


def test_grafana_loads_the_dashboard() -> None:
    svc = _grafana()
    [provider] = [p for doc in _provisioning("dashboards") for p in doc["providers"]]
    assert provider["type"] == "file"
    # The provider loads every JSON file in its folder: the dashboard must be mounted there.
    inside = str(PurePosixPath(provider["options"]["path"]) / DASHBOARD_FILE.name)
    assert _host_path(svc, inside) == DASHBOARD_FILE, f"{DASHBOARD_FILE.name} is not at {inside}"
    assert DASHBOARD_FILE.is_file()
    home = _environment(svc).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is not None:
        assert _host_path(svc, home) == DASHBOARD_FILE, f"home dashboard {home} is not mounted"
