"""Job labels: what a client tags a job with to find it again (`labels.team = "billing"`).

The limits are AIP-122's spirit and Kubernetes' practice: short lowercase keys, values of
at most 256 characters, at most 32 of them, so that a job's labels stay a few KB at most
and can be indexed."""

from __future__ import annotations

import re
from collections.abc import Mapping

from conveyor.errors import FieldViolation

MAX_LABELS = 32
MAX_VALUE = 256
KEY = re.compile(r"[a-z][a-z0-9_.-]{0,62}")


def check_labels(labels: Mapping[str, str], field: str = "labels") -> list[FieldViolation]:
    """One violation per problem: too many labels, a bad key, a value too long."""
    bad: list[FieldViolation] = []
    if len(labels) > MAX_LABELS:
        bad.append(FieldViolation(field, f"has {len(labels)} labels; at most {MAX_LABELS}"))
    for key, value in labels.items():
        if not KEY.fullmatch(key):
            bad.append(FieldViolation(f"{field}[{key!r}]", "key must match [a-z][a-z0-9_.-]{0,62}"))
        elif len(value) > MAX_VALUE:
            bad.append(FieldViolation(f"{field}[{key!r}]", f"value is longer than {MAX_VALUE}"))
    return bad
