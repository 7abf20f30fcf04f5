"""The dashboard's admin pages in a real browser (issue 24, item 3): a queue's limits,
API keys (create with the secret shown once, limits, revoke) and paging back through jobs.

Each change is checked where it lands, through the API (GetQueueStats, ListApiKeys, a
call with the new key), not on the page alone. Refusals (a user key, a forged CSRF token,
a value the API refuses) use a plain HTTP client for their status codes."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from conveyor.client import Client, submit_request
from conveyor.errors import Unauthenticated
from conveyor.v1 import api_key_service_pb2 as akpb
from tests.e2e.browsing import WAIT, csrf_token, dashboard_tests, http_client, log_in, shot, until
from tests.processes import Keys, Stack

pytestmark = dashboard_tests


def _ids(html: str) -> list[str]:
    return re.findall(r'class="job-link">([^<]+)<', html)


def _key(stack: Stack, keys: Keys, key_id: str) -> akpb.ApiKey:
    """The key as the API lists it (revoked ones too)."""
    with Client(stack.api_addr, api_key=keys.admin) as admin:
        listed = admin.list_api_keys(include_revoked=True, page_size=1000).keys
    [key] = [k for k in listed if k.id == key_id]
    return key


def _fill(browser: webdriver.Chrome, field_id: str, text: str) -> None:
    box = browser.find_element(By.ID, field_id)
    box.clear()
    box.send_keys(text)


def test_admin_sets_a_queue_limit_and_a_refused_one_changes_nothing(
    stack: Stack, keys: Keys, dashboard: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """An admin sets a queue's max_running on its limits page and GetQueueStats has it;
    only the changed limit is sent (another admin's per-owner change made while the form
    was open stays). A negative value shows the API's field violation beside its input,
    with status 400, and changes nothing; the form, corrected, still sends only what it
    changes. Fewer shards are the API's FAILED_PRECONDITION, shown with 409."""
    queue = f"limits-{uuid.uuid4().hex[:8]}"
    with Client(stack.api_addr, api_key=keys.admin) as admin:
        admin.update_queue_limits(queue, max_running_per_owner=3, rate_jobs=10, rate_interval=2)
        log_in(browser, dashboard, keys.admin)
        browser.get(f"{dashboard}/queues")
        row = f"#queue-{queue}"
        assert browser.find_element(By.CSS_SELECTOR, f"{row} .rate").text == "10 per 2 s"
        browser.find_element(By.CSS_SELECTOR, f"{row} a.edit-limits").click()
        WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.ID, "f-max_running")))
        admin.update_queue_limits(queue, max_running_per_owner=4)  # meanwhile, elsewhere
        _fill(browser, "f-max_running", "7")
        _fill(browser, "f-max_running_per_key", "2")
        browser.find_element(By.ID, "save-limits").click()
        WebDriverWait(browser, WAIT).until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"{row} .max-running"), "7")
        )
        shot(browser, tmp_path, "queues")
        [stats] = admin.queue_stats(queue)
        assert stats.limits.max_running == 7
        assert stats.limits.max_running_per_key == 2
        assert browser.find_element(By.CSS_SELECTOR, f"{row} .max-per-key").text == "2"
        assert stats.limits.max_running_per_owner == 4, "the form sent a limit it did not change"
        assert stats.limits.rate_jobs == 10

        browser.get(f"{dashboard}/queues/{queue}/limits")
        _fill(browser, "f-max_running", "-1")
        admin.update_queue_limits(queue, max_running_per_owner=5)  # meanwhile, again
        browser.find_element(By.ID, "save-limits").click()
        error = WebDriverWait(browser, WAIT).until(
            ec.presence_of_element_located((By.ID, "f-max_running-error"))
        )
        assert "must be 0-" in error.text
        assert browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
        assert browser.find_element(By.ID, "f-max_running").get_attribute("value") == "-1"
        shot(browser, tmp_path, "queue-limits-refused")
        # The refused form, corrected, still sends only what it changes.
        _fill(browser, "f-max_running", "8")
        browser.find_element(By.ID, "save-limits").click()
        WebDriverWait(browser, WAIT).until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"{row} .max-running"), "8")
        )
        assert admin.queue_stats(queue)[0].limits.max_running_per_owner == 5
        with http_client(dashboard, keys.admin) as http:
            token = csrf_token(http.get(f"/queues/{queue}/limits").text)
            form = {"csrf": token, "max_running": "-1", "was_max_running": "8"}
            refused = http.post(f"/queues/{queue}/limits", data=form)
            assert refused.status_code == 400 and "must be 0-" in refused.text
            form = {"csrf": token, "rate_interval": "soon", "was_rate_interval": "2"}
            refused = http.post(f"/queues/{queue}/limits", data=form)
            assert refused.status_code == 400 and "must be a number" in refused.text
            admin.update_queue_limits(queue, shards=2)
            form = {"csrf": token, "shards": "1", "was_shards": "2"}
            refused = http.post(f"/queues/{queue}/limits", data=form)
            assert refused.status_code == 409 and "not removed" in refused.text
            assert re.search(r'class="shards">2<', http.get("/queues").text)
        [stats] = admin.queue_stats(queue)
        assert (stats.limits.max_running, stats.limits.rate_interval.seconds) == (8, 2)
        assert stats.limits.shards == 2


