"""The ListJobs filter language (conveyor.jobs.filters) and label checks
(conveyor.jobs.labels): AIP-160 precedence, each field's accepted forms with their values
converted, and each refused form with the exact 1-based position of what is wrong."""

from __future__ import annotations

import pytest

from conveyor.db.job_filters import create_time_range
from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.jobs.filters import (
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_RESTRICTIONS,
    And,
    Filter,
    Not,
    Or,
    Restriction,
    parse,
)
from conveyor.jobs.labels import check_labels
from conveyor.jobs.model import JobState

T0 = 1_796_083_200_000  # 2026-12-01T00:00:00Z


def r(*path: str, op: str = "=", value: object = None, at: int = 1) -> Restriction:
    return Restriction(tuple(path), op, value, at)  # type: ignore[arg-type]


def refused(text: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse(text)
    [violation] = caught.value.violations
    assert violation.field == "filter"
    return violation.description


def test_and_binds_loosest_then_sequence_then_or() -> None:
    """Guards AIP-160's precedence: `a AND b OR c` is `a AND (b OR c)`, and whitespace is
    an AND tighter than AND itself but looser than OR."""
    a, b, c = (r("queue", value=q, at=at) for q, at in (("a", 1), ("b", 15), ("c", 28)))
    assert parse("queue = a AND queue = b OR queue = c") == And((a, Or((b, c))))
    assert parse("queue=a queue=b OR queue=c") == And(
        (r("queue", value="a"), Or((r("queue", value="b", at=9), r("queue", value="c", at=20))))
    )
    both = And((r("queue", value="a", at=2), r("queue", value="b", at=16)))
    assert parse("(queue = a AND queue = b) OR queue = c") == Or(
        (both, r("queue", value="c", at=30))
    )


def test_negation_and_case_sensitive_keywords() -> None:
    """Guards NOT and `-` (one term each) and that `and`/`or`/`not` are plain text."""
    dead = r("state", value=JobState.DEAD, at=5)
    assert parse("NOT state = DEAD") == Not(dead)
    assert parse("-state = DEAD") == Not(r("state", value=JobState.DEAD, at=2))
    assert parse("NOT (queue = a OR queue = b)") == Not(
        Or((r("queue", value="a", at=6), r("queue", value="b", at=19)))
    )
    assert parse("queue = and") == r("queue", value="and")
    assert parse("queue = ANDY") == r("queue", value="ANDY")
    assert parse("") is None and parse("   \n ") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("state = RUNNING", r("state", value=JobState.RUNNING)),
        ("state = job_state_dead", r("state", value=JobState.DEAD)),
        ('state != "Queued"', r("state", op="!=", value=JobState.QUEUED)),
        ("queue = emails", r("queue", value="emails")),
        ('type != "email.send"', r("type", op="!=", value="email.send")),
        ("owner = alice", r("owner", value="alice")),
        ("id = 0193-ab", r("id", value="0193-ab")),
        ('labels.team = "bill ing"', r("labels", "team", value="bill ing")),
        ("labels.app.kubernetes.io != web", r("labels", "app.kubernetes.io", op="!=", value="web")),
        ("labels.team:*", r("labels", "team", op=":", value="*")),
        ("create_time > 2026-12-01T00:00:00Z", r("create_time", op=">", value=T0)),
        ('finish_time <= "2026-12-01T01:00:00.250+01:00"',
         r("finish_time", op="<=", value=T0 + 250)),
        ("create_time != 2026-12-01T00:00:00z", r("create_time", op="!=", value=T0)),
        ('error:"timed out"', r("error", op=":", value="timed out")),
        ("error:boom", r("error", op=":", value="boom")),
        ("payload.n = 42", r("payload", "n", value=42)),
        ("payload.n = -7", r("payload", "n", value=-7)),
        ("payload.a.b.c = 1.5e3", r("payload", "a", "b", "c", value=1500.0)),
        ("payload.ok = true", r("payload", "ok", value=True)),
        ("payload.ok != false", r("payload", "ok", op="!=", value=False)),
        ("payload.x = null", r("payload", "x", value=None)),
        ('payload.n = "42"', r("payload", "n", value="42")),
        ("payload.email = a@b.example", r("payload", "email", value="a@b.example")),
        (r'payload.q = "say \"hi\"\n"', r("payload", "q", value='say "hi"\n')),
        (r"payload.q = 'it\'s'", r("payload", "q", value="it's")),
    ],
)  # fmt: skip
def test_accepted_forms_convert_their_values(text: str, expected: Filter) -> None:
    """Guards each field's accepted forms and the value each converts to (a JobState,
    epoch milliseconds, typed payload values with integers kept as int)."""
    got = parse(text)
    assert got == expected
    assert type(getattr(got, "value", None)) is type(expected.value)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ("stat = RUNNING", "at 1: unknown field 'stat' (fields: state, queue, type, owner, "
         "id, concurrency_key, rate_key, labels.KEY, create_time, finish_time, error, "
         "payload.PATH)"),
        ("queue = a AND stat = RUNNING", "at 15: unknown field 'stat'"),
        ("state = ", "at 9: expected a value after '='"),
        ("state = RUN", "at 9: unknown job state 'RUN'"),
        ("state = UNSPECIFIED", "at 9: unknown job state 'UNSPECIFIED'"),
        ("state < RUNNING", "at 7: 'state' takes = or !=, not '<'"),
        ("queue:x", "at 6: 'queue' takes = or !=, not ':'"),
        ("queue.name = x", "at 1: 'queue' has no fields of its own"),
        ("error = x", "at 7: 'error' takes :, not '='"),
        ("labels = x", "at 1: expected 'labels.NAME'"),
        ("labels..a = x", "at 1: expected 'labels.NAME'"),
        ("labels.Team = x", "at 1: label key 'Team' does not match"),
        ("labels.team:x", "at 13: 'labels.team:' takes only '*'"),
        ("labels.team > x", "at 13: 'labels.team' takes = or != or :, not '>'"),
        ("payload = 1", "at 1: expected 'payload.NAME'"),
        ("payload.a.b.c.d.e.f.g.h.i = 1", "at 1: a payload path has at most 8 names"),
        ("payload.n = 9223372036854775808", "at 13: number out of range"),
        ("payload.n = 1e999", "at 13: number out of range"),
        ("payload.n < 3", "at 11: 'payload.n' takes = or !=, not '<'"),
        ("create_time > 2026-12-01", "at 15: expected an RFC 3339 time"),
        ("create_time > 2026-12-01T00:00:00", "at 15: expected an RFC 3339 time"),
        ("create_time:x", "at 12: 'create_time' takes < or <= or > or >= or = or !=, not ':'"),
        ("queue", "at 1: expected a comparator and a value after 'queue'"),
        ("queue = a b", "at 11: expected a comparator and a value after 'b'"),
        ("()", "at 2: empty parentheses"),
        ("state = DEAD AND ()", "at 19: empty parentheses"),
        ("(state = DEAD", "at 14: expected ')' to close a '('"),
        ("state = DEAD)", "at 13: ')' without a matching '('"),
        ("queue = a AND", "at 14: expected a restriction after 'AND'"),
        ("queue = a OR OR", "at 14: expected a restriction after 'OR'"),
        ("NOT", "at 4: expected a restriction after 'NOT'"),
        ("= x", "at 1: expected a field before '='"),
        ('queue = "abc', "at 9: unterminated string (no closing \")"),
        ("queue = a & b", "at 11: unexpected '&'"),
        ("queue = a AND AND", "at 15: expected a restriction after 'AND'"),
        ("AND queue = a", "at 1: expected a restriction before 'AND'"),
    ],
)  # fmt: skip
def test_refused_forms_name_the_position(text: str, description: str) -> None:
    """Guards INVALID_ARGUMENT for every refused form, pointing at the 1-based character
    where the problem is."""
    assert refused(text).startswith(description)


