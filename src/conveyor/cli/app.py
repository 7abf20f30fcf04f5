"""`conveyor` commands (DESIGN.md §9). Job commands talk to the API through the client;
`api`, `worker`, `scheduler` run a service in this process; `dev` runs them all."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.markup import escape

from conveyor.cli.artifacts import artifacts, download
from conveyor.cli.batches import batches_app
from conveyor.cli.bulk import bulk_app, dead_retry, jobs_app
from conveyor.cli.common import (
    AddrOption,
    JsonFlag,
    err,
    fail,
    message_dict,
    parse_duration,
    parse_labels,
    parse_payload,
    parse_time,
    report,
    when,
)
from conveyor.cli.common import client as client_for
from conveyor.cli.queues import queues_app, workers
from conveyor.cli.schedules import schedules_app
from conveyor.config import ConfigurationError, Settings, configuration_failure
from conveyor.errors import ConveyorError
from conveyor.telemetry import tracing
from conveyor.v1 import job_pb2

if TYPE_CHECKING:  # the client loads grpc: imported by the commands that call the API
    from conveyor.client import Attempt, Client, Job

app = typer.Typer(
    name="conveyor",
    help="Conveyor: background jobs over gRPC. Job commands read CONVEYOR_API_ADDR and "
    "CONVEYOR_API_KEY.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Manage API keys (needs CONVEYOR_DATABASE_URL).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
# Commands that run a service set up its tracing themselves (as conveyor-api, …).
SERVICE_COMMANDS = {"dev", "api", "worker", "scheduler", "dashboard", "migrate"}


@dataclass
class _Run:
    """How this run of `conveyor` reports an unexpected error: in a line (what it is and
    what to do), or with `--debug` as the full traceback."""

    debug: bool = False


_RUN = _Run()


@app.callback()
def _trace_command(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an unexpected error.")
    ] = False,
) -> None:
    """With OTEL_* set, a client command is one trace: `conveyor submit` and every call it
    makes, on to the API and the worker's attempts."""
    _RUN.debug = debug
    command = ctx.invoked_subcommand
    if command in SERVICE_COMMANDS or not tracing.configure_tracing("conveyor-cli"):
        return
    ctx.call_on_close(tracing.start_root(f"conveyor {command}"))


dead_app = typer.Typer(
    help="The dead-letter queue: jobs that used up their attempts or failed for good.",
    no_args_is_help=True,
)
app.add_typer(dead_app, name="dead")
dead_app.command("retry")(dead_retry)
app.add_typer(jobs_app, name="jobs")
app.add_typer(bulk_app, name="bulk")
app.add_typer(queues_app, name="queues")
app.add_typer(schedules_app, name="schedules")
app.add_typer(batches_app, name="batches")
app.command()(workers)
app.command()(artifacts)
app.command()(download)

T = TypeVar("T")


def _job_dict(job: Job) -> dict[str, Any]:
    """The job as the API's JSON has it (proto field names), its payload's ints kept."""
    found = message_dict(job.raw)
    if job.raw.HasField("payload"):
        found["payload"] = job.payload  # ints stay ints, not 2.0
    return found


def _print_job(job: Job, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_job_dict(job)))
        return
    line = f"{job.id}  {job.type:<16} {job.state.name:<10} {job.progress:5.1f}%  queue={job.queue}"
    if job.labels:
        line += "  " + " ".join(f"{key}={value}" for key, value in sorted(job.labels.items()))
    if job.raw.depends_on:
        line += f"  after={_some(job.depends_on)}"
    if job.batch_id:
        line += f"  batch={job.batch_id}"
    if job.blocked_reason:
        line += f"  waiting: {job.blocked_reason}"
    if job.error:
        line += f"  error={job.error}"
    if job.expire_time is not None:
        line += f"  kept until {when(job.expire_time)}"
    print(line)


def _some(ids: list[str], shown: int = 3) -> str:
    """A list of ids for a line: the first few, then how many more (a job may wait for
    10,000; `get --json` has them all)."""
    more = f",+{len(ids) - shown} more" if len(ids) > shown else ""
    return ",".join(ids[:shown]) + more


# -- services ----------------------------------------------------------------------------
def service_main(name: str) -> Callable[..., None]:
    """The composition root of service `name`: the `main` that its `conveyor-<name>`
    console script runs. The services import the library, never the other way: the
    library finds them through the package's entry points (pyproject's
    `[project.scripts]`, the one place they are named), not by importing them."""
    (entry,) = entry_points(group="console_scripts", name=f"conveyor-{name}")
    main: Callable[..., None] = entry.load()
    return main


