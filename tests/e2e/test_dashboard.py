"""The dashboard in a real browser: Debian's chromium, headless, driven by Selenium against
the e2e stack with `conveyor dashboard` started beside it (its real entry point).

Screenshots of every page go to the test's tmp_path; the jobs page and a job page are also
copied to docs/img/ for the README. The CSRF and cookie checks use a plain HTTP client."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from conveyor.client import Client, submit_request
from tests.e2e.browsing import (
    WAIT,
    csrf_token,
    dashboard_tests,
    http_client,
    log_in,
    shot,
    submit,
    until,
)
from tests.observability import scrape, value
from tests.processes import Keys, Stack

pytestmark = dashboard_tests


def _watch_streams(stack: Stack) -> float:
    """WatchJob streams the API has open now (its conveyor_watch_streams gauge)."""
    api = next(s for s in stack.services if s.name == "api")
    return value(scrape(api), "conveyor_watch_streams")


def test_event_stream_holds_one_watch_closed_with_the_page(
    stack: Stack, keys: Keys, dashboard: str, tmp_path: Path
) -> None:
    """A job page's events are one WatchJob stream on the API while the page is open, and
    none once the browser goes away (the dashboard cancels the call); the events carry the
    job's state and progress."""
    gate = tmp_path / "gate"
    job_id = submit(stack, keys.alice, {"log": str(tmp_path / "log"), "gate": str(gate)}, {})
    until(lambda: _watch_streams(stack) == 0)  # pages of earlier tests are closed
    with (
        http_client(dashboard, keys.alice) as http,
        http.stream("GET", f"/jobs/{job_id}/events") as events,
    ):
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.iter_lines()  # one iterator: closing one early closes the response
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first.removeprefix("data:"))["state"] in {"QUEUED", "RUNNING"}
        assert _watch_streams(stack) == 1
    until(lambda: _watch_streams(stack) == 0)
    gate.touch()


def test_job_appears_and_goes_live_to_succeeded(
    stack: Stack, keys: Keys, dashboard: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """Log in with a key; a job submitted with grpcurl is listed; its page shows it RUNNING
    at 50% and then SUCCEEDED without a reload (server-sent events from WatchJob), then its
    result and attempts; a label filter finds it and leaves others out."""
    run = uuid.uuid4().hex[:8]
    gate = tmp_path / "gate"
    payload = {"log": str(tmp_path / "log"), "gate": str(gate)}
    job_id = submit(stack, keys.alice, payload, {"run": run, "team": "web"})
    other = submit(stack, keys.alice, {**payload, "hold_attempts": 0}, {"run": f"{run}-x"})
    log_in(browser, dashboard, keys.alice)

    browser.get(f"{dashboard}/jobs")
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.LINK_TEXT, job_id)))
    shot(browser, tmp_path, "jobs", docs=True)

    browser.find_element(By.LINK_TEXT, job_id).click()
    state = (By.ID, "job-state")
    WebDriverWait(browser, WAIT).until(ec.text_to_be_present_in_element(state, "RUNNING"))
    WebDriverWait(browser, WAIT).until(
        ec.text_to_be_present_in_element((By.ID, "job-progress-message"), "holding")
    )
    assert browser.find_element(By.ID, "job-progress-text").text == "50%"
    browser.execute_script("window.__same_page = true")  # gone if the page reloads
    gate.touch()
    WebDriverWait(browser, WAIT).until(ec.text_to_be_present_in_element(state, "SUCCEEDED"))
    # Once it ends the page fetches itself and shows the result and the attempt, in place.
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.ID, "job-result")))
    assert browser.execute_script("return window.__same_page") is True
    assert "SUCCEEDED" in browser.find_element(By.CSS_SELECTOR, "details.attempt").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#job-actions button")
    shot(browser, tmp_path, "job", docs=True)

    browser.get(f"{dashboard}/jobs")
    box = browser.find_element(By.ID, "filter")
    box.send_keys(f'labels.run = "{run}"')
    box.submit()
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.LINK_TEXT, job_id)))
    assert not browser.find_elements(By.LINK_TEXT, other)
    shot(browser, tmp_path, "jobs-filtered")