def test_admin_creates_a_key_sees_its_secret_once_and_revokes_it(
    stack: Stack, keys: Keys, dashboard: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """A key made on /keys: its secret, shown on the answer page only, works against the
    API; the listing shows the key but not the secret; its limits can be changed; revoked
    after the confirmation page, the API refuses it."""
    owner = f"svc-{uuid.uuid4().hex[:8]}"
    log_in(browser, dashboard, keys.admin)
    browser.get(f"{dashboard}/keys")
    _fill(browser, "f-name", "nightly export")
    _fill(browser, "f-owner", owner)
    browser.find_element(By.ID, "create-key-button").click()
    box = WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.ID, "key-secret")))
    secret = box.get_attribute("value")
    assert secret and secret.startswith("cvk_")
    assert secret not in browser.current_url
    assert "cannot be shown again" in browser.find_element(By.ID, "secret-note").text
    with Client(stack.api_addr, api_key=secret) as made:
        job = made.submit("noop")
        assert made.get(job.id).owner == owner

    browser.get(f"{dashboard}/keys?owner={owner}")
    [row] = browser.find_elements(By.CSS_SELECTOR, "table.keys tbody tr")
    assert owner in row.text and "nightly export" in row.text and "user" in row.text
    assert secret not in browser.page_source
    shot(browser, tmp_path, "keys")
    key_id = row.find_element(By.CSS_SELECTOR, "a.key-link").text

    row.find_element(By.CSS_SELECTOR, "a.key-link").click()
    _fill(browser, "f-max_running_jobs", "3")
    save = browser.find_element(By.ID, "save-key-limits")
    save.click()
    WebDriverWait(browser, WAIT).until(ec.staleness_of(save))
    key = _key(stack, keys, key_id)
    assert key.max_running_jobs == 3 and not key.HasField("submit_limit")

    browser.find_element(By.LINK_TEXT, "Revoke this key…").click()
    confirm = WebDriverWait(browser, WAIT).until(
        ec.presence_of_element_located((By.ID, "revoke-confirm"))
    )
    assert _key(stack, keys, key_id).HasField("revoke_time") is False, "revoked before confirming"
    shot(browser, tmp_path, "key-revoke")
    confirm.click()
    WebDriverWait(browser, WAIT).until(
        ec.text_to_be_present_in_element((By.ID, "key-revoked"), "UTC")
    )
    with Client(stack.api_addr, api_key=secret) as made:

        def refused() -> bool:
            try:
                made.list(page_size=1)
            except Unauthenticated:
                return True
            return False  # the API's verdict cache holds it for half a second at most

        until(refused)


