"""How the dashboard's limits forms become update calls (`conveyor.dashboard.admin_pages`)
and the SDK's key-limits request: only the inputs changed from the values the form was
drawn with are sent, under an update mask, and a value no message field can hold is
refused on the page, not a server error."""

from __future__ import annotations

from conveyor.client._client import key_limits_request
from conveyor.dashboard.admin_pages import QUEUE_LIMITS, _changed, _key_changes


def test_only_changed_queue_limits_are_sent() -> None:
    form = {
        "max_running": "7", "was_max_running": "0",
        "max_running_per_owner": "3", "was_max_running_per_owner": "3",
        "rate_jobs": "", "was_rate_jobs": "0",  # "" is 0: unchanged
        "rate_interval": "1.5", "was_rate_interval": "2",
    }  # fmt: skip
    changed, errors = _changed(form, QUEUE_LIMITS)
    assert (changed, errors) == ({"max_running": 7, "rate_interval": 1.5}, {})


def test_inputs_that_are_not_numbers_or_too_large_are_refused_by_input() -> None:
    form = {"max_running": "1.5", "shards": "99999999999", "rate_interval": "nan"}
    changed, errors = _changed(form, QUEUE_LIMITS)
    assert errors == {
        "max_running": "must be a whole number",
        "shards": "is out of range",
        "rate_interval": "is out of range",
    }
    assert changed == {}


def test_a_key_rate_goes_with_its_burst_and_empty_is_the_default() -> None:
    """Emptying a rate asks for the server's default, 0 is unlimited (not the same), a
    burst changed alone sends its rate too; limits left alone are not sent."""
    drawn = {"was_submit_rate": "5", "was_submit_burst": "10", "was_read_rate": "",
             "was_read_burst": "", "was_max_running_jobs": "0"}  # fmt: skip
    unchanged = {k.removeprefix("was_"): v for k, v in drawn.items()}
    assert _key_changes({**drawn, **unchanged}) == ({}, {})
    form = {**drawn, **unchanged, "submit_rate": "", "read_rate": "0"}
    assert _key_changes(form) == ({"submit_limit": "default", "read_limit": (0.0, 0.0)}, {})
    form = {**drawn, **unchanged, "submit_burst": "20", "max_running_jobs": "2"}
    assert _key_changes(form) == ({"submit_limit": (5.0, 20.0), "max_running_jobs": 2}, {})


def test_key_limits_request_masks_exactly_the_limits_given() -> None:
    request = key_limits_request("k", submit_limit="default", max_running_jobs=0)
    assert list(request.update_mask.paths) == ["submit_limit", "max_running_jobs"]
    assert not request.HasField("submit_limit") and request.max_running_jobs == 0
    request = key_limits_request("k", read_limit=(2.0, 4.0))
    assert list(request.update_mask.paths) == ["read_limit"]
    assert (request.read_limit.per_second, request.read_limit.burst) == (2.0, 4.0)
