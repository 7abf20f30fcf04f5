"""What the `conveyor` commands share: options, the client, JSON and error output."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer
from google.protobuf import json_format
from rich.console import Console

from conveyor.errors import ConveyorError

err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
AddrOption = Annotated[
    str | None, typer.Option("--addr", help="API address (default CONVEYOR_API_ADDR).")
]


def message_dict(message: Any) -> dict[str, Any]:
    """A proto message as JSON-ready data, with the proto's own field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def fail(exc: ConveyorError) -> NoReturn:
    """Say why a call failed and exit 2."""
    err.print(f"[red]error[/red] {exc.code.name}: {exc.message}")
    raise typer.Exit(2)


def client(addr: str | None) -> Any:
    from conveyor.client import Client

    return Client(addr)
