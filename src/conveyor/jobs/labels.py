"""Job labels: the small string map a submit may attach to a job (AIP-122 style limits), so
that jobs can be found again by them (`labels.KEY = value` in a ListJobs filter).

Keys are short lowercase names, so that they read the same in a filter, a URL and a
JSON document; values are free text but bounded, so that the column and its index stay
small however many jobs there are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from conveyor.errors import FieldViolation

MAX_LABELS = 32
MAX_LABEL_VALUE = 256
LABEL_KEY_PATTERN = r"[a-z][a-z0-9_.-]{0,62}"
_KEY_RE = re.compile(rf"{LABEL_KEY_PATTERN}\Z")


def valid_label_key(key: str) -> bool:
    """Whether `key` may name a label (also what a filter's `labels.KEY` must be)."""
    return bool(_KEY_RE.match(key))


def check_labels(labels: Mapping[str, str], field: str = "labels") -> list[FieldViolation]:
    """Every problem with a job's labels, one violation each (none: they may be stored).

    `field` is where the labels sit in the request (`requests[3].labels` in a bulk
    submit); a bad key or value is reported as `field["key"]`, too many labels as `field`.
    """
    violations: list[FieldViolation] = []
    if len(labels) > MAX_LABELS:
        violations.append(
            FieldViolation(field, f"at most {MAX_LABELS} labels per job, got {len(labels)}")
        )
    for key, value in labels.items():
        where = f"{field}[{json.dumps(key)}]"
        if not valid_label_key(key):
            violations.append(FieldViolation(where, f"label keys must match {LABEL_KEY_PATTERN}"))
        if len(value) > MAX_LABEL_VALUE:
            violations.append(
                FieldViolation(
                    where,
                    f"label values are at most {MAX_LABEL_VALUE} characters, got {len(value)}",
                )
            )
    return violations
