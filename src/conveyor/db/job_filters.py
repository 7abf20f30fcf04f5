"""A ListJobs filter (`conveyor.jobs.filters`) as a where-clause on the jobs table, for
PostgreSQL and SQLite alike. Every value is a bound parameter.

Each restriction compiles to an expression that is never NULL (a missing label, payload
key or finish time makes it false, not unknown), so `NOT` and `!=` mean "everything
else": a job without the label is not equal to any value of it.

Two things the table does not say by itself:
- RUNNING is never written to the database: a running job's row says QUEUED or RETRYING
  (Redis holds its lease). The caller passes the ids running now, and `state = RUNNING`
  is "one of those", `state = QUEUED` "QUEUED and not one of those".
- On PostgreSQL, label and payload equality are JSONB containment (`@>`), which the GIN
  index on labels (jsonb_path_ops, migration 0009) serves; presence (`labels.k:*`) is
  the `?` operator, which that index does not serve (the owner/id index bounds it).
  On SQLite (dev mode) both are json_type/json_extract on the row.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, cast

from sqlalchemy import ColumnElement, String, Table, and_, func, literal, not_, or_, type_coerce
from sqlalchemy.dialects.postgresql import JSONB

from conveyor.db.models import JobRow
from conveyor.jobs.filters import And, Filter, Not, Or, Restriction
from conveyor.jobs.model import JobState

_JOBS = cast(Table, JobRow.__table__)
_WAITING = (JobState.QUEUED, JobState.RETRYING)  # how a running job's row reads


def compile_filter(
    node: Filter, *, dialect: str, running: Collection[str] = ()
) -> ColumnElement[bool]:
    """`node` as a where-clause on `jobs` for `dialect` ("postgresql" or "sqlite"), with
    `running` the ids of the jobs running now."""
    return _Compiler(dialect == "postgresql", list(running)).compile(node)


class _Compiler:
    def __init__(self, postgres: bool, running: list[str]) -> None:
        self.postgres = postgres
        self.running = running

    def compile(self, node: Filter) -> ColumnElement[bool]:
        if isinstance(node, And):
            return and_(*(self.compile(o) for o in node.operands))
        if isinstance(node, Or):
            return or_(*(self.compile(o) for o in node.operands))
        if isinstance(node, Not):
            return not_(self.compile(node.operand))
        equal = self.restriction(node)
        return not_(equal) if node.comparator == "!=" else equal

    def restriction(self, r: Restriction) -> ColumnElement[bool]:
        """What `r` selects, with `!=` read as `=` (the caller negates it)."""
        field = r.path[0]
        if field == "state":
            return self.state(cast(JobState, r.value))
        if field == "labels":
            return self.label(r.path[1], r.comparator, cast(str, r.value))
        if field == "payload":
            return self.payload(r.path[1:], r.value)
        if field == "error":
            return _JOBS.c.error.icontains(cast(str, r.value), autoescape=True)
        if field in ("create_time", "finish_time"):
            return _time(_JOBS.c[field], r.comparator, cast(int, r.value))
        return _JOBS.c[field] == r.value

    def state(self, state: JobState) -> ColumnElement[bool]:
        running = _JOBS.c.id.in_(self.running)
        if state is JobState.RUNNING:
            return running
        stored = _JOBS.c.state == int(state)
        return and_(stored, not_(running)) if state in _WAITING else stored

    def label(self, key: str, comparator: str, value: str) -> ColumnElement[bool]:
        column = _JOBS.c.labels
        if self.postgres:
            document = type_coerce(column, JSONB)
            if comparator == ":":
                return cast(ColumnElement[bool], document.has_key(key))
            return document.contains({key: value})
        path = _sqlite_path((key,))
        if comparator == ":":
            return func.json_type(column, path).is_not(None)
        return and_(_sqlite_type(column, path) == "text", func.json_extract(column, path) == value)

    def payload(self, path: tuple[str, ...], value: Any) -> ColumnElement[bool]:
        column = _JOBS.c.payload
        if self.postgres:
            doc: Any = value
            for name in reversed(path):
                doc = {name: doc}
            return type_coerce(column, JSONB).contains(doc)
        where = _sqlite_path(path)
        kind = _sqlite_type(column, where)
        if value is None:
            return kind == "null"
        if isinstance(value, bool):
            return kind == ("true" if value else "false")
        extracted = func.json_extract(column, where)
        if isinstance(value, str):
            return and_(kind == "text", extracted == value)
        return and_(kind.in_(("integer", "real")), extracted == value)


def create_time_range(node: Filter) -> tuple[int | None, int | None]:
    """[start, end) in epoch ms that every job `node` selects was created in, from the
    `create_time` comparisons it requires (those at its top level, ANDed with the rest);
    None where it sets no bound. JobStore.list_jobs turns them into id bounds, so a time
    filter scans a range of the index it walks (ids are UUIDv7: time first)."""
    start: int | None = None
    end: int | None = None
    for r in _required(node):
        if r.path != ("create_time",) or not isinstance(r.value, int):
            continue
        low, high = {
            ">": (r.value + 1, None),
            ">=": (r.value, None),
            "<": (None, r.value),
            "<=": (None, r.value + 1),
            "=": (r.value, r.value + 1),
        }.get(r.comparator, (None, None))
        if low is not None:
            start = low if start is None else max(start, low)
        if high is not None:
            end = high if end is None else min(end, high)
    return start, end


def _required(node: Filter) -> list[Restriction]:
    """The restrictions every match satisfies: `node` itself, or an AND's operands'."""
    if isinstance(node, Restriction):
        return [node]
    if isinstance(node, And):
        return [r for operand in node.operands for r in _required(operand)]
    return []


def _time(column: Any, comparator: str, ms: int) -> ColumnElement[bool]:
    """A comparison with a time column that may be NULL (an unfinished job's finish_time):
    NULL compares as never equal and never in range."""
    compared = {
        "<": column < ms,
        "<=": column <= ms,
        ">": column > ms,
        ">=": column >= ms,
        "=": column == ms,
        "!=": column == ms,  # negated by the caller
    }[comparator]
    if column.nullable:
        return and_(column.is_not(None), compared)
    return cast(ColumnElement[bool], compared)


def _sqlite_path(names: tuple[str, ...]) -> Any:
    """A JSON path naming each key quoted (`$."a"."b.c"`), so dots and dashes in a key are
    part of it; a bound parameter like any value."""
    return literal("$" + "".join(f'."{name}"' for name in names), String)


def _sqlite_type(column: Any, path: Any) -> ColumnElement[Any]:
    """json_type of `path`, '' when it is missing (so comparisons are never NULL)."""
    return func.coalesce(func.json_type(column, path), "")
