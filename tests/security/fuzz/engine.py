"""Sends probes, many at a time over a few channels, and judges every answer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conveyor.v1 import job_pb2
from conveyor.v1 import job_service_pb2 as pb
from tests.security.fuzz.generators import Draws
from tests.security.fuzz.ledger import FuzzStack, Token
from tests.security.fuzz.rpcs import (
    CALL_TIMEOUT,
    CHANNELS,
    CLIENT_MAX_MESSAGE,
    DECODE_FAILURE_DETAILS,
    IN_FLIGHT,
    PER_EXAMPLE,
    RANDOM_DRAWS,
    RESPONSE_TYPES,
    SERVICE,
    WATCH_WAIT,
    Code,
    Failure,
    Probe,
)

# -- sending ------------------------------------------------------------------------------


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    reply: bytes | None = None
    silent: bool = False


class Engine:
    """Sends probes `in_flight` at a time over a few channels, judges every answer and keeps
    the ledger (accepted jobs, issued page tokens) and the failures."""

    def __init__(self, fuzz: FuzzStack, name: str, *, in_flight: int = IN_FLIGHT) -> None:
        self.fuzz = fuzz
        self.name = name
        self.ledger = fuzz.ledger
        self.in_flight = in_flight
        self.failures: list[Failure] = []
        self.codes: Counter[str] = Counter()
        self.sent = 0
        self.raw = 0
        self._channels: list[grpc.aio.Channel] = []
        self._turn = 0
        self.started = time.monotonic()
        self.outcomes: list[tuple[str, frozenset[str], str]] = []  # rpc, tags, code

    async def __aenter__(self) -> Engine:
        options = [
            ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE),
            ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE),
        ]
        self._channels = [
            grpc.aio.insecure_channel(self.fuzz.stack.api_addr, options=options)
            for _ in range(CHANNELS)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in self._channels:
            await channel.close(None)

    async def call(self, probe: Probe) -> Answer:
        channel = self._channels[self._turn % len(self._channels)]
        self._turn += 1
        path = f"/{SERVICE}/{probe.rpc}"
        try:
            if probe.rpc == "WatchJob":
                stream = channel.unary_stream(path, None, None)(
                    probe.body, metadata=probe.metadata, timeout=CALL_TIMEOUT
                )
                try:
                    first = await asyncio.wait_for(stream.read(), WATCH_WAIT)
                except TimeoutError:
                    return Answer(Code.OK, "", silent=True)
                finally:
                    stream.cancel()
                reply = first if isinstance(first, bytes) else None
                return Answer(Code.OK, "", reply)
            unary = channel.unary_unary(path, None, None)
            reply = await unary(probe.body, metadata=probe.metadata, timeout=CALL_TIMEOUT)
            assert isinstance(reply, bytes)
            return Answer(Code.OK, "", reply)
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "")

    async def send(self, probe: Probe) -> None:
        try:
            answer = await self.call(probe)
        except Exception as exc:  # the client refused to send it: the probe is at fault
            self.failures.append(Failure(probe, "client error", repr(exc)[:300]))
            return
        self.sent += 1
        self.raw += probe.raw
        self.codes[answer.code.name] += 1
        self.outcomes.append((probe.rpc, probe.tags, answer.code.name))
        self.ledger.requests += 1
        self.ledger.raw += probe.raw
        self.ledger.codes[answer.code.name] += 1
        wrong = self.judge(probe, answer)
        if wrong is not None:
            self.failures.append(Failure(probe, wrong, answer.details[:300]))

    def judge(self, probe: Probe, answer: Answer) -> str | None:
        """None if the answer is right; else what was wrong, and keep what was accepted."""
        if answer.silent and not probe.may_stay_silent:
            return f"no answer in {WATCH_WAIT}s"
        if answer.code not in probe.expected:
            return answer.code.name
        if "undecodable" in probe.tags and DECODE_FAILURE_DETAILS not in answer.details:
            return f"{answer.code.name} without saying the bytes do not parse"
        if answer.code != Code.OK or answer.reply is None:
            return None
        reply = RESPONSE_TYPES[probe.rpc].FromString(answer.reply)
        jobs: list[job_pb2.Job] = []
        if isinstance(reply, pb.SubmitJobsResponse | pb.ListJobsResponse):
            jobs = list(reply.jobs)
        else:
            jobs = [value for fd, value in reply.ListFields() if fd.name == "job"]
        if isinstance(reply, pb.ListJobsResponse) and reply.next_page_token:
            assert probe.filters is not None
            self.ledger.tokens.append(Token(probe.caller, probe.filters, reply.next_page_token))
        strangers = [j.id for j in jobs if j.owner != probe.caller]
        if strangers:
            return f"OK with another owner's jobs {strangers[:3]}"
        if probe.rpc in ("SubmitJob", "SubmitJobs"):
            elapsed = time.monotonic() - self.started
            via = f"{probe.rpc} ({len(jobs)} jobs) in test {self.name!r} at {elapsed:.2f}s"
            for job in jobs:
                self.ledger.accept(job, via)
        return None

    async def run_list(self, items: list[Probe]) -> None:
        """Send `items`, `in_flight` at a time."""
        pending = iter(items)

        async def worker() -> None:
            for probe in pending:  # one iterator shared by the workers
                await self.send(probe)

        await asyncio.gather(*(worker() for _ in range(max(min(self.in_flight, len(items)), 1))))

    async def consume(self, source: AsyncIterator[Probe]) -> None:
        async for probe in source:
            await self.send(probe)


async def generate_and_send(
    engine: Engine, make: Callable[[Draws], st.SearchStrategy[Probe]], count: int
) -> float:
    """Draw `count` probes with hypothesis in a thread while the engine sends them; the
    seconds spent."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Probe | None] = asyncio.Queue(maxsize=4 * IN_FLIGHT)
    strategy = make(Draws(engine.ledger))
    stop = threading.Event()
    made = 0
    started = time.monotonic()

    @settings(  # derandomized: CI draws the same requests every run, so a red run reproduces
        max_examples=count // PER_EXAMPLE + 1,
        derandomize=not RANDOM_DRAWS,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw_some(data: st.DataObject) -> None:
        nonlocal made
        for _ in range(PER_EXAMPLE):  # always as many: drawing must not depend on `made`
            if stop.is_set():
                return
            probe = data.draw(strategy)
            asyncio.run_coroutine_threadsafe(queue.put(probe), loop).result()
            made += 1

    def generate() -> None:
        try:
            while made < count and not stop.is_set():
                draw_some()
        finally:
            for _ in range(engine.in_flight):
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    async def source() -> AsyncIterator[Probe]:
        while (probe := await queue.get()) is not None:
            yield probe

    producer = asyncio.ensure_future(asyncio.to_thread(generate))
    consumers = [asyncio.ensure_future(engine.consume(source())) for _ in range(engine.in_flight)]
    try:
        await asyncio.gather(producer, *consumers)
    finally:
        # However this ends (a failure, a timeout), let the drawing thread finish.
        stop.set()
        for consumer in consumers:
            consumer.cancel()
        while not producer.done():
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            await asyncio.sleep(0.01)
    return time.monotonic() - started


@dataclass
class Run:
    """One fuzz run's engine (its counts and wrong answers) and how long it took."""

    engine: Engine
    seconds: float
