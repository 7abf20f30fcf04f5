"""What the `conveyor` commands share: options, the client, JSON and error output."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape

from conveyor.errors import ConveyorError

if TYPE_CHECKING:  # imported when first called: `conveyor --help` does not load grpc's stubs
    from conveyor.client import Client

# soft_wrap: a line longer than the terminal is left for the terminal to wrap, never broken
# by rich, so ids, page tokens and commands copy and paste whole (issue 23, item 5).
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
AddrOption = Annotated[
    str | None, typer.Option("--addr", help="API address (default CONVEYOR_API_ADDR).")
]


def message_dict(message: Any) -> dict[str, Any]:
    """A proto message as JSON-ready data, with the proto's own field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def when(moment: datetime | None) -> str:
    """A time as the CLI prints it: ISO 8601, UTC, to the millisecond ("-": none)."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def fail(exc: ConveyorError) -> NoReturn:
    """Say why a call failed (see `report`) and exit 2."""
    report(exc)
    raise typer.Exit(2)


def report(exc: ConveyorError) -> None:
    """Say why a call failed, in a line, and what to do where that is known."""
    err.print(f"[red]error[/red] {exc.code.name}: {escape(_explained(exc))}", highlight=False)


def _explained(exc: ConveyorError) -> str:
    """The error's message, or for a call that sent no key, what to set."""
    if exc.code is grpc.StatusCode.UNAUTHENTICATED and not os.environ.get("CONVEYOR_API_KEY"):
        return (
            "no API key was sent: set CONVEYOR_API_KEY (`conveyor dev` printed one; "
            "`conveyor keys create --owner NAME` makes another)"
        )
    return exc.message


def client(addr: str | None) -> Client:
    from conveyor.client import Client

    return Client(addr)


def call(addr: str | None, action: Callable[[Client], T]) -> T:
    """Run `action` with a client; a failed call is reported and exits 2."""
    with client(addr) as c:
        try:
            return action(c)
        except ConveyorError as exc:
            fail(exc)


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """`--label KEY=VALUE` options as labels (the API checks keys and values), or exit 2
    naming the option that has no `=`."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            err.print(f"[red]error[/red] --label {escape(pair)}: expected KEY=VALUE")
            raise typer.Exit(2)
        labels[key] = value
    return labels


def parse_time(text: str, option: str) -> datetime | None:
    """An ISO 8601 option's time (UTC unless it names an offset; "": unset), or exit 2
    saying what is wrong with it."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        err.print(f"{option} is not an ISO 8601 time: {text!r}")
        raise typer.Exit(2) from None


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | None, option: str) -> timedelta | None:
    """A duration option (`60s`, `500ms`, `5m`, `1h`, `1d`; a bare number is seconds; None
    or "": unset), or exit 2 saying what is wrong with it."""
    if not text:
        return None
    number, unit = text, "s"
    for name in sorted(_DURATION_UNITS, key=len, reverse=True):
        if text.endswith(name):
            number, unit = text[: -len(name)], name
            break
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        err.print(f"{option} is not a duration (e.g. 60s, 500ms, 5m, 1h): {text!r}")
        raise typer.Exit(2)
    return timedelta(seconds=seconds)


def parse_payload(text: str) -> dict[str, Any]:
    """A --payload option's JSON object, or exit 2 saying what is wrong with it."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        err.print(f"--payload is not JSON: {exc}")
        raise typer.Exit(2) from None
    if not isinstance(body, dict):
        err.print("--payload must be a JSON object")
        raise typer.Exit(2)
    return body
