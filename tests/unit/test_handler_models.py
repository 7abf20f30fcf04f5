"""The handler API's typed side: a payload model taken from the annotation or given to
@handler, its violations named like request fields, the parsed model handed to the
handler, a worker-side refusal that is permanent, and results from models."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel, Field

from conveyor.errors import InvalidArgument
from conveyor.handlers import PermanentError, Registry, SyncJobContext, handler
from conveyor.testing import run_handler
from conveyor.worker.runner import job_result


class Report(BaseModel, extra="forbid"):
    account: str = Field(min_length=1)
    months: list[int] = Field(default_factory=list, max_length=3)


def test_the_model_comes_from_the_annotation_and_is_what_the_handler_gets() -> None:
    registry = Registry()

    @handler("report", timeout=timedelta(minutes=2), retention=timedelta(days=1),
             registry=registry)  # fmt: skip
    def report(payload: Report, ctx: SyncJobContext) -> Report:
        assert isinstance(payload, Report)
        return payload

    spec = registry.get("report")
    assert spec is not None and spec.payload_model is Report
    assert spec.timeout_seconds == 120 and spec.retention_seconds == 86_400
    run = run_handler(spec, {"account": "acme", "months": [1, 2]})
    assert run.result == Report(account="acme", months=[1, 2])
    assert job_result(run.result) == {"account": "acme", "months": [1, 2]}


def test_violations_name_each_field_under_the_given_prefix() -> None:
    registry = Registry()
    handler("report", payload=Report, registry=registry)(lambda payload, ctx: None)
    spec = registry.get("report")
    assert spec is not None
    bad = spec.violations({"account": "", "months": [1, "x"], "extra": 1}, "payload")
    assert {v.field for v in bad} == {"payload.account", "payload.months[1]", "payload.extra"}
    too_many = spec.violations({"account": "a", "months": [1, 2, 3, 4]}, "payload")
    assert [v.field for v in too_many] == ["payload.months"]
    assert spec.violations({"account": "a"}, "requests[2].payload") == []
    with pytest.raises(InvalidArgument):
        run_handler(spec, {"account": ""})


def test_a_payload_the_worker_refuses_is_permanent() -> None:
    """A job submitted through an API that did not load the type reaches a worker that
    does: running it again would fail the same way, so no retries."""
    registry = Registry()
    handler("report", payload=Report, registry=registry)(lambda payload, ctx: None)
    spec = registry.get("report")
    assert spec is not None
    with pytest.raises(PermanentError, match=r"payload\.account"):
        spec.parse({"months": []})


def test_a_plain_dict_handler_has_no_model() -> None:
    registry = Registry()
    handler("plain", registry=registry)(lambda payload, ctx: None)
    spec = registry.get("plain")
    assert spec is not None and spec.payload_model is None
    assert spec.violations({"anything": 1}) == [] and spec.parse({"a": 1}) == {"a": 1}
