"""`conveyor api --processes N` (CONVEYOR_API_PROCESSES): N API processes on one port.

One API process runs one event loop, so it uses one core however many the machine has. The
supervisor (the process `conveyor api` started) serves nothing itself: it starts N copies
of the API, each told its index by CONVEYOR_API_PROCESS_INDEX, and they all bind
CONVEYOR_API_ADDR with SO_REUSEPORT, so the kernel spreads new connections over them. The
processes share nothing but Redis and the database, as replicas on separate machines do
(the rate limits, page-token key and caches already assume that).

- Process i serves its metrics on CONVEYOR_METRICS_ADDR's port + i (its own `/metrics`, as
  a replica would have); only process 0 serves folder-store downloads.
- SIGTERM or SIGINT is passed on to every process, each drains as a lone API does, and the
  supervisor exits once all have: 0, or the first non-zero code among them.
- A process that exits on its own (a crash, a port it could not bind) stops the others,
  and the supervisor exits with its code: the orchestrator (compose, Kubernetes) restarts
  the set, rather than a set one short serving on unnoticed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from types import FrameType

from conveyor.config import Settings
from conveyor.telemetry.metrics import DEFAULT_ADDRS

log = logging.getLogger(__name__)

# How long the supervisor waits, after passing a stop on, for a process to end by itself
# before it kills it: the processes' own drain (CONVEYOR_SHUTDOWN_GRACE_SECONDS) plus slack.
KILL_SLACK_SECONDS = 10.0


def process_env(base: Mapping[str, str], settings: Settings, index: int) -> dict[str, str]:
    """The environment of process `index`: the supervisor's, plus its index, the count (so
    it binds with SO_REUSEPORT) and a metrics port of its own."""
    env = dict(base)
    env["CONVEYOR_API_PROCESSES"] = str(settings.api_processes)
    env["CONVEYOR_API_PROCESS_INDEX"] = str(index)
    metrics = settings.metrics_addr.strip() or DEFAULT_ADDRS["api"]
    host, _, port = metrics.rpartition(":")
    if port.isdigit() and int(port):  # else as given: "off", port 0, or one to warn about
        metrics = f"{host}:{int(port) + index}"
    env["CONVEYOR_METRICS_ADDR"] = metrics
    return env


def supervise(settings: Settings, command: Sequence[str]) -> int:
    """Run `settings.api_processes` copies of `command` until a stop signal, or until one of
    them exits; the exit code the set ends with."""
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    # Before the first process starts: a stop that comes meanwhile reaches every process.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(settings.api_processes):
            procs.append(
                subprocess.Popen(list(command), env=process_env(os.environ, settings, index))
            )
            if stopping:
                stop(signal.SIGTERM, None)
        log.info("api: %d processes on %s", len(procs), settings.api_addr)
        first = _first_to_exit(procs)
        asked = stopping
        if not asked:
            log.error(
                "api process %d exited with code %s: stopping the others",
                procs.index(first),
                first.returncode,
            )
            stop(signal.SIGTERM, None)
        patience = settings.shutdown_grace_seconds + KILL_SLACK_SECONDS
        codes = [_ended(proc, patience) for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not asked:  # exiting on its own is a failure, whatever the code
        return _shell_code(first.returncode) or 1
    return next((_shell_code(code) for code in codes if code), 0)


def _shell_code(code: int) -> int:
    """An exit code as a shell reports it: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code


def _first_to_exit(procs: Sequence[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Wait for any of `procs` to exit (a stop signal makes them all exit). The stop
    handler's `poll()` may have reaped one already, so those count first."""
    while True:
        for proc in procs:
            if proc.returncode is not None:
                return proc
        try:
            pid, status = os.wait()  # resumed after a signal handler has run (PEP 475)
        except ChildProcessError:  # every one reaped by `poll()`: their codes are set
            continue
        for proc in procs:
            if proc.pid == pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc


def _ended(proc: subprocess.Popen[bytes], patience: float) -> int:
    """`proc`'s exit code, killing it if it is still running after `patience` seconds."""
    try:
        return proc.wait(patience)
    except subprocess.TimeoutExpired:
        log.error("api process %d did not stop within %.0f s: killed", proc.pid, patience)
        proc.kill()
        return proc.wait()
