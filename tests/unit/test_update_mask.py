"""The update_mask rules both limit RPCs share (AIP-134), and that each mask's paths are the
fields of what it updates, so a field added to QueueLimits or UpdateApiKeyLimitsRequest
cannot be left out of its mask by accident."""

from __future__ import annotations

import pytest

from conveyor.api.update_mask import named_fields
from conveyor.db.keys import LIMIT_FIELDS as KEY_LIMIT_FIELDS
from conveyor.errors import InvalidArgument
from conveyor.jobs.queues import LIMIT_FIELDS, LimitChange, QueueSettings
from conveyor.v1 import api_key_service_pb2, job_service_pb2, queue_pb2


def request(*paths: str) -> job_service_pb2.UpdateQueueLimitsRequest:
    made = job_service_pb2.UpdateQueueLimitsRequest(queue="q")
    made.update_mask.SetInParent()
    made.update_mask.paths.extend(paths)
    return made


def test_no_mask_and_star_name_every_field_and_a_mask_names_its_paths() -> None:
    """Guards compatibility (no mask: every field, as before masks) and the mask itself."""
    no_mask = job_service_pb2.UpdateQueueLimitsRequest(queue="q")
    assert named_fields(no_mask, LIMIT_FIELDS) == set(LIMIT_FIELDS)
    assert named_fields(request("*"), LIMIT_FIELDS) == set(LIMIT_FIELDS)
    assert named_fields(request("rate_jobs", "max_running"), LIMIT_FIELDS) == {
        "rate_jobs",
        "max_running",
    }


@pytest.mark.parametrize(
    ("paths", "says"),
    [
        ((), ["names no field"]),
        (("limits.max_running",), ["unknown path 'limits.max_running'"]),
        (("rate_jobs", "rate_jobs", "nope"), ["named twice", "unknown path 'nope'"]),
        (("*", "*"), ["* must be the only path", "* must be the only path"]),
    ],
)
def test_a_bad_mask_names_each_bad_path_and_the_allowed_ones(
    paths: tuple[str, ...], says: list[str]
) -> None:
    """Guards the refusal: one violation on `update_mask` per bad path, each listing the
    paths a client may send."""
    with pytest.raises(InvalidArgument) as refused:
        named_fields(request(*paths), LIMIT_FIELDS)
    violations = refused.value.violations
    assert [v.field for v in violations] == ["update_mask"] * len(says)
    for violation, said in zip(violations, says, strict=True):
        assert said in violation.description
        assert ", ".join(LIMIT_FIELDS) + ", or * alone" in violation.description


def test_the_mask_paths_are_the_fields_of_what_is_updated() -> None:
    """Guards the two path lists against the protos: every QueueLimits field is a queue
    path, and every key path is a field of UpdateApiKeyLimitsRequest."""
    assert set(LIMIT_FIELDS) == set(queue_pb2.QueueLimits.DESCRIPTOR.fields_by_name)
    key_fields = api_key_service_pb2.UpdateApiKeyLimitsRequest.DESCRIPTOR.fields_by_name
    assert set(KEY_LIMIT_FIELDS) == set(key_fields) - {"id", "update_mask"}


def test_a_limit_change_keeps_what_it_does_not_name_and_validates_the_merge() -> None:
    """Guards the merge: unnamed limits stay, a rate named alone keeps the stored window,
    removing the rate clears the window, and a rate with no window is refused."""
    stored = QueueSettings("q", max_running=3, rate_jobs=5, rate_interval_ms=2000)
    assert LimitChange(rate_jobs=7).applied_to(stored) == QueueSettings(
        "q", max_running=3, rate_jobs=7, rate_interval_ms=2000
    )
    assert LimitChange(rate_jobs=0).applied_to(stored) == QueueSettings("q", max_running=3)
    with pytest.raises(InvalidArgument) as refused:
        LimitChange(rate_jobs=7).applied_to(QueueSettings("q"))
    assert [v.field for v in refused.value.violations] == ["limits.rate_interval"]
