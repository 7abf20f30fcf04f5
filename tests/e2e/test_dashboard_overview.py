"""The dashboard's overview in a real browser (Debian's chromium, headless, against the e2e
stack and `conveyor dashboard`): per queue, small charts of the jobs finished and the failure
rate per minute, drawn as SVG on the server, that say their numbers to screen readers and
renew themselves without a reload.

Which minute a job lands in is Redis's clock at its end, so the checks add the minutes up
rather than pick one: they hold whether or not a minute began while the jobs ran."""

from __future__ import annotations

import re
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from conveyor.client import Client, submit_request
from tests.e2e.browsing import WAIT, dashboard_tests, log_in, shot
from tests.e2e.test_queues import start_worker
from tests.processes import Keys, Service, Stack

pytestmark = dashboard_tests

QUEUE = "overview-charts"
HISTORY = 16  # 15 whole minutes and the current one (RECENT_MINUTES, scripts/_common.lua)


def run_jobs(stack: Stack, key: str, succeed: int, die: int) -> None:
    """`succeed` no-op jobs and `die` that fail for good, each run to its end."""
    requests = [submit_request("noop", queue=QUEUE) for _ in range(succeed)]
    requests += [submit_request("fail", {"permanent": True}, queue=QUEUE) for _ in range(die)]
    with Client(stack.api_addr, api_key=key) as client:
        for job in client.submit_many(requests):
            assert [u.job for u in client.watch(job.id)][-1].state.terminal


def chart(browser: webdriver.Chrome, name: str) -> WebElement:
    """The queue's chart `name` ("finished" or "failure") on the page as it is now."""
    row = browser.find_element(By.XPATH, f"//tbody/tr[th//a[text()='{QUEUE}']]")
    return row.find_element(By.CSS_SELECTOR, f"svg.chart-{name}")


def spoken(svg: WebElement) -> list[str]:
    """The values the chart's label says, one per minute, oldest first."""
    label = svg.get_attribute("aria-label") or ""
    return label.rsplit(": ", 1)[1].split(", ")


def finished_in_all(browser: webdriver.Chrome) -> int:
    return sum(int(value) for value in spoken(chart(browser, "finished")))


def test_overview_charts_say_their_numbers_and_renew_without_a_reload(
    stack: Stack,
    keys: Keys,
    dashboard: str,
    workers: list[Service],
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    """Guards issue 24's overview charts: after 2 jobs succeed and 2 die in a queue, an
    admin's overview shows that queue's two charts as SVG images (role="img") whose labels
    say 16 minutes of numbers: 4 jobs finished in all, and failure rates that match each
    minute's own title (2 of 4 attempts failed in all). When 3 more jobs finish, the open
    page shows 7 without a reload (it renews itself), its table beside the charts."""
    start_worker(stack, workers, QUEUE, 2)
    run_jobs(stack, keys.alice, succeed=2, die=2)
    log_in(browser, dashboard, keys.admin)
    browser.get(f"{dashboard}/overview")

    finished, failure = chart(browser, "finished"), chart(browser, "failure")
    for svg in (finished, failure):
        assert svg.get_attribute("role") == "img"
        assert svg.find_element(By.TAG_NAME, "title").get_attribute("textContent") == (
            svg.get_attribute("aria-label")
        )
        assert len(spoken(svg)) == HISTORY
    assert finished_in_all(browser) == 4
    assert finished.find_elements(By.CSS_SELECTOR, "rect.chart-succeeded")
    assert finished.find_elements(By.CSS_SELECTOR, "rect.chart-dead")
    titles = [t.get_attribute("textContent") or "" for t in failure.find_elements(
        By.CSS_SELECTOR, "g > title")]  # fmt: skip
    assert len(titles) == HISTORY
    counted = [re.search(r"(\d+)% failed \((\d+) of (\d+) attempts\)", t) for t in titles]
    rates = [f"{m.group(1)}%" if m else "none" for m in counted]
    assert rates == spoken(failure)
    failed = sum(int(m.group(2)) for m in counted if m)
    ended = sum(int(m.group(3)) for m in counted if m)
    assert (failed, ended) == (2, 4)
    assert failure.find_elements(By.CSS_SELECTOR, "circle.chart-dot")
    shot(browser, tmp_path, "overview", docs=True)

    browser.execute_script("window.__same_page = true")  # gone if the page reloads
    run_jobs(stack, keys.alice, succeed=3, die=0)
    WebDriverWait(browser, WAIT).until(lambda _: finished_in_all(browser) == 7)
    assert browser.execute_script("return window.__same_page") is True
    row = browser.find_element(By.XPATH, f"//tbody/tr[th//a[text()='{QUEUE}']]")
    assert len(row.find_elements(By.TAG_NAME, "td")) == 10  # the numbers are still there
    shot(browser, tmp_path, "overview-renewed")