def test_bulk_retry_of_dead_jobs_shows_the_count_then_the_progress(
    stack: Stack, keys: Keys, dashboard: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """Guards issue 24, item 3's bulk actions: on the jobs page filtered to 50 dead jobs
    (a label, the DEAD tab), "Retry" first shows how many jobs it would replay (a dry run:
    nothing changes), then, confirmed, follows the operation to SUCCEEDED with all 50 done,
    each job replayed once."""
    run = uuid.uuid4().hex[:8]
    with Client(stack.api_addr, api_key=keys.alice) as client:
        requests = [submit_request("fail", {"permanent": True}, labels={"run": run})] * 50
        dead = client.submit_many(requests)
        for job in dead:  # each to its end, on its stream
            assert [u.job for u in client.watch(job.id)][-1].state.name == "DEAD"
    log_in(browser, dashboard, keys.alice)
    browser.get(f'{dashboard}/jobs?state=DEAD&filter=labels.run+%3D+"{run}"')
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.LINK_TEXT, dead[0].id)))
    browser.find_element(By.CSS_SELECTOR, "form.bulk button").click()
    count = WebDriverWait(browser, WAIT).until(
        ec.presence_of_element_located((By.ID, "bulk-count"))
    )
    assert count.text == "50"
    shot(browser, tmp_path, "bulk-review")
    with Client(stack.api_addr, api_key=keys.alice) as client:
        assert all(client.get(job.id).attempt == 1 for job in dead[:5]), "a dry run changed jobs"
    browser.find_element(By.ID, "bulk-confirm").click()
    WebDriverWait(browser, WAIT).until(
        ec.text_to_be_present_in_element((By.ID, "bulk-state"), "SUCCEEDED")
    )
    assert browser.find_element(By.ID, "bulk-done").text == "50"
    shot(browser, tmp_path, "bulk")
    with Client(stack.api_addr, api_key=keys.alice) as client:
        for job in dead:
            assert [u.job for u in client.watch(job.id)][-1].attempt == 2