def _join_dev_stack() -> None:
    """Take a running dev stack's settings (see `conveyor.cli.dev.join_dev`) where the
    environment sets none of its own."""
    if os.environ.get("CONVEYOR_REDIS_URL"):
        return
    from conveyor.cli.dev import join_dev

    joined = join_dev(Settings.from_env().data_dir)
    if joined is None:
        return
    for name, value in joined.items():
        os.environ.setdefault(name, value)
    err.print(f"joining the `conveyor dev` stack in {joined['CONVEYOR_DATA_DIR']}", highlight=False)


@app.command()
def api(
    processes: Annotated[
        int | None,
        typer.Option(help="Processes serving the one port (CONVEYOR_API_PROCESSES; default 1)."),
    ] = None,
) -> None:
    """Serve JobService (configured by CONVEYOR_* variables)."""
    service_main("api")(Settings.from_env(api_processes=processes))


@app.command()
def worker(
    handlers: Annotated[
        str | None, typer.Option(help="Handler modules to load, comma separated.")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once.")] = None,
    queues: Annotated[str | None, typer.Option(help="Queues to serve, comma separated.")] = None,
) -> None:
    """Run jobs, serving WorkerControl on CONVEYOR_WORKER_ADDR. With no CONVEYOR_REDIS_URL,
    beside a running `conveyor dev` (same folder), it joins that stack."""
    _join_dev_stack()
    service_main("worker")(
        Settings.from_env(handlers=handlers, worker_concurrency=concurrency, worker_queues=queues)
    )


@app.command()
def scheduler() -> None:
    """Run the scheduler (schedules and the reconciler)."""
    service_main("scheduler")()


@app.command()
def dashboard() -> None:
    """Serve the web dashboard on CONVEYOR_DASHBOARD_ADDR, a client of CONVEYOR_API_ADDR."""
    service_main("dashboard")()


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema at CONVEYOR_DATABASE_URL."""
    from conveyor.db import migrate as run_migrations

    run_migrations(Settings.from_env().database_url)
    err.print("database schema is up to date")


@app.command()
def dev(
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 1,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            "--redis-cluster",
            help="Run on a Redis Cluster: a local one of 3 primaries and 3 replicas, or the "
            "one CONVEYOR_REDIS_URL names (as with CONVEYOR_REDIS_CLUSTER=true).",
        ),
    ] = False,
    new_key: Annotated[
        bool,
        typer.Option(
            "--new-key", help="Make a new admin key instead of reusing the one stored last run."
        ),
    ] = False,
    handlers: Annotated[
        str,
        typer.Option(
            help="Your handler modules (comma separated), from the current folder: the api "
            "checks their payloads and applies their policies, the workers run them."
        ),
    ] = "",
) -> None:
    """Run api, worker(s) and scheduler locally on SQLite and an embedded Redis (or Cluster)."""
    from conveyor.cli.dev import run_dev

    code = run_dev(
        Settings.from_env(),
        workers=workers,
        redis_cluster=redis_cluster,
        new_key=new_key,
        handlers=handlers,  # CONVEYOR_HANDLERS reaches the services with the environment
    )
    raise typer.Exit(code)


# -- keys --------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="Who the key's jobs belong to.")],
    role: Annotated[str, typer.Option(help="user or admin.")] = "user",
    description: Annotated[str, typer.Option(help="A note for people.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; it is printed once and only its digest is stored."""
    from conveyor.server.auth import Role

    if role not in ("user", "admin"):
        err.print("--role must be user or admin")
        raise typer.Exit(2)
    made = _with_keys(lambda auth, _: auth.create_key(owner, Role(role), description))
    if as_json:
        print(json.dumps({"key": made.token, "id": made.stored.id, "owner": owner,
                          "role": role}))  # fmt: skip
    else:
        print(made.token)


@keys_app.command("list")
def keys_list(
    owner: Annotated[str, typer.Option(help="Only this owner's keys.")] = "",
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List API keys (never their secrets), newest first: all of them, a page at a time."""
    found = _with_keys(lambda _, keys: _all_keys(keys, owner or None, all_keys))
    if as_json:
        print(json.dumps([_key_dict(k) for k in found]))
        return
    for key in found:
        revoked = "  REVOKED" if key.revoke_time is not None else ""
        print(f"{key.id}  {key.owner:<20} {key.role:<6} {key.description}{revoked}")


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: JsonFlag = False) -> None:
    """Revoke an API key: its calls and open streams end within a second."""
    key_id = _key_id(key_id)
    revoked = _with_keys(lambda _, keys: keys.revoke(key_id))
    if revoked is None:
        _key_not_found(key_id)
    print(json.dumps(_key_dict(revoked)) if as_json else f"revoked {revoked.id}")


BURST_HELP = "at once (0: a second's worth); only beside its rate: a rate limit is set whole"


@keys_app.command("limits")
def keys_limits(
    key_id: str,
    submit_rate: Annotated[
        str | None, typer.Option(help="Jobs a second (0: unlimited; 'default': the server's).")
    ] = None,
    submit_burst: Annotated[float | None, typer.Option(help=f"Jobs {BURST_HELP}.")] = None,
    read_rate: Annotated[
        str | None, typer.Option(help="Reads a second (0: unlimited; 'default': the server's).")
    ] = None,
    read_burst: Annotated[float | None, typer.Option(help=f"Reads {BURST_HELP}.")] = None,
    max_running: Annotated[
        int | None, typer.Option(help="Jobs of this key running at once per queue (0: no cap).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Change the key's limits given as options and keep its others; with none given, show
    its limits. A rate limit is set whole: --submit-rate alone sets a second's worth of burst."""
    from conveyor.db.keys import KeyLimits

    key_id = _key_id(key_id)
    if max_running is not None and not 0 <= max_running <= 1_000_000:
        err.print("--max-running must be between 0 and 1000000")
        raise typer.Exit(2)
    limits = KeyLimits(
        submit_limit=_rate_limit("submit", submit_rate, submit_burst),
        read_limit=_rate_limit("read", read_rate, read_burst),
        max_running_jobs=max_running or 0,
    )
    given = {"submit_limit": submit_rate, "read_limit": read_rate, "max_running_jobs": max_running}
    named = [name for name, value in given.items() if value is not None]
    if named:
        found = _with_keys(lambda _, keys: keys.set_limits(key_id, limits, named))
    else:
        found = _with_keys(lambda _, keys: keys.get(key_id))
    if found is None:
        _key_not_found(key_id)
    if as_json:
        print(json.dumps(_key_dict(found)))
    elif named:
        print(f"updated {found.id}")
    else:
        _show_key_limits(found)


def _show_key_limits(key: Any) -> None:
    """What `conveyor keys limits ID` with no option prints: the limits and how to change them."""
    print(
        f"{key.id}: submit_limit={_rate_text(key.submit_limit)} "
        f"read_limit={_rate_text(key.read_limit)} max_running={key.max_running or 'none'}"
    )
    err.print(
        f"change them with: conveyor keys limits {key.id} [--submit-rate R [--submit-burst B]] "
        "[--read-rate R [--read-burst B]] [--max-running N] (the options given change, the "
        "others stay; a rate of 'default' gives the key the server's)"
    )


def _rate_limit(which: str, rate: str | None, burst: float | None) -> tuple[float, float] | None:
    """A --submit-rate/--read-rate with its burst as (per second, burst); None for
    'default' (or not given); exits 2 on a bad value."""
    if rate is None and burst is not None:
        err.print(f"--{which}-burst needs --{which}-rate: a rate limit is set whole")
        raise typer.Exit(2)
    if rate is None or rate == "default":
        return None
    try:
        per_second = float(rate)
    except ValueError:
        err.print(f"--{which}-rate must be a number or 'default', not {rate!r}")
        raise typer.Exit(2) from None
    if not all(0 <= v <= 1e9 for v in (per_second, burst or 0)):
        err.print("rates and bursts must be between 0 and 1e9")
        raise typer.Exit(2)
    return per_second, burst or per_second


def _rate_text(limit: tuple[float, float] | None) -> str:
    if limit is None:
        return "default"
    return f"{limit[0]:g}/s burst {limit[1]:g}" if limit[0] else "unlimited"


def _key_id(text: str) -> str:
    from conveyor.db.keys import parse_key_id

    key_id = parse_key_id(text)
    if key_id is None:
        err.print(f"not a key id: {text!r}")
        raise typer.Exit(2)
    return key_id


def _key_not_found(key_id: str) -> NoReturn:
    err.print(f"[red]error[/red] NOT_FOUND: API key {key_id} not found")
    raise typer.Exit(2)


def _with_keys(action: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run `action(authenticator, keystore)` against CONVEYOR_DATABASE_URL."""
    from conveyor.db import Database, KeyStore
    from conveyor.db.database import missing_sqlite_file
    from conveyor.server.auth import Authenticator

    url = Settings.from_env().database_url
    missing = missing_sqlite_file(url)
    if missing is not None:
        err.print(
            f"[red]error[/red] no database at {escape(str(missing))}: run this in the folder "
            "where `conveyor dev` runs (it keeps its database in .conveyor/), or set "
            "CONVEYOR_DATABASE_URL",
            highlight=False,
        )
        raise typer.Exit(2)

    async def run() -> T:
        db = Database(url)
        try:
            keys = KeyStore(db)
            return await action(Authenticator(keys), keys)
        finally:
            await db.close()

    return asyncio.run(run())


async def _all_keys(keys: Any, owner: str | None, include_revoked: bool) -> list[Any]:
    """Every key the listing holds, walking the store's pages (a page is at most
    MAX_LISTED keys; before pages this command stopped there)."""
    from conveyor.db.keys import MAX_LISTED

    found: list[Any] = []
    before = None
    while True:
        page = await keys.list_keys(owner, include_revoked=include_revoked, before=before)
        found += page
        if len(page) < MAX_LISTED:
            return found
        before = (page[-1].create_time, page[-1].id)


def _key_dict(key: Any) -> dict[str, Any]:
    return {
        "id": key.id,
        "owner": key.owner,
        "role": key.role,
        "description": key.description,
        "create_time": key.create_time,
        "revoke_time": key.revoke_time,
        "submit_limit": key.submit_limit,
        "read_limit": key.read_limit,
        "max_running": key.max_running,
    }


# -- jobs --------------------------------------------------------------------------------
@app.command()
def submit(
    type: Annotated[str, typer.Argument(help="Job type, e.g. sleep.")],
    payload: Annotated[str, typer.Option(help="Payload as a JSON object.")] = "{}",
    queue: Annotated[str, typer.Option(help="Queue name.")] = "",
    priority: Annotated[int | None, typer.Option(help="0-9, higher first (default 5).")] = None,
    idempotency_key: Annotated[
        str, typer.Option(help="Same key, same job (default: a fresh one, kept across retries).")
    ] = "",
    max_attempts: Annotated[
        int, typer.Option(help="Attempts before the job is DEAD (0: default).")
    ] = 0,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds one attempt may run (default: server's).")
    ] = None,
    delay: Annotated[
        float | None, typer.Option(help="Seconds to wait before the job may run.")
    ] = None,
    retention: Annotated[
        float | None,
        typer.Option(help="Seconds the job is kept once finished (default: type's or server's)."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="KEY=VALUE to find the job by (repeat for more)."),
    ] = None,
    unique_for: Annotated[
        str | None,
        typer.Option(
            help="With --idempotency-key: within this (e.g. 60s) the key's job is the job."
        ),
    ] = None,
    debounce: Annotated[
        str | None,
        typer.Option(help="With --idempotency-key: run this long (e.g. 5s) after the last submit."),
    ] = None,
    concurrency_key: Annotated[
        str,
        typer.Option(help="Jobs with this key run at most the queue's --max-per-key at once."),
    ] = "",
    rate_key: Annotated[
        str,
        typer.Option(
            help="Jobs with this key start at most the queue's --rate-per-key per "
            "--per-key-interval."
        ),
    ] = "",
    after: Annotated[
        list[str] | None,
        typer.Option(
            "--after",
            help="A job ID this one waits for: it starts once all of them SUCCEEDED, and is "
            "cancelled if one ends DEAD or CANCELLED (repeat for more).",
        ),
    ] = None,
    run_anyway: Annotated[
        bool,
        typer.Option(
            "--run-anyway", help="With --after: run once they have all ended, however they ended."
        ),
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Watch the job until it ends.")] = False,
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a job and print it (with --wait, follow it to the end)."""
    from conveyor.client import DependencyFailurePolicy

    body = parse_payload(payload)
    labels = parse_labels(label or [])
    if run_anyway and not after:
        err.print("--run-anyway needs --after: it says what a failed dependency does")
        raise typer.Exit(2)
    policy = DependencyFailurePolicy.RUN_ANYWAY if run_anyway else None
    with client_for(addr) as client:
        try:
            job = client.submit(
                type,
                body,
                queue=queue,
                priority=priority,
                idempotency_key=idempotency_key,
                max_attempts=max_attempts,
                timeout=None if timeout is None else timedelta(seconds=timeout),
                delay=None if delay is None else timedelta(seconds=delay),
                retention=None if retention is None else timedelta(seconds=retention),
                labels=labels,
                unique_for=parse_duration(unique_for, "--unique-for"),
                debounce=parse_duration(debounce, "--debounce"),
                concurrency_key=concurrency_key,
                rate_key=rate_key,
                depends_on=after or [],
                dependency_failure_policy=policy,
            )
        except ConveyorError as exc:
            fail(exc)
        _print_job(job, as_json)
        if wait:
            raise typer.Exit(_follow(client, job.id, as_json))


@app.command()
def get(job_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Print a job."""
    with client_for(addr) as client:
        try:
            _print_job(client.get(job_id), as_json)
        except ConveyorError as exc:
            fail(exc)


@app.command()
def result(job_id: str, addr: AddrOption = None) -> None:
    """Print a SUCCEEDED job's result as JSON (exit 2 if it has none yet)."""
    with client_for(addr) as client:
        try:
            found = client.result(job_id)
        except ConveyorError as exc:
            fail(exc)
    print(json.dumps(found.result))


@app.command()
def cancel(job_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Cancel a job that has not ended."""
    with client_for(addr) as client:
        try:
            _print_job(client.cancel(job_id), as_json)
        except ConveyorError as exc:
            fail(exc)


@app.command("list")
def list_jobs(
    state: Annotated[str, typer.Option(help="e.g. RUNNING or JOB_STATE_RUNNING.")] = "",
    queue: Annotated[str, typer.Option()] = "",
    type: Annotated[str, typer.Option("--type")] = "",
    created_after: Annotated[
        str, typer.Option(help="Only jobs created at or after this (ISO 8601; no offset: UTC).")
    ] = "",
    created_before: Annotated[
        str, typer.Option(help="Only jobs created before this (ISO 8601; no offset: UTC).")
    ] = "",
    filter: Annotated[
        str,
        typer.Option(
            "--filter",
            help='An AIP-160 filter, e.g. \'labels.team = "billing" AND error:"timeout"\'.',
        ),
    ] = "",
    page_size: Annotated[int, typer.Option(help="Jobs per page.")] = 20,
    page_token: Annotated[str, typer.Option(help="From a previous page.")] = "",
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List your jobs, newest first. A time without an offset is UTC; --created-after is
    inclusive and --created-before exclusive, so consecutive ranges do not overlap."""
    state_value = 0
    if state:
        name = state.upper()
        name = name if name.startswith("JOB_STATE_") else f"JOB_STATE_{name}"
        if name not in job_pb2.JobState.DESCRIPTOR.values_by_name:
            err.print(f"unknown state {state!r}")
            raise typer.Exit(2)
        state_value = job_pb2.JobState.Value(name)
    start = parse_time(created_after, "--created-after")
    end = parse_time(created_before, "--created-before")
    _list(addr, as_json, state=state_value, queue=queue, type=type, page_size=page_size,
          page_token=page_token, create_time_start=start, create_time_end=end,
          filter=filter)  # fmt: skip


@dead_app.command("list")
def dead_list(
    queue: Annotated[str, typer.Option()] = "",
    type: Annotated[str, typer.Option("--type")] = "",
    page_size: Annotated[int, typer.Option(help="Jobs per page.")] = 20,
    page_token: Annotated[str, typer.Option(help="From a previous page.")] = "",
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List your DEAD jobs, newest first (replay one with `conveyor retry ID`)."""
    _list(addr, as_json, state=job_pb2.JOB_STATE_DEAD, queue=queue, type=type,
          page_size=page_size, page_token=page_token)  # fmt: skip


def _list(addr: str | None, as_json: bool, **filters: Any) -> None:
    with client_for(addr) as client:
        try:
            page = client.list(**filters)
        except ConveyorError as exc:
            fail(exc)
    if as_json:
        jobs = [_job_dict(j) for j in page]
        print(json.dumps({"jobs": jobs, "next_page_token": page.next_page_token}))
        return
    for job in page:
        _print_job(job, False)
    if page.next_page_token:
        err.print(f"more: --page-token {page.next_page_token}")


@app.command()
def retry(
    job_id: str,
    max_attempts: Annotated[
        int, typer.Option(help="Attempts the replay may make (0: the type's default).")
    ] = 0,
    include_dependents: Annotated[
        bool,
        typer.Option(
            "--include-dependents",
            help="Also revive the jobs waiting for it that its end cancelled: they wait again.",
        ),
    ] = False,
    addr: AddrOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Replay a DEAD or CANCELLED job with a fresh attempt budget. With --include-dependents,
    --json prints {"job": ..., "revived_dependents": [ids]}."""
    with client_for(addr) as client:
        try:
            job = client.retry(job_id, max_attempts, include_dependents=include_dependents)
        except ConveyorError as exc:
            fail(exc)
    if not include_dependents:
        _print_job(job, as_json)
    elif as_json:
        print(json.dumps({"job": _job_dict(job), "revived_dependents": job.revived_dependents}))
    else:
        _print_job(job, False)
        revived = job.revived_dependents
        print(
            f"revived {len(revived)} dependent(s)" + (f": {' '.join(revived)}" if revived else "")
        )


@app.command()
def attempts(job_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Print every recorded attempt of a job: when, where, and how it ended."""
    found: list[Attempt] = []
    with client_for(addr) as client:
        try:
            token = None
            while token != "":  # every page (ListJobAttempts pages by 1,000)
                page = client.attempts_page(job_id, page_token=token or "")
                found += page
                token = page.next_page_token
            job = client.get(job_id) if not found and not as_json else None
        except ConveyorError as exc:
            fail(exc)
    if as_json:
        print(json.dumps([message_dict(a.raw) for a in found]))
        return
    for a in found:
        took = a.duration.total_seconds() if a.duration is not None else 0.0
        line = (
            f"#{a.attempt:<3} {a.outcome.name:<10} {when(a.start_time)} → {when(a.finish_time)} "
            f"{took:8.3f}s  worker={a.worker_id}"
        )
        print(line + (f"  error={a.error}" if a.error else ""))
    if job is not None:
        print(_no_attempts(job))


def _no_attempts(job: Job) -> str:
    """Why a job has no recorded attempt: none has ended yet (attempts are recorded as they
    end), or it has not started."""
    if job.state.name == "RUNNING":
        return (
            f"no attempt recorded yet: attempt {job.attempt} is RUNNING since "
            f"{when(job.start_time)} (an attempt is recorded when it ends)"
        )
    why = f" ({job.blocked_reason})" if job.blocked_reason else ""
    return f"no attempts: the job is {job.state.name}{why}"


@app.command()
def watch(job_id: str, addr: AddrOption = None, as_json: JsonFlag = False) -> None:
    """Follow a job with a live progress bar; exit 0 if it SUCCEEDED, 1 otherwise."""
    with client_for(addr) as client:
        raise typer.Exit(_follow(client, job_id, as_json))


def _follow(client: Client, job_id: str, as_json: bool) -> int:
    """Stream a job to its end; the exit code says whether it succeeded."""
    last: Job | None = None
    try:
        if as_json:
            for update in client.watch(job_id):
                last = update.job
                print(json.dumps({"sequence": update.sequence, "job": _job_dict(update.job)}))
                sys.stdout.flush()
        else:
            last = _follow_with_bar(client, job_id)
    except ConveyorError as exc:
        fail(exc)
    except KeyboardInterrupt:
        return 130
    if last is None:
        return 1
    if not as_json:
        _print_job(last, False)
    return 0 if last.state.name == "SUCCEEDED" else 1


def _follow_with_bar(client: Client, job_id: str) -> Job | None:
    """The job's progress as a live bar, and beneath it why it waits while it does (see
    conveyor.cli.waiting)."""
    # Imported here: every `conveyor` command, services included, would pay ~20 ms for it.
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from conveyor.cli.waiting import JobProgress, WaitingReason

    last = None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}"),
    )
    with (
        JobProgress(*columns, console=err, transient=False) as bar,
        WaitingReason(client, job_id, bar) as waiting,
    ):
        task = bar.add_task(job_id[:13], total=100, message="")
        for update in client.watch(job_id):
            last = update.job
            waiting.saw(last)
            bar.update(
                task,
                completed=last.progress,
                description=f"{job_id[:13]} {last.state.name:<9}",
                message=last.progress_message,
            )
    return last


def main() -> None:
    try:
        app()
    except ConfigurationError as exc:
        raise SystemExit(configuration_failure(exc)) from None
    except ConveyorError as exc:  # a command's own failure outside a call (a store, say)
        if _RUN.debug:
            raise
        report(exc)
        raise SystemExit(2) from None
    except Exception as exc:  # any other: one line, the traceback on request
        if _RUN.debug:
            raise
        err.print(f"[red]error[/red] {escape(f'{type(exc).__name__}: {exc}')}", highlight=False)
        err.print("run it again as `conveyor --debug …` for the traceback")
        raise SystemExit(1) from None
