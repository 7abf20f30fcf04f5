"""`conveyor artifacts ID` and `conveyor download ID NAME`: the files a job made, and
fetching one through its expiring link (checked against its SHA-256)."""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from conveyor.cli.common import AddrOption, JsonFlag, call, err, message_dict, when

if TYPE_CHECKING:
    from conveyor.client import JobResult

CHUNK = 1 << 20


def _result(addr: str | None, job_id: str) -> JobResult:
    return call(addr, lambda client: client.result(job_id))


def artifacts(job_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """List a SUCCEEDED job's artifacts with download links (they expire; keep them secret)."""
    found = _result(addr, job_id)
    if as_json:
        print(json.dumps([message_dict(a.raw) for a in found.artifacts]))
        return
    if not found.artifacts:
        print("no artifacts")
    for a in found.artifacts:
        until = a.url_expire_time.strftime("%H:%M:%S UTC") if a.url_expire_time else "-"
        print(f"{a.name:<32} {a.size:>12,} B  {a.content_type:<24} link until {until}")
        print(f"  {a.url}")
    if found.job.expire_time is not None:
        print(f"kept until {when(found.job.expire_time)}")


def download(
    job_id: str,
    name: Annotated[str, typer.Argument(help="The artifact's name.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File to write ('-': stdout).")
    ] = None,
    addr: AddrOption = None,
) -> None:
    """Download one artifact (to its own name in the current folder by default)."""
    found = _result(addr, job_id)
    match = next((a for a in found.artifacts if a.name == name), None)
    if match is None:
        err.print(f"job {job_id} has no artifact {name!r}")
        raise typer.Exit(2)
    target = output or Path(name)
    digest = hashlib.sha256()
    with urllib.request.urlopen(match.url, timeout=60) as response:
        out = sys.stdout.buffer if str(target) == "-" else target.open("wb")
        try:
            while block := response.read(CHUNK):
                digest.update(block)
                out.write(block)
        finally:
            if out is not sys.stdout.buffer:
                out.close()
    if match.sha256 and digest.hexdigest() != match.sha256:
        err.print(f"{name}: downloaded bytes do not match the artifact's SHA-256")
        raise typer.Exit(1)
    if str(target) != "-":
        err.print(f"{name}: {match.size:,} bytes written to {target}")