def test_admin_pages_render(
    keys: Keys, dashboard: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """An admin key sees overview, queues, workers and schedules (a screenshot of each)."""
    log_in(browser, dashboard, keys.admin)
    for page, heading in [
        ("overview", "Overview"),
        ("queues", "Queues"),
        ("workers", "Workers"),
        ("schedules", "Schedules"),
    ]:
        browser.get(f"{dashboard}/{page}")
        assert browser.find_element(By.TAG_NAME, "h1").text == heading
        shot(browser, tmp_path, page)
    browser.get(f"{dashboard}/workers")
    assert browser.find_elements(By.CSS_SELECTOR, "tbody th[scope=row]")  # the stack's worker


def test_user_does_not_see_another_owners_job(
    stack: Stack, keys: Keys, dashboard: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """Bob's key lists none of Alice's jobs, and her job's URL is a 404 for him; admin
    pages are refused (403) to a user key."""
    run = uuid.uuid4().hex[:8]
    job_id = submit(
        stack, keys.alice, {"log": str(tmp_path / "log"), "gate": "", "hold_attempts": 0},
        {"run": run},
    )  # fmt: skip
    log_in(browser, dashboard, keys.bob)
    browser.get(f"{dashboard}/jobs")
    assert not browser.find_elements(By.LINK_TEXT, job_id)
    with http_client(dashboard, keys.bob) as http:
        assert http.get(f"/jobs/{job_id}").status_code == 404
        assert http.get(f"/jobs/{job_id}/events").status_code == 404
        assert http.get("/queues").status_code == 403
    browser.get(f"{dashboard}/jobs/{job_id}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not found."


def test_forged_or_missing_csrf_is_refused(keys: Keys, dashboard: str) -> None:
    """Every POST needs the session's CSRF token: none or a forged one is 403 and does
    nothing (the queue stays unpaused); the page's own token works. The session cookie is
    HttpOnly and SameSite=Strict."""
    queue = f"csrf-{uuid.uuid4().hex[:6]}"
    with http_client(dashboard, keys.admin) as http:
        cookie = next(c for c in http.cookies.jar if c.name == "conveyor_session")
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert str(cookie.get_nonstandard_attr("SameSite")).lower() == "strict"
        assert http.post(f"/queues/{queue}/pause").status_code == 403
        assert http.post(f"/queues/{queue}/pause", data={"csrf": "forged"}).status_code == 403
        assert http.post("/logout", data={"csrf": "forged"}).status_code == 403
        token = csrf_token(http.get("/jobs").text)
        assert http.post(f"/queues/{queue}/pause", data={"csrf": token}).status_code == 303
        assert http.post(f"/queues/{queue}/resume", data={"csrf": token}).status_code == 303
    with httpx.Client(base_url=dashboard, timeout=10.0) as anonymous:
        anonymous.get("/login")
        refused = anonymous.post("/login", data={"api_key": keys.admin, "csrf": "forged"})
        assert refused.status_code == 403


def test_bad_key_and_headers(keys: Keys, dashboard: str) -> None:
    """A key the API refuses does not log in; every page carries the security headers."""
    with httpx.Client(base_url=dashboard, timeout=10.0) as http:
        token = csrf_token(http.get("/login").text)
        answer = http.post("/login", data={"api_key": "cvk_not_a_key", "csrf": token})
        assert answer.status_code == 401
        assert "conveyor_session" not in http.cookies
        headers = http.get("/login").headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"


def test_jobs_page_pages_and_reports_bad_filters(
    stack: Stack, keys: Keys, dashboard: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """More jobs than a page (50) match: the next page (next_page_token) has the rest, none
    twice; a state tab narrows the list; a filter the API refuses is shown with its message
    (400), not a server error."""
    run = uuid.uuid4().hex[:8]
    with Client(stack.api_addr, api_key=keys.alice) as client:
        made = client.submit_many([submit_request("noop", labels={"run": run}) for _ in range(53)])
    log_in(browser, dashboard, keys.alice)
    with http_client(dashboard, keys.alice) as http:
        query = f'labels.run = "{run}"'
        first = http.get("/jobs", params={"filter": query})
        next_page = re.search(r'href="(/jobs\?[^"]*page=[^"]+)" rel="next"', first.text)
        assert next_page, first.text
        second = http.get(next_page.group(1).replace("&amp;", "&"))
        ids = re.findall(r'class="job-link">([^<]+)<', first.text + second.text)
        assert sorted(ids) == sorted(job.id for job in made)
        assert 'rel="next"' not in second.text
        dead = http.get("/jobs", params={"filter": query, "state": "DEAD"})
        assert "No jobs match." in dead.text
        bad = http.get("/jobs", params={"filter": "labels.run = "})
        assert bad.status_code == 400 and 'role="alert"' in bad.text
    browser.get(f"{dashboard}/jobs?filter=labels.run%20%3D")
    assert browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    shot(browser, tmp_path, "jobs-bad-filter")


def test_job_data_is_escaped(stack: Stack, keys: Keys, dashboard: str) -> None:
    """Labels and payloads are the submitter's text: the pages show them escaped, never as
    markup (autoescaping; the CSP would also stop an injected script)."""
    markup = '<img src=x id="injected">'
    run = uuid.uuid4().hex[:8]
    with Client(stack.api_addr, api_key=keys.alice) as client:
        job = client.submit("noop", {"note": markup}, labels={"run": run, "note": markup[:60]})
    with http_client(dashboard, keys.alice) as http:
        listed = http.get("/jobs", params={"filter": f'labels.run = "{run}"'}).text
        shown = http.get(f"/jobs/{job.id}").text
    for page in (listed, shown):
        assert markup not in page and "&lt;img src=x" in page


def test_a_job_page_links_its_dependencies_and_names_its_batch(
    stack: Stack, keys: Keys, dashboard: str
) -> None:
    """A waiting job's page says what it waits for, linking each dependency's page, and
    names its batch (issue 25)."""
    with Client(stack.api_addr, api_key=keys.alice) as client:
        first = client.submit("sleep", {"seconds": 30})
        made = client.submit_batch(
            [submit_request("noop", depends_on=[first.id])], on_complete=submit_request("noop")
        )
        waiting = made.jobs[0]
        with http_client(dashboard, keys.alice) as http:
            page = http.get(f"/jobs/{waiting.id}").text
        client.cancel(first.id)
    assert f'<a href="/jobs/{first.id}"><code>{first.id}</code></a>' in page
    assert "waiting for 1 of 1 dependencies" in page
    assert f"<code>{made.batch.id}</code>" in page
