"""Just enough PromQL to check the dashboard's queries: the metrics a query names, the call
that encloses each, and the mistakes a query can make with them. A helper, not a test."""

from __future__ import annotations

import re

from tests.deploy.manifests import (
    DEFAULT_METRIC_PREFIXES,
    HISTOGRAM_SUFFIXES,
    KNOWN_METRICS,
    REPLICATED_GAUGE_PREFIX,
)

# What is not a metric name in a PromQL expression: strings, label matchers, range and subquery
# brackets, and grouping clauses (their label lists). Blanked to spaces so positions hold.
PROMQL_NOISE = re.compile(
    r'"(?:[^"\\]|\\.)*"|\{[^}]*\}|\[[^\]]*\]'
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)


PROMQL_NAME = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")


PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "group_left", "group_right", "inf", "nan"}
)


def _promql_blank(expr: str) -> str:
    return PROMQL_NOISE.sub(lambda m: " " * len(m.group()), expr)


def _promql_metrics(expr: str) -> list[tuple[str, str | None]]:
    """Each metric selector in `expr`, with the function or aggregation directly around it
    (None when there is none)."""
    text = _promql_blank(expr)
    found: list[tuple[str, str | None]] = []
    for m in PROMQL_NAME.finditer(text):
        name = m.group()
        if name.lower() in PROMQL_KEYWORDS or text[m.end() :].lstrip().startswith("("):
            continue  # an operator, or a function or aggregation being called
        found.append((name, _enclosing_call(text, m.start())))
    return found


def _enclosing_call(text: str, pos: int) -> str | None:
    depth = 0
    for i in range(pos - 1, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            if depth == 0:
                call = re.search(r"([A-Za-z_]\w*)\s*$", text[:i])
                return call.group(1) if call else None
            depth -= 1
    return None


def _metric_family(name: str) -> str:
    """The name KNOWN_METRICS lists for a series name: histograms by their family name."""
    for suffix in HISTOGRAM_SUFFIXES:
        family = name.removesuffix(suffix)
        if family != name and KNOWN_METRICS.get(family) == "histogram":
            return family
    return name


def _promql_problems(expr: str) -> list[str]:
    """What is wrong with how `expr` uses Conveyor's metrics."""
    problems: list[str] = []
    for name, around in _promql_metrics(expr):
        if name.startswith(DEFAULT_METRIC_PREFIXES):
            continue
        family = _metric_family(name)
        kind = KNOWN_METRICS.get(family)
        if kind is None:
            problems.append(f"{name}: no such metric")
        elif kind == "histogram" and family == name:
            problems.append(f"{name}: a histogram is queried by its _bucket, _sum or _count")
        elif (kind == "counter" or family != name) and around not in {"rate", "irate", "increase"}:
            problems.append(f"{name}: a counter is only meaningful through rate() or increase()")
        elif name.startswith(REPLICATED_GAUGE_PREFIX) and around != "max":
            problems.append(
                f"{name}: every api replica reports it, aggregate with max, not {around}"
            )
    if "histogram_quantile" in expr and not re.search(r"\bby\s*\([^)]*\ble\b", expr):
        problems.append("histogram_quantile over buckets aggregated without `le`")
    return problems
