"""The dashboard's workers page in a real browser (Debian's chromium, headless): each row
live from its worker's own WatchWorkerStatus stream (server-sent events), with Pause, Resume
and a confirmed Drain; admin keys only, every POST with the session's CSRF token; the page's
streams closed when it goes away; a worker that cannot be reached shown as such.

Each test that acts on a worker starts one of its own, on a queue of its own, so the stack's
shared worker is never paused or drained."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from conveyor.client import AsyncClient, AsyncWorkerControl, Client, JobState
from conveyor.embedded import free_port
from conveyor.v1 import queue_pb2
from conveyor.v1 import worker_control_pb2 as wpb
from tests.e2e.browsing import WAIT, csrf_token, dashboard_tests, http_client, log_in, shot, until
from tests.e2e.test_worker_addresses import listed
from tests.processes import Keys, Service, Stack

pytestmark = dashboard_tests


def start_worker(stack: Stack, queue: str, **env: str) -> Service:
    """One more worker serving `queue` alone, on a WorkerControl port of its own."""
    return stack.start(
        "worker", "--queues", queue, "--concurrency", "2", env={**stack.worker_env(), **env}
    )


def announced(stack: Stack, keys: Keys, queue: str, service: Service) -> queue_pb2.Worker:
    """The worker serving `queue` as ListWorkers gives it, once it has announced itself."""

    async def find() -> queue_pb2.Worker:
        async with AsyncClient(stack.api_addr, api_key=keys.admin) as admin:
            return await listed(admin, queue, service)

    return asyncio.run(find())


def status(address: str, key: str) -> wpb.WorkerStatus:
    async def ask() -> wpb.WorkerStatus:
        async with AsyncWorkerControl(address, api_key=key) as control:
            return await control.status()

    return asyncio.run(ask())


def dashboard_process(stack: Stack, url: str) -> psutil.Process:
    [service] = [s for s in stack.services if f"http://{s.addr}" == url]
    return psutil.Process(service.proc.pid)


def ports_held(process: psutil.Process, ports: set[int]) -> set[int]:
    """Which of `ports` the dashboard holds an open TCP connection to now: a channel to a
    worker's WorkerControl, which the dashboard opens for a page's stream and closes with it."""
    return {
        c.raddr.port
        for c in process.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port in ports
    }


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def events_of(lines: Iterator[str]) -> Iterator[dict[str, object]]:
    """The data of each `worker` event of a /workers/events response."""
    name = ""
    for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:") and name == "worker":
            yield json.loads(line.removeprefix("data:"))


def test_workers_page_is_live_and_pauses_resumes_and_drains(
    stack: Stack, keys: Keys, dashboard: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """Guards issue 24's workers page: a job held running on a worker appears in that
    worker's row with its progress, without a reload; Pause and Resume change the row's
    state live (still the same page); Drain, once confirmed, shows DRAINING, and the worker
    lets the job finish when its gate opens and then exits cleanly."""
    queue = f"dash-workers-{uuid.uuid4().hex[:6]}"
    gate = tmp_path / "gate"
    # A grace longer than the test: the drain waits for the job, not for a timer.
    worker = start_worker(stack, queue, CONVEYOR_SHUTDOWN_GRACE_SECONDS="120")
    try:
        worker_id = announced(stack, keys, queue, worker).worker_id
        with Client(stack.api_addr, api_key=keys.alice) as client:
            payload = {"log": str(tmp_path / "log"), "gate": str(gate)}
            job = client.submit("test.hold", payload, queue=queue)

        log_in(browser, dashboard, keys.admin)
        browser.get(f"{dashboard}/workers")
        row = f'tr[data-worker="{worker_id}"]'
        state = (By.CSS_SELECTOR, f"{row} .worker-state .state")
        wait = WebDriverWait(browser, WAIT)
        wait.until(ec.text_to_be_present_in_element(state, "RUNNING"))
        browser.execute_script("window.__same_page = true")  # gone if the page reloads
        link = (By.CSS_SELECTOR, f'{row} .worker-jobs a[href="/jobs/{job.id}"]')
        wait.until(ec.presence_of_element_located(link))
        progress = (By.CSS_SELECTOR, f"{row} .worker-jobs .job-progress")
        wait.until(ec.text_to_be_present_in_element(progress, "50%"))
        assert browser.find_element(By.CSS_SELECTOR, f"{row} .worker-state").get_attribute(
            "aria-live"
        )
        shot(browser, tmp_path, "workers")

        browser.find_element(By.CSS_SELECTOR, f'{row} button[data-action="pause"]').click()
        wait.until(ec.text_to_be_present_in_element(state, "PAUSED"))
        resume = browser.find_element(By.CSS_SELECTOR, f'{row} button[data-action="resume"]')
        assert resume.is_enabled()
        assert not browser.find_element(
            By.CSS_SELECTOR, f'{row} button[data-action="pause"]'
        ).is_enabled()
        resume.click()
        wait.until(ec.text_to_be_present_in_element(state, "RUNNING"))
        assert browser.execute_script("return window.__same_page") is True

        browser.find_element(By.CSS_SELECTOR, f'{row} button[data-action="drain"]').click()
        wait.until(ec.presence_of_element_located((By.ID, "drain-confirm"))).click()
        wait.until(ec.text_to_be_present_in_element(state, "DRAINING"))
        shot(browser, tmp_path, "workers-draining")
        assert worker.proc.poll() is None, "draining waits for the running job"
        gate.touch()
        assert worker.proc.wait(WAIT) == 0, worker.tail()
        with Client(stack.api_addr, api_key=keys.alice) as client:
            assert client.get(job.id).state == JobState.SUCCEEDED, "the drain let it finish"
        # Its stream ended with the worker: the row shows the end, not a stale DRAINING.
        wait.until(lambda b: b.find_element(*state).text in {"STOPPED", "UNREACHABLE"})
    finally:
        gate.touch()
        assert worker.stop() == 0, worker.tail()


def test_workers_page_and_actions_are_for_admins_with_the_sessions_token(
    stack: Stack, keys: Keys, dashboard: str
) -> None:
    """A user key gets 403 on /workers, /workers/events and every worker POST; an admin's
    POST with a forged or missing CSRF token is 403 and does nothing; Drain without its
    confirmation answers the confirmation page and does nothing either; an id that no live
    worker has is 404 (the dashboard dials only the addresses ListWorkers gives)."""
    queue = f"dash-auth-{uuid.uuid4().hex[:6]}"
    worker = start_worker(stack, queue)
    try:
        listed_worker = announced(stack, keys, queue, worker)
        path = f"/workers/{listed_worker.worker_id}"
        with http_client(dashboard, keys.alice) as http:
            token = csrf_token(http.get("/jobs").text)
            assert http.get("/workers").status_code == 403
            assert http.get("/workers/events").status_code == 403
            for action in ("pause", "resume", "drain"):
                refused = http.post(f"{path}/{action}", data={"csrf": token, "confirmed": "yes"})
                assert refused.status_code == 403, action
        with http_client(dashboard, keys.admin) as http:
            assert http.post(f"{path}/pause").status_code == 403
            assert http.post(f"{path}/pause", data={"csrf": "forged"}).status_code == 403
            forged = {"csrf": "forged", "confirmed": "yes"}
            assert http.post(f"{path}/drain", data=forged).status_code == 403
            token = csrf_token(http.get("/workers").text)
            review = http.post(f"{path}/drain", data={"csrf": token})
            assert review.status_code == 200 and 'id="drain-confirm"' in review.text
            missing = http.post("/workers/no-such-worker/pause", data={"csrf": token})
            assert missing.status_code == 404
            assert http.post(f"{path}/restart", data={"csrf": token}).status_code == 404
        still = status(listed_worker.control_address, keys.admin)
        assert still.state == wpb.WORKER_STATE_RUNNING, "nothing refused reached the worker"
    finally:
        assert worker.stop() == 0, worker.tail()


def test_events_hold_one_stream_per_worker_closed_with_the_page(
    stack: Stack, keys: Keys, dashboard: str
) -> None:
    """The workers page's events hold one WatchWorkerStatus stream (a channel) per listed
    worker while it is open, and none once the browser goes away: the dashboard's TCP
    connections to the workers' control ports are gone."""
    process = dashboard_process(stack, dashboard)
    with Client(stack.api_addr, api_key=keys.admin) as admin:
        workers = {w.worker_id: port_of(w.control_address) for w in admin.workers()}
    ports = set(workers.values())
    until(lambda: not ports_held(process, ports))  # pages of earlier tests are closed
    with (
        http_client(dashboard, keys.admin) as http,
        http.stream("GET", "/workers/events") as events,
    ):
        assert events.headers["content-type"].startswith("text/event-stream")
        stream = events_of(events.iter_lines())  # held: closing it closes the response
        seen: dict[str, dict[str, object]] = {}
        while not set(seen) >= set(workers):
            event = next(stream)
            seen[str(event["worker_id"])] = event
        live = {workers[i] for i, event in seen.items() if i in workers and event["reachable"]}
        assert live, seen
        until(lambda: ports_held(process, ports) == live)
    until(lambda: not ports_held(process, ports))


