"""Submits whose answer was lost: an idempotency key per logical submit, and retries.

A submit can fail after the server committed it: the API process dies between its commit
and its answer (`UNAVAILABLE: Stream removed`), or the answer arrives after the caller's
deadline (`DEADLINE_EXCEEDED`). The caller cannot tell that from a submit that never
arrived. So the SDK gives every job a key of its own (`sdk-` + 32 hex digits) unless the
caller chose one, fixed before the first try, and sends exactly the same request again on
those two codes: the server answers a repeated key with the job it already made (DESIGN.md
§3), so a retried submit makes one job however many tries it took.

Retries are the SDK's own loop, not gRPC's `retryPolicy` service config, because that
policy cannot retry DEADLINE_EXCEEDED (its deadline covers every try), does not read the
`google.rpc.RetryInfo` Conveyor sends, applies only to channels the SDK opens itself (not a
caller's `channel=`), and hides its tries from the caller (`AsyncClient.absorbed` counts
them here).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conveyor.jobs.retry import RetryPolicy

log = logging.getLogger(__name__)

KEY_PREFIX = "sdk-"

# An answer that may come after the server committed the request (or instead of one that
# did): only these are worth sending the same request again. Every other code is the
# server's verdict on the request, and the same request would get it again.
AMBIGUOUS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def new_idempotency_key() -> str:
    """A key for one logical submit: 128 random bits, so no two calls share it (36
    characters, well within the server's 256 printable ones). `secrets` rather than
    `uuid4`: the same randomness at a fifth of the cost, which a bulk of 1,000 pays 1,000
    times."""
    return KEY_PREFIX + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class SubmitRetry:
    """How `submit` and `submit_many` retry an UNAVAILABLE or DEADLINE_EXCEEDED answer.

    At most `attempts` tries in all (the first included; 1 never retries), none started
    more than `total` seconds after the first failure (a retry's own timeout is cut to what
    remains). Between tries the wait grows from `initial` by `multiplier` up to `maximum`
    seconds, the fraction `jitter` of it random (so clients that failed together do not come
    back together), and is at least the server's `google.rpc.RetryInfo` delay when the
    answer carries one. The defaults ride out an API restart (a few seconds, plus gRPC's
    redial backoff) and give up after 5 to 11 seconds of tries when the API stays away.
    """

    attempts: int = 10
    initial: float = 0.1
    maximum: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    total: float = 15.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or min(self.initial, self.maximum, self.total) < 0:
            raise ValueError("SubmitRetry needs attempts >= 1 and no negative time")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("SubmitRetry needs multiplier >= 1 and jitter in [0, 1]")

    def _backoff(self) -> RetryPolicy:
        return RetryPolicy(
            int(self.initial * 1000), int(self.maximum * 1000), self.multiplier, self.jitter
        )

    def delay(self, error: grpc.RpcError, tries: int, since_failure: float) -> float | None:
        """Seconds to wait before trying again after `tries` tries, the last failing with
        `error` `since_failure` seconds after the first failure; None: give up."""
        if error.code() not in AMBIGUOUS or tries >= self.attempts:
            return None
        wait = max(self._backoff().delay_ms(tries) / 1000, retry_info_delay(error))
        if since_failure + wait >= self.total:
            return None
        return wait


def retry_info_delay(error: grpc.RpcError) -> float:
    """The `google.rpc.RetryInfo` delay the server sent with `error`, in seconds (0: none)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToNanoseconds() / 1e9)
    return 0.0


class Attempts:
    """One logical call's tries: what the next try's timeout is, and whether (and after
    how long) to try again. The loops that sleep live in the clients (asyncio or blocking)."""

    def __init__(self, policy: SubmitRetry | None, timeout: float, absorbed: Counter[str]) -> None:
        self.policy = policy
        self.timeout = timeout
        self.absorbed = absorbed
        self.tries = 0
        self._first_failure: float | None = None

    def next_timeout(self) -> float:
        """The client's timeout, cut to what remains of the retry budget on a retry."""
        self.tries += 1
        if self._first_failure is None or self.policy is None:
            return self.timeout
        left = self.policy.total - (time.monotonic() - self._first_failure)
        return max(min(self.timeout, left), 0.001)

    def after(self, error: grpc.RpcError, method: str) -> float | None:
        """Seconds to wait before retrying after `error`; None: raise it."""
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        if self.policy is None:
            return None
        wait = self.policy.delay(error, self.tries, now - self._first_failure)
        if wait is None:
            return None
        code = error.code().name
        self.absorbed[code] += 1
        log.info("%s try %d answered %s; retrying in %.2fs", method, self.tries, code, wait)
        return wait
