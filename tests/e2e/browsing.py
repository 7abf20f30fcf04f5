"""What the dashboard's browser tests share: a logged-in Chromium or HTTP client, screenshots
as test artifacts, and a job submitted with grpcurl. The `dashboard` and `browser` fixtures
are in tests/e2e/conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_grpcurl import grpcurl
from tests.processes import ROOT, Service, Stack

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make install as root installs them)",
)
# What every module of dashboard tests carries (`pytestmark = dashboard_tests`): Chromium,
# and one Redis shape, since a web page over the API does not see Redis's shape (the API's
# paths are tested on both shapes elsewhere).
dashboard_tests = [needs_chromium, pytest.mark.one_redis_shape]

WAIT = 30.0
DOCS_IMG = ROOT / "docs" / "img"


def wait_ready(service: Service, url: str) -> None:
    """Until its /healthz answers (it binds before serving, so this is start-up only)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)  # not listening yet: a start-up poll, not a synchronisation
    raise AssertionError(f"dashboard did not become ready:\n{service.tail()}")


def new_browser() -> webdriver.Chrome:
    """Debian's chromium, headless, through its chromedriver (nothing is downloaded)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    return webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)


def until(done: Callable[[], bool]) -> None:
    """Until `done()` (an observable outside this process: a metric), within WAIT."""
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def log_in(browser: webdriver.Chrome, url: str, key: str) -> None:
    browser.get(f"{url}/login")
    browser.find_element(By.NAME, "api_key").send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.TAG_NAME, "nav")))


def shot(browser: webdriver.Chrome, tmp_path: Path, name: str, *, docs: bool = False) -> None:
    """Save a screenshot of the page as a test artifact; `docs`: also the README's copy in
    docs/img/, when it is missing or UPDATE_SCREENSHOTS=1 asks for new ones (so that a test
    run does not change the checkout every time)."""
    path = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(path))
    readme_copy = DOCS_IMG / f"dashboard-{name}.png"
    if docs and (os.environ.get("UPDATE_SCREENSHOTS") == "1" or not readme_copy.exists()):
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, readme_copy)


def submit(stack: Stack, key: str, payload: Mapping[str, object], labels: dict[str, str]) -> str:
    """Submit a `test.hold` job with grpcurl, as any client would; its id."""
    body = {"type": "test.hold", "payload": payload, "labels": labels}
    done = grpcurl(
        stack, "-d", json.dumps(body), stack.api_addr, "conveyor.v1.JobService/SubmitJob", key=key
    )
    assert done.returncode == 0, done.stderr
    job_id: str = json.loads(done.stdout)["job"]["id"]
    return job_id


@contextlib.contextmanager
def http_client(url: str, key: str) -> Iterator[httpx.Client]:
    """A plain HTTP client logged in with `key` (the login form's own token and cookie)."""
    with httpx.Client(base_url=url, timeout=10.0) as http:
        token = csrf_token(http.get("/login").text)
        answer = http.post("/login", data={"api_key": key, "csrf": token})
        assert answer.status_code == 303, answer.text
        yield http


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)
