"""The `update_mask` of UpdateQueueLimits and UpdateApiKeyLimits (AIP-134): which fields of
a request an update changes, so that setting one limit keeps the others.

Both RPCs read their mask here, with the same rules, so a client author learns them once:
the paths are the updated message's field names, `*` alone names every field, and no mask
at all names every field too (what clients written before masks existed send, and how the
RPCs always behaved). A present mask that names nothing, an unknown or a repeated path is
INVALID_ARGUMENT with a violation on `update_mask` that lists the allowed paths.
"""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.v1 import api_key_service_pb2, job_service_pb2

EVERY_FIELD = "*"
FIELD = "update_mask"

MaskedRequest = (
    api_key_service_pb2.UpdateApiKeyLimitsRequest | job_service_pb2.UpdateQueueLimitsRequest
)


def named_fields(request: MaskedRequest, allowed: Sequence[str]) -> frozenset[str]:
    """The fields of `allowed` that `request.update_mask` names (all of them with no mask
    or `*`); INVALID_ARGUMENT naming every bad path, so nothing changes on a bad mask."""
    if not request.HasField("update_mask"):
        return frozenset(allowed)
    paths = list(request.update_mask.paths)
    choices = f"the paths are {', '.join(allowed)}, or {EVERY_FIELD} alone for all of them"
    if not paths:
        raise InvalidArgument([FieldViolation(FIELD, f"names no field; {choices}")])
    if paths == [EVERY_FIELD]:
        return frozenset(allowed)
    bad: list[FieldViolation] = []
    for i, path in enumerate(paths):
        if path == EVERY_FIELD:
            bad.append(FieldViolation(FIELD, f"{EVERY_FIELD} must be the only path; {choices}"))
        elif path not in allowed:
            bad.append(FieldViolation(FIELD, f"unknown path {path!r}; {choices}"))
        elif path in paths[:i]:
            bad.append(FieldViolation(FIELD, f"path {path!r} is named twice; {choices}"))
    if bad:
        raise InvalidArgument(bad)
    return frozenset(paths)