def test_limits() -> None:
    """Guards the documented limits: length, restrictions and nesting depth."""
    assert MAX_FILTER_LENGTH == 2048 and MAX_RESTRICTIONS == 32 and MAX_DEPTH == 16
    padded = "queue = a" + " " * (MAX_FILTER_LENGTH - 9)
    assert parse(padded) == r("queue", value="a")
    assert refused(padded + " ").startswith("at 2049: a filter is at most 2048 characters")
    many = " ".join(["queue = a"] * MAX_RESTRICTIONS)
    assert isinstance(parse(many), And)
    assert refused(many + " type = b") == (
        f"at {len(many) + 2}: a filter has at most 32 restrictions"
    )
    deep = "(" * MAX_DEPTH + "queue = a" + ")" * MAX_DEPTH
    assert parse(deep) == r("queue", value="a", at=MAX_DEPTH + 1)
    assert refused("x=1 " + "(" * 1000 + "queue = a" + ")" * 1000).startswith(
        f"at {4 + MAX_DEPTH + 1}: parentheses nest at most 16 deep"
    )


def test_fields_lists_what_a_filter_reads() -> None:
    """Guards what the API checks before it runs a filter (`owner` is for admins only)."""
    tree = parse("state = DEAD AND (owner = bob OR NOT labels.team:*) payload.a = 1")
    assert tree is not None
    assert tree.fields() == {"state", "owner", "labels", "payload"}
    assert parse("-queue = a").fields() == {"queue"}  # type: ignore[union-attr]


def test_check_labels() -> None:
    """Guards the label limits, one violation per problem, named by key."""
    assert check_labels({"team": "billing", "app.kubernetes.io-x_1": "v" * 256}) == []
    bad_key = "label keys must match [a-z][a-z0-9_.-]{0,62}"
    field = "requests[2].labels"
    assert check_labels({"Bad Key": "x", "ok": "v" * 257, "9x": ""}, field) == [
        FieldViolation(f'{field}["Bad Key"]', bad_key),
        FieldViolation(f'{field}["ok"]', "label values are at most 256 characters, got 257"),
        FieldViolation(f'{field}["9x"]', bad_key),
    ]
    assert check_labels({"k" + "x" * 62: ""}) == []
    assert len(check_labels({"k" + "x" * 63: ""})) == 1
    many = check_labels({f"k{i}": "" for i in range(33)})
    assert many == [FieldViolation("labels", "at most 32 labels per job, got 33")]


def test_create_time_range_is_what_every_match_satisfies() -> None:
    """Guards the id bounds a filtered listing scans (conveyor.db.job_filters): only
    create_time comparisons that every match satisfies (top level, under AND) bound it."""
    t = "2026-12-01T00:00:00Z"
    assert create_time_range(parse(f"create_time > {t}")) == (T0 + 1, None)  # type: ignore[arg-type]
    both = parse(f"state = DEAD AND (create_time >= {t} create_time <= {t})")
    assert create_time_range(both) == (T0, T0 + 1)  # type: ignore[arg-type]
    assert create_time_range(parse(f"create_time = {t}")) == (T0, T0 + 1)  # type: ignore[arg-type]
    for loose in (f"create_time < {t} OR queue = a", f"-create_time < {t}", f"create_time != {t}"):
        assert create_time_range(parse(loose)) == (None, None), loose  # type: ignore[arg-type]
