"""The PromQL helper finds the metrics a query names and the mistakes it makes."""

from __future__ import annotations

from tests.deploy.promql import _metric_family, _promql_metrics, _promql_problems


def test_promql_parsing() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (type, le) "
        '(rate(conveyor_job_wait_seconds_bucket{queue=~"a|b"}[$__rate_interval])))'
    )
    assert _promql_metrics(expr) == [("conveyor_job_wait_seconds_bucket", "rate")]
    assert _promql_metrics('max by (queue) (conveyor_queue_depth{queue="default"}) + 1e3') == [
        ("conveyor_queue_depth", "max")
    ]
    assert _promql_metrics("sum(conveyor_queue_depth) or vector(0)") == [
        ("conveyor_queue_depth", "sum")
    ]
    assert _promql_metrics("process_resident_memory_bytes offset 5m") == [
        ("process_resident_memory_bytes", None)
    ]
    assert _metric_family("conveyor_job_run_seconds_count") == "conveyor_job_run_seconds"
    assert _metric_family("conveyor_queue_depth_count") == "conveyor_queue_depth_count"


def test_promql_checks_catch_mistakes() -> None:
    good = 'max by (queue) (conveyor_queue_depth{queue=~"$queue"})'
    assert _promql_problems(good) == []
    for bad in (
        "sum by (queue) (conveyor_queue_depth)",  # counts each job once per api replica
        "conveyor_queue_running",
        "sum(conveyor_jobs_submitted_total)",  # a raw counter
        "rate(conveyor_job_run_seconds[5m])",  # a histogram's family name is no series
        "histogram_quantile(0.5, sum by (type) (rate(conveyor_job_run_seconds_bucket[5m])))",
        "rate(conveyor_jobs_submited_total[5m])",  # misspelt
    ):
        assert _promql_problems(bad), bad
