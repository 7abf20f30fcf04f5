"""The fuzz's stack and its ledger: what the server said it accepted, and the ids and page
tokens the fuzzer has learned to reuse."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from conveyor.v1 import job_pb2
from tests.processes import Service, Stack
from tests.security.fuzz.rpcs import OWNERS

# -- the stack ----------------------------------------------------------------------------


@dataclass
class Accepted:
    owner: str
    type: str
    queue: str
    via: str = ""  # the call that was told so


@dataclass(frozen=True)
class Token:
    """A page token the server issued: to whom, for which filters."""

    owner: str
    filters: tuple[int, str, str, str]  # state, queue, type, owner
    value: str


@dataclass
class Ledger:
    """What the server said it accepted, and what the fuzzer has learned to reuse."""

    jobs: dict[str, Accepted] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=lambda: {o: [] for o in OWNERS})
    tokens: list[Token] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    raw: int = 0
    reported: set[str] = field(default_factory=set)  # problems an earlier test reported
    seeded: bool = False  # `checks.seed` has run: ids and tokens exist to be reused

    def accept(self, job: job_pb2.Job, via: str = "") -> None:
        if job.id not in self.jobs:
            self.jobs[job.id] = Accepted(job.owner, job.type, job.queue, via)
            if job.owner in self.ids:
                self.ids[job.owner].append(job.id)


@dataclass(repr=False)
class FuzzStack:
    """The stack of this module's tests and what they have learned about it."""

    stack: Stack
    api: Service
    redis_url: str
    database_url: str
    keys: dict[str, str]
    ledger: Ledger

    def __repr__(self) -> str:  # pytest prints arguments of failed tests
        return f"<api at {self.stack.api_addr}, {len(self.ledger.jobs)} jobs accepted>"
