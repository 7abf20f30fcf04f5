"""Signatures of `http.request` deliveries (the job type is `conveyor.builtins.webhook`):
`sign` makes the X-Conveyor-Signature header, `verify_signature` checks it. Public, at the
path the README shows receivers: `from conveyor.handlers.webhook import verify_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_TOLERANCE_SECONDS", "sign", "verify_signature"]

SIGNATURE_TOLERANCE_SECONDS = 300


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-Conveyor-Signature value for `body` sent at `timestamp` (default: now).

    The timestamp is inside the MAC so a receiver can refuse old deliveries: an attacker who
    captured one cannot change its time without the secret."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_mac(secret, t, body)}"


def _parse_signature(header: str) -> tuple[int, list[str]] | None:
    """The timestamp and the v1 MACs of a signature header, or None if malformed."""
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1" and value:
            macs.append(value)
    return (timestamp, macs) if timestamp is not None and macs else None


def verify_signature(
    secret: str, header: str, body: bytes, tolerance_seconds: float = SIGNATURE_TOLERANCE_SECONDS
) -> bool:
    """True if `header` (X-Conveyor-Signature) signs `body` with `secret` and its timestamp is
    within `tolerance_seconds` of this machine's clock.

    `body` must be the raw bytes received: re-serialized JSON would not match. Several v1
    values are accepted (any one may match), so a sender can sign with an old and a new
    secret while receivers rotate."""
    parsed = _parse_signature(header) if secret else None
    if parsed is None:
        return False
    timestamp, macs = parsed
    if abs(time.time() - timestamp) > tolerance_seconds:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, mac) for mac in macs)
