"""The rules of `conveyor.api.known_names`: which type is refused, how metrics label names, and
how long a refusal's list of known types gets."""

from __future__ import annotations

from conveyor.api.known_names import NAMED_TYPES, KnownNames
from conveyor.redis.workers import WorkerInfo


def worker(queues: list[str], types: list[str]) -> WorkerInfo:
    return WorkerInfo("w1", "host", queues, types, 4, 0, 0, 0)


def test_a_type_is_refused_only_when_a_live_worker_serves_the_queue() -> None:
    known = KnownNames(
        frozenset({"default", "mail"}),
        frozenset({"noop"}),
        (worker(["mail"], ["email.send"]),),
    )
    assert known.type_violation("mail", "noop", "type") is None  # the API loads it
    assert known.type_violation("mail", "email.send", "type") is None  # announced
    assert known.type_violation("default", "email.send", "type") is None
    refused = known.type_violation("mail", "slep", "requests[2].type")
    assert refused is not None and refused.field == "requests[2].type"
    assert refused.description == "unknown job type 'slep'; known types: email.send, noop"
    # No live worker serves `default`: the API cannot know what its workers will load.
    assert known.type_violation("default", "slep", "type") is None


def test_labels_fold_names_that_do_not_exist_into_other() -> None:
    known = KnownNames(frozenset({"default", "a"}), frozenset({"noop"}), (worker(["a"], ["t"]),))
    assert [known.queue_label(q) for q in ("default", "a", "junk")] == ["default", "a", "other"]
    assert [known.type_label(t) for t in ("noop", "t", "slep")] == ["noop", "t", "other"]


def test_the_known_types_named_in_a_refusal_are_capped() -> None:
    many = frozenset(f"type{i:03d}" for i in range(NAMED_TYPES + 7))
    listing = KnownNames(registered=many).listing()
    assert listing.endswith(" and 7 more")
    assert listing.count(",") == NAMED_TYPES - 1