def test_the_secret_page_is_not_stored_and_keys_refuse_users_and_forged_tokens(
    stack: Stack, keys: Keys, dashboard: str
) -> None:
    """The answer with a new key's secret says `cache-control: no-store`. A user key gets
    403 on every /keys route, GET or POST with its own valid CSRF token, and on a queue's
    limits; an admin's POST with a forged token is 403. None of them changes anything."""
    owner = f"svc-{uuid.uuid4().hex[:8]}"
    with http_client(dashboard, keys.admin) as http:
        token = csrf_token(http.get("/keys").text)
        made = http.post("/keys", data={"csrf": token, "owner": owner, "role": "user"})
        assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
        key_id = re.search(r"id <code>([^<]+)</code>", made.text)
        assert key_id, made.text
        key_id_text = key_id.group(1)
        forged = {"csrf": "forged", "owner": f"{owner}-x", "role": "admin"}
        assert http.post("/keys", data=forged).status_code == 403
        assert http.post(f"/keys/{key_id_text}/revoke", data={"csrf": "forged"}).status_code == 403
        limits = {"csrf": "forged", "max_running_jobs": "9"}
        assert http.post(f"/keys/{key_id_text}/limits", data=limits).status_code == 403
        bad = http.post("/keys", data={"csrf": token, "owner": "no spaces", "role": "user"})
        assert bad.status_code == 400 and 'id="f-owner-error"' in bad.text
    with http_client(dashboard, keys.alice) as http:
        token = csrf_token(http.get("/jobs").text)
        for path in ("/keys", f"/keys/{key_id_text}", f"/keys/{key_id_text}/revoke"):
            assert http.get(path).status_code == 403, path
        posts = {
            "/keys": {"owner": f"{owner}-y", "role": "admin"},
            f"/keys/{key_id_text}/revoke": {},
            f"/keys/{key_id_text}/limits": {"max_running_jobs": "9", "was_max_running_jobs": "0"},
            "/queues/default/limits": {"max_running": "1", "was_max_running": "0"},
        }
        for path, form in posts.items():
            assert http.post(path, data={"csrf": token, **form}).status_code == 403, path
    key = _key(stack, keys, key_id_text)
    assert not key.HasField("revoke_time") and key.max_running_jobs == 0
    with Client(stack.api_addr, api_key=keys.admin) as admin:
        listed = admin.list_api_keys(page_size=1000).keys
        assert not [k for k in listed if k.owner in {f"{owner}-x", f"{owner}-y"}]
        assert admin.queue_stats("default")[0].limits.max_running == 0


def test_revoking_the_sessions_own_key_logs_it_out(
    stack: Stack, keys: Keys, dashboard: str
) -> None:
    """An admin who revokes the key their session uses is sent to the login page at their
    next request (the API's Unauthenticated), and the session is gone."""
    with Client(stack.api_addr, api_key=keys.admin) as admin:
        made = admin.create_api_key(f"ops-{uuid.uuid4().hex[:8]}", role="admin")
    with http_client(dashboard, made.secret) as http:
        token = csrf_token(http.get(f"/keys/{made.key.id}/revoke").text)
        assert http.post(f"/keys/{made.key.id}/revoke", data={"csrf": token}).status_code == 303

        def logged_out() -> bool:
            answer = http.get("/keys")
            return answer.status_code == 303 and answer.headers["location"] == "/login"

        until(logged_out)
        assert http.get("/jobs").headers.get("location") == "/login"


@pytest.mark.parametrize("state", ["", "SUCCEEDED"])
def test_jobs_pages_forward_and_back(
    stack: Stack, keys: Keys, dashboard: str, browser: webdriver.Chrome, state: str
) -> None:
    """Three pages of jobs (a label filter, 50 a page; then also within a state tab):
    Next, Next, Previous, Previous shows the first page's jobs again, each page as it was,
    no job on two pages and every job on one."""
    run = uuid.uuid4().hex[:8]
    with Client(stack.api_addr, api_key=keys.alice) as client:
        made = client.submit_many([submit_request("noop", labels={"run": run})] * 120)
        for job in made:
            assert [u.job for u in client.watch(job.id)][-1].state.name == "SUCCEEDED"
    log_in(browser, dashboard, keys.alice)
    query = httpx.QueryParams({"filter": f'labels.run = "{run}"', "state": state})
    browser.get(f"{dashboard}/jobs?{query}")

    def page() -> list[str]:
        # The listing's links first: once, page_source was read before the table was
        # there (no ids, though the page that then loaded had its 50).
        links = (By.CSS_SELECTOR, "table.jobs a.job-link")
        WebDriverWait(browser, WAIT).until(ec.presence_of_element_located(links))
        return _ids(browser.page_source)

    def follow(rel: str) -> None:
        link = browser.find_element(By.CSS_SELECTOR, f'a[rel="{rel}"]')
        link.click()
        WebDriverWait(browser, WAIT).until(ec.staleness_of(link))

    first = page()
    assert not browser.find_elements(By.CSS_SELECTOR, 'a[rel="prev"]')
    follow("next")
    second = page()
    follow("next")
    third = page()
    assert not browser.find_elements(By.CSS_SELECTOR, 'a[rel="next"]')
    assert [len(first), len(second), len(third)] == [50, 50, 20]
    assert sorted(first + second + third) == sorted(job.id for job in made)
    follow("prev")
    assert page() == second
    follow("prev")
    assert page() == first
    assert not browser.find_elements(By.CSS_SELECTOR, 'a[rel="prev"]')
    assert browser.find_element(By.ID, "filter").get_attribute("value") == f'labels.run = "{run}"'