def test_an_unreachable_worker_is_shown_as_such(stack: Stack, keys: Keys, dashboard: str) -> None:
    """A worker whose announced address does not answer (here it advertises a port nothing
    listens on, CONVEYOR_WORKER_ADVERTISE_ADDR) is an event that says it is unreachable,
    and a Pause of it is a 502 that names it, not a server error."""
    queue = f"dash-gone-{uuid.uuid4().hex[:6]}"
    advertised = f"127.0.0.1:{free_port()}"
    worker = start_worker(stack, queue, CONVEYOR_WORKER_ADVERTISE_ADDR=advertised)
    try:
        listed_worker = announced(stack, keys, queue, worker)
        assert listed_worker.control_address == advertised
        with http_client(dashboard, keys.admin) as http:
            with http.stream("GET", "/workers/events") as events:
                shown = next(
                    e
                    for e in events_of(events.iter_lines())
                    if e["worker_id"] == listed_worker.worker_id
                )
            assert shown["reachable"] is False and shown["error"], shown
            token = csrf_token(http.get("/workers").text)
            answer = http.post(f"/workers/{listed_worker.worker_id}/pause", data={"csrf": token})
            assert answer.status_code == 502 and listed_worker.worker_id in answer.text
    finally:
        assert worker.stop() == 0, worker.tail()


@pytest.fixture(autouse=True)
def _no_stray_pause(stack: Stack, keys: Keys) -> Iterator[None]:
    """The stack's shared worker is never left paused or draining by these tests."""
    yield
    shared = next(s for s in stack.services if s.name == "worker")
    assert status(shared.addr, keys.admin).state == wpb.WORKER_STATE_RUNNING
