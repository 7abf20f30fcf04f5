"""ApiKeyService: create, list and revoke API keys over gRPC (admin keys only)."""

from __future__ import annotations

import re

from conveyor.api.pagetokens import PageTokens, page_limit
from conveyor.api.update_mask import named_fields
from conveyor.db.keys import (
    LIMIT_FIELDS,
    MAX_LISTED,
    KeyCursor,
    KeyLimits,
    KeyStore,
    StoredKey,
    parse_key_id,
)
from conveyor.errors import FieldViolation, InvalidArgument, NotFound
from conveyor.server.auth import Authenticator, Principal, Role
from conveyor.server.grpcserver import unary
from conveyor.v1 import api_key_service_pb2 as pb
from conveyor.v1 import api_key_service_pb2_grpc

OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}\Z")
MAX_DESCRIPTION = 256
MAX_RUNNING_JOBS = 1_000_000
_ROLES = {pb.API_KEY_ROLE_UNSPECIFIED: Role.USER, pb.API_KEY_ROLE_USER: Role.USER,
          pb.API_KEY_ROLE_ADMIN: Role.ADMIN}  # fmt: skip


def key_proto(key: StoredKey) -> pb.ApiKey:
    msg = pb.ApiKey(
        id=key.id,
        owner=key.owner,
        role=pb.API_KEY_ROLE_ADMIN if key.role == Role.ADMIN else pb.API_KEY_ROLE_USER,
        description=key.description,
        max_running_jobs=key.max_running,
    )
    msg.create_time.FromMilliseconds(key.create_time)
    if key.revoke_time is not None:
        msg.revoke_time.FromMilliseconds(key.revoke_time)
    if key.submit_limit is not None:
        msg.submit_limit.CopyFrom(pb.RateLimit(per_second=key.submit_limit[0],
                                               burst=key.submit_limit[1]))  # fmt: skip
    if key.read_limit is not None:
        msg.read_limit.CopyFrom(pb.RateLimit(per_second=key.read_limit[0],
                                             burst=key.read_limit[1]))  # fmt: skip
    return msg


MAX_RATE = 1e9


def _limit(
    request: pb.UpdateApiKeyLimitsRequest, field: str, bad: list[FieldViolation]
) -> tuple[float, float] | None:
    """A RateLimit field as (per second, burst); None when unset (the server's default)."""
    if not request.HasField(field):
        return None
    limit: pb.RateLimit = getattr(request, field)
    for name in ("per_second", "burst"):
        value = getattr(limit, name)
        if not 0 <= value <= MAX_RATE:  # NaN fails too
            bad.append(FieldViolation(f"{field}.{name}", f"must be 0 to {MAX_RATE:g}"))
    return limit.per_second, limit.burst or limit.per_second


def _requested_limits(request: pb.UpdateApiKeyLimitsRequest, named: frozenset[str]) -> KeyLimits:
    """The limits the request's mask names, validated (INVALID_ARGUMENT naming each bad
    field); the fields it does not name are not read."""
    bad: list[FieldViolation] = []
    limits = KeyLimits(
        submit_limit=_limit(request, "submit_limit", bad) if "submit_limit" in named else None,
        read_limit=_limit(request, "read_limit", bad) if "read_limit" in named else None,
        max_running_jobs=request.max_running_jobs,
    )
    if "max_running_jobs" in named and not 0 <= limits.max_running_jobs <= MAX_RUNNING_JOBS:
        bad.append(FieldViolation("max_running_jobs", f"must be 0-{MAX_RUNNING_JOBS}"))
    if bad:
        raise InvalidArgument(bad)
    return limits


def _key_id(value: str) -> str:
    key_id = parse_key_id(value)
    if key_id is None:
        raise InvalidArgument([FieldViolation("id", "must be a key id")])
    return key_id


def _check_owner(owner: str, field: str, *, required: bool) -> list[FieldViolation]:
    if not owner:
        return [FieldViolation(field, "required")] if required else []
    if not OWNER_RE.match(owner):
        return [FieldViolation(field, "must match [A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")]
    return []


def _key_cursor(key: StoredKey) -> str:
    """Where a page of keys ends, in the listing's order (see `KeyStore.list_keys`)."""
    return f"{key.create_time}/{key.id}"


def _parse_key_cursor(text: str) -> KeyCursor | None:
    create_time, _, key_id = text.partition("/")
    parsed = parse_key_id(key_id)
    if parsed is None or not (create_time.isascii() and create_time.isdigit()):
        return None
    return int(create_time), parsed


class ApiKeyServicer(api_key_service_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, auth: Authenticator, keys: KeyStore, page_tokens: PageTokens) -> None:
        self.auth = auth
        self.keys = keys
        # The API's signer of page tokens (the one JobOperations holds).
        self.page_tokens = page_tokens

    @unary
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, principal: Principal
    ) -> pb.CreateApiKeyResponse:
        principal.require_admin()
        bad = _check_owner(request.owner, "owner", required=True)
        if request.role not in _ROLES:
            bad.append(FieldViolation("role", "is not an ApiKeyRole"))
        if len(request.description) > MAX_DESCRIPTION or not request.description.isprintable():
            bad.append(FieldViolation("description", f"printable, at most {MAX_DESCRIPTION}"))
        if bad:
            raise InvalidArgument(bad)
        made = await self.auth.create_key(request.owner, _ROLES[request.role], request.description)
        return pb.CreateApiKeyResponse(key=key_proto(made.stored), secret=made.token)

    @unary
    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, principal: Principal
    ) -> pb.ListApiKeysResponse:
        principal.require_admin()
        bad = _check_owner(request.owner, "owner", required=False)
        if bad:
            raise InvalidArgument(bad)
        limit = page_limit(request.page_size, MAX_LISTED)
        owner, revoked = request.owner or None, request.include_revoked

        async def fetch(count: int, before: KeyCursor | None) -> list[StoredKey]:
            return await self.keys.list_keys(
                owner, include_revoked=revoked, limit=count, before=before
            )

        scope = ["api-keys", principal.owner, request.owner, revoked]
        found, token = await self.page_tokens.page_by(
            scope, request.page_token, limit, fetch, _key_cursor, _parse_key_cursor
        )
        return pb.ListApiKeysResponse(keys=[key_proto(k) for k in found], next_page_token=token)

    @unary
    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, principal: Principal
    ) -> pb.RevokeApiKeyResponse:
        principal.require_admin()
        revoked = await self.keys.revoke(_key_id(request.id))
        if revoked is None:
            raise NotFound(f"API key {request.id} not found")
        return pb.RevokeApiKeyResponse(key=key_proto(revoked))

    @unary
    async def UpdateApiKeyLimits(
        self, request: pb.UpdateApiKeyLimitsRequest, principal: Principal
    ) -> pb.UpdateApiKeyLimitsResponse:
        principal.require_admin()
        key_id = _key_id(request.id)
        named = named_fields(request, LIMIT_FIELDS)
        updated = await self.keys.set_limits(key_id, _requested_limits(request, named), named)
        if updated is None:
            raise NotFound(f"API key {request.id} not found")
        return pb.UpdateApiKeyLimitsResponse(key=key_proto(updated))
