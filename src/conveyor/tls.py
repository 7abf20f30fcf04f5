"""TLS and mutual TLS for Conveyor's gRPC servers and clients: the one place they live.

Servers (api, worker's WorkerControl, scheduler's health) serve TLS when `CONVEYOR_TLS_CERT`
and `CONVEYOR_TLS_KEY` are set, and require a client certificate that chains to
`CONVEYOR_TLS_CLIENT_CA` when that is set too (mutual TLS). Clients (the CLI, the Python
client, `conveyor dev`'s readiness probe, the tests) connect with TLS when `CONVEYOR_TLS`,
`CONVEYOR_TLS_CA`, `CONVEYOR_TLS_CLIENT_CERT` or `CONVEYOR_TLS_SERVER_NAME` is set; they verify
the server against `CONVEYOR_TLS_CA` (else gRPC's default roots) and present
`CONVEYOR_TLS_CLIENT_CERT` / `CONVEYOR_TLS_CLIENT_KEY` under mutual TLS.

A refused handshake (plaintext to a TLS port, an untrusted server certificate, a missing or
untrusted client certificate) fails the call with UNAVAILABLE, which the client raises as
`conveyor.errors.Unavailable`. A file that is missing, unreadable or not the PEM it should be
is a `TlsConfigError` naming the variable and the path. Logs name the files used, never what
is in them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from conveyor.config import ConfigurationError, Settings

log = logging.getLogger(__name__)

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"
_ENCRYPTED_KEY = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"

# The settings a client's TLS comes from (also what `TlsOptions.from_environ` reads).
# Conveyor's clients take any response a server may send (its message limit plus headroom);
# gRPC's default of 4 MiB would refuse a job whose payload is near a raised payload limit.
# A channel whose server went away tries again after 0.1 s and then at least once a second
# (gRPC's default starts at 1 s and grows to 2 minutes): a client sees a restarted API
# within a second of it listening, not seconds or minutes later.
CLIENT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

CLIENT_FIELDS = ("tls", "tls_ca", "tls_client_cert", "tls_client_key", "tls_server_name")


class TlsConfigError(ConfigurationError):
    """TLS is configured wrongly: a file is missing, unreadable, or not the PEM it should be."""


def _read_pem(path: str | Path, what: str, variable: str, *, key: bool = False) -> bytes:
    """The PEM file at `path`; a clear error (variable, path, reason) and never its content."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TlsConfigError(f"{variable}: cannot read the {what} {path}: {reason}") from None
    if key:
        if _ENCRYPTED_KEY in data:
            raise TlsConfigError(
                f"{variable}: the {what} {path} is encrypted; gRPC needs an unencrypted key"
            )
        if _PRIVATE_KEY not in data:
            raise TlsConfigError(f"{variable}: {path} holds no PEM private key ({what})")
    elif _CERTIFICATE not in data:
        raise TlsConfigError(f"{variable}: {path} holds no PEM certificate ({what})")
    return data


# -- servers ------------------------------------------------------------------------------


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for a server from `settings`, or None to serve plaintext.

    With `tls_client_ca` set, the handshake requires a client certificate that chains to it.
    `tls` set without a certificate is an error rather than a silent plaintext server.
    """
    if not settings.tls_cert:
        if settings.tls:
            raise TlsConfigError(
                "CONVEYOR_TLS is set but CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY are not: "
                "a server needs its certificate and key to serve TLS"
            )
        return None
    chain = _read_pem(settings.tls_cert, "server certificate chain", "CONVEYOR_TLS_CERT")
    key = _read_pem(settings.tls_key, "server private key", "CONVEYOR_TLS_KEY", key=True)
    client_ca: bytes | None = None
    if settings.tls_client_ca:
        client_ca = _read_pem(settings.tls_client_ca, "client CA bundle", "CONVEYOR_TLS_CLIENT_CA")
        log.info(
            "mutual TLS: certificate %s, key %s; client certificates must chain to %s",
            settings.tls_cert,
            settings.tls_key,
            settings.tls_client_ca,
        )
    else:
        log.info("TLS: certificate %s, key %s", settings.tls_cert, settings.tls_key)
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


# -- clients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsOptions:
    """How a client connects with TLS: whom it trusts and what it presents.

    `ca`: PEM bundle to verify the server with (None: gRPC's default roots). `cert` and `key`:
    the client certificate chain and its key, for mutual TLS. `server_name`: the name the
    server's certificate must carry, when it differs from the host dialled.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TlsConfigError("a client certificate and its private key go together")

    @classmethod
    def from_settings(cls, settings: Settings) -> TlsOptions | None:
        """The client TLS that `settings` configure, or None for plaintext."""
        if not (
            settings.tls or settings.tls_ca or settings.tls_client_cert or settings.tls_server_name
        ):
            return None
        return cls(
            ca=Path(settings.tls_ca) if settings.tls_ca else None,
            cert=Path(settings.tls_client_cert) if settings.tls_client_cert else None,
            key=Path(settings.tls_client_key) if settings.tls_client_key else None,
            server_name=settings.tls_server_name,
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TlsOptions | None:
        """The client TLS that the `CONVEYOR_TLS*` variables in `environ` configure (not
        `os.environ`: e.g. the environment of a child process being started)."""
        values: dict[str, object] = {
            name: environ.get(f"CONVEYOR_{name.upper()}", Settings.model_fields[name].default)
            for name in CLIENT_FIELDS
        }
        return cls.from_settings(Settings.from_env(**values))

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials; reads the files now (a TlsConfigError if one is unusable)."""
        ca = _read_pem(self.ca, "CA bundle", "CONVEYOR_TLS_CA") if self.ca else None
        cert = key = None
        if self.cert is not None and self.key is not None:
            cert = _read_pem(self.cert, "client certificate", "CONVEYOR_TLS_CLIENT_CERT")
            key = _read_pem(self.key, "client private key", "CONVEYOR_TLS_CLIENT_KEY", key=True)
        log.debug(
            "TLS client: CA %s, client certificate %s",
            self.ca or "gRPC's default roots",
            self.cert or "none",
        )
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


ClientTls = TlsOptions | bool | None
"""What client constructors take as `tls=`: None reads the environment (`CONVEYOR_TLS*`),
False is plaintext, True is TLS (with the environment's CA and client certificate if set,
else gRPC's default roots), a `TlsOptions` is used as given."""


def resolve_client_tls(tls: ClientTls, settings: Settings | None = None) -> TlsOptions | None:
    """The TLS a client uses for `tls=` (see `ClientTls`); None means plaintext."""
    if isinstance(tls, TlsOptions):
        return tls
    if tls is False:
        return None
    configured = TlsOptions.from_settings(settings or Settings.from_env())
    if tls is True:
        return configured or TlsOptions()
    return configured


def open_channel(
    target: str, tls: ClientTls = None, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A blocking channel to `target`: secure when `tls` resolves to TLS, else plaintext."""
    resolved = resolve_client_tls(tls)
    options = [*CLIENT_OPTIONS, *options]
    if resolved is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(
        target, resolved.credentials(), options=[*options, *resolved.channel_options()]
    )


def open_aio_channel(
    target: str,
    tls: ClientTls = None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: secure when `tls` resolves to TLS, else plaintext."""
    resolved = resolve_client_tls(tls)
    options = [*CLIENT_OPTIONS, *options]
    given = list(interceptors) or None
    if resolved is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=given)
    return grpc.aio.secure_channel(
        target,
        resolved.credentials(),
        options=[*options, *resolved.channel_options()],
        interceptors=given,
    )
