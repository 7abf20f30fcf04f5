"""Retry policies: how long a failed job waits before its next attempt.

A policy is resolved once, when the job is accepted: each field comes from the submit
request if set, else from the job type's registration (`@handler(..., retry=...)`), else from
the server's settings. The resolved policy travels with the job (database row and Redis hot
state), so the worker that records a failure needs nothing but the job to compute the delay,
and GetJob shows exactly the policy in force.

The delay before attempt n+1 is `d = min(initial * multiplier**(n-1), maximum)`, of which the
fraction `jitter` is random: the job waits between `d * (1 - jitter)` and `d`. Jitter spreads
retries of jobs that failed together (an outage) so they do not return as one burst.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from conveyor.errors import FieldViolation
from conveyor.v1 import job_pb2

DEFAULT_MULTIPLIER = 2.0
DEFAULT_JITTER = 0.5
MAX_MULTIPLIER = 100.0
MAX_BACKOFF_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A complete policy; every field has a value."""

    initial_ms: int
    max_ms: int
    multiplier: float = DEFAULT_MULTIPLIER
    jitter: float = DEFAULT_JITTER

    def ceiling_ms(self, attempt: int) -> int:
        """The delay after failed attempt `attempt` (1-based) before jitter."""
        exponent = min(max(attempt - 1, 0), 64)  # beyond this the cap has long been reached
        return int(min(self.initial_ms * self.multiplier**exponent, self.max_ms))

    def delay_ms(self, attempt: int, rng: random.Random | None = None) -> int:
        """The jittered delay after failed attempt `attempt`: in [d * (1 - jitter), d]."""
        ceiling = self.ceiling_ms(attempt)
        draw = (rng or random).random()
        return int(ceiling * (1.0 - self.jitter * draw))

    def to_doc(self) -> dict[str, Any]:
        """The JSON form kept in the database and in Redis."""
        return {"i": self.initial_ms, "m": self.max_ms, "x": self.multiplier, "j": self.jitter}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RetryPolicy:
        return cls(int(doc["i"]), int(doc["m"]), float(doc["x"]), float(doc["j"]))

    def to_proto(self) -> job_pb2.RetryPolicy:
        msg = job_pb2.RetryPolicy(multiplier=self.multiplier, jitter=self.jitter)
        msg.initial_backoff.FromMilliseconds(self.initial_ms)
        msg.max_backoff.FromMilliseconds(self.max_ms)
        return msg


@dataclass(frozen=True, slots=True)
class RetryOverrides:
    """The fields a request or a job type sets; None falls through to the next layer."""

    initial_ms: int | None = None
    max_ms: int | None = None
    multiplier: float | None = None
    jitter: float | None = None

    def over(self, base: RetryPolicy) -> RetryPolicy:
        """This layer's fields laid over `base`, the maximum never below the initial delay."""
        policy = replace(
            base,
            **{name: getattr(self, name) for name in _FIELDS if getattr(self, name) is not None},
        )
        if policy.max_ms < policy.initial_ms:
            policy = replace(policy, max_ms=policy.initial_ms)
        return policy

    def violations(self, prefix: str) -> list[FieldViolation]:
        bad = []
        if self.initial_ms is not None and not 0 <= self.initial_ms <= MAX_BACKOFF_MS:
            bad.append(FieldViolation(prefix + "initial_backoff", "must be 0 to 7 days"))
        if self.max_ms is not None and not 0 <= self.max_ms <= MAX_BACKOFF_MS:
            bad.append(FieldViolation(prefix + "max_backoff", "must be 0 to 7 days"))
        if self.multiplier is not None and not 1.0 <= self.multiplier <= MAX_MULTIPLIER:
            why = f"must be 1 to {MAX_MULTIPLIER:g} (0: default)"
            bad.append(FieldViolation(prefix + "multiplier", why))
        if self.jitter is not None and not 0.0 <= self.jitter <= 1.0:
            bad.append(FieldViolation(prefix + "jitter", "must be between 0 and 1"))
        return bad

    @classmethod
    def from_proto(cls, msg: job_pb2.RetryPolicy) -> RetryOverrides:
        return cls(
            initial_ms=msg.initial_backoff.ToMilliseconds()
            if msg.HasField("initial_backoff")
            else None,
            max_ms=msg.max_backoff.ToMilliseconds() if msg.HasField("max_backoff") else None,
            multiplier=msg.multiplier or None,
            jitter=msg.jitter if msg.HasField("jitter") else None,
        )


_FIELDS = ("initial_ms", "max_ms", "multiplier", "jitter")


def retry(
    *,
    initial: float | None = None,
    maximum: float | None = None,
    multiplier: float | None = None,
    jitter: float | None = None,
) -> RetryOverrides:
    """A job type's retry policy in seconds, for `@handler(..., retry=retry(initial=2))`."""
    overrides = RetryOverrides(
        initial_ms=None if initial is None else int(initial * 1000),
        max_ms=None if maximum is None else int(maximum * 1000),
        multiplier=multiplier,
        jitter=jitter,
    )
    bad = overrides.violations("retry.")
    if bad:
        raise ValueError("; ".join(f"{v.field} {v.description}" for v in bad))
    return overrides
