"""The Grafana dashboard is ready to import, its panels do not overlap, and its PromQL
names only metrics the code defines, aggregated the way they must be."""

from __future__ import annotations

import re

from tests.deploy.manifests import DEFAULT_METRIC_PREFIXES, KNOWN_METRICS, _map
from tests.deploy.monitoring import (
    _dashboard,
    _dashboard_queries,
    _panels,
    _variable_query,
    _variables,
)
from tests.deploy.promql import _metric_family, _promql_metrics, _promql_problems


def test_dashboard_is_grafana_ready() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard.get("id") is None, "an exported id would clash on import"
    variables = _variables()
    # The datasource is a variable, so that the same file works provisioned (compose) and
    # imported by hand into any Grafana with a Prometheus datasource.
    [ds_name] = [n for n, v in variables.items() if v["type"] == "datasource"]
    assert variables[ds_name]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": f"${{{ds_name}}}"}
    panels = [p for p in _panels() if p.get("type") != "row"]
    users = [
        *panels,
        *(t for p in panels for t in p.get("targets", [])),
        *(v for v in variables.values() if v["type"] == "query"),
    ]
    assert len(panels) >= 12, "the dashboard lost its panels"
    for user in users:
        where = user.get("title") or user.get("name") or user.get("expr")
        assert user.get("datasource") == expected, f"{where} uses {user.get('datasource')}"
    queue = variables["queue"]
    assert queue["type"] == "query"
    assert re.sub(r"\s", "", _variable_query(queue)) == "label_values(conveyor_queue_depth,queue)"


def test_dashboard_panels_have_ids_and_do_not_overlap() -> None:
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = _map(panel.get("gridPos"), f"{panel['title']} gridPos")
        x, y, w, h = (pos[k] for k in ("x", "y", "w", "h"))
        assert all(isinstance(v, int) for v in (x, y, w, h)) and w > 0 and h > 0, panel["title"]
        assert x + w <= 24, f"{panel['title']} is wider than the dashboard"
        for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
            assert cell not in cells, f"{panel['title']} overlaps {cells[cell]}"
            cells[cell] = panel["title"]


def test_dashboard_queries_use_known_metrics_correctly() -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 15, "fewer queries than panels asked for"
    used: set[str] = set()
    for expr in queries:
        problems = _promql_problems(expr)
        assert not problems, f"{expr}: {problems}"
        used |= {_metric_family(name) for name, _ in _promql_metrics(expr)}
    for variable in _variables().values():
        if variable["type"] == "query":
            [(metric, _label)] = re.findall(
                r"label_values\((\w+),\s*(\w+)\)", _variable_query(variable)
            )
            assert metric in KNOWN_METRICS or metric.startswith(DEFAULT_METRIC_PREFIXES), metric
    # What the dashboard is for: each of these has a panel.
    assert used >= {
        "conveyor_queue_depth",
        "conveyor_queue_oldest_age_seconds",
        "conveyor_jobs_submitted_total",
        "conveyor_job_outcomes_total",
        "conveyor_job_wait_seconds",
        "conveyor_job_run_seconds",
        "conveyor_leases_reclaimed_total",
        "conveyor_stale_writes_refused_total",
        "conveyor_rate_limited_total",
        "conveyor_watch_streams",
        "conveyor_worker_running_jobs",
        "conveyor_worker_concurrency",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    }, f"no panel for {sorted(set(KNOWN_METRICS) - used)}"
