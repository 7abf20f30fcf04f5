"""The jobs and keys pages' paging links: a trail of earlier pages' tokens in the URL
(`conveyor.dashboard.paging`), so "Previous page" works although page tokens are opaque
and only lead forward."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import QueryParams

from conveyor.dashboard.paging import MAX_BACK, Paging, paging

KEEP = {"filter": 'labels.run = "a&b"', "state": ""}


def at(url: str) -> QueryParams:
    return QueryParams(urlsplit(url).query)


def test_next_then_previous_walks_back_through_every_page() -> None:
    """From the first page, Next three times, then Previous three times: each Previous
    is the page Next came from, and the first page has no Previous (nor First)."""
    first = paging("/jobs", QueryParams(), KEEP, "t1")
    assert (first.first, first.prev) == ("", "")
    second = paging("/jobs", at(first.next), KEEP, "t2")
    third = paging("/jobs", at(second.next), KEEP, "t3")
    fourth = paging("/jobs", at(third.next), KEEP, "")
    assert fourth.next == ""
    assert at(fourth.prev) == at(second.next) and at(third.prev) == at(first.next)
    assert at(second.prev) == at(fourth.first) == QueryParams({"filter": KEEP["filter"]})


def test_links_keep_the_listing_and_leave_out_empty_parameters() -> None:
    """Every link carries the filter (encoded) and no empty state; tokens are query
    values, so any character in them survives."""
    links = paging("/keys", QueryParams({"page": "a=b&c", "back": "x/y+z"}), KEEP, "n?")
    query = parse_qs(urlsplit(links.next).query)
    assert query == {"filter": [KEEP["filter"]], "page": ["n?"], "back": ["x/y+z", "a=b&c"]}
    assert urlsplit(links.next).path == "/keys"
    assert paging("/jobs", QueryParams({"page": "t"}), {}, "") == Paging("/jobs", "/jobs", "")


def test_the_trail_is_capped() -> None:
    """However far one pages, a link carries at most MAX_BACK earlier tokens (the newest):
    the URL stays short."""
    query = QueryParams([("page", "p"), *(("back", str(i)) for i in range(MAX_BACK + 5))])
    links = paging("/jobs", query, {}, "n")
    trail = at(links.next).getlist("back")
    assert len(trail) == MAX_BACK and trail[-1] == "p" and trail[-2] == str(MAX_BACK + 4)
    assert at(links.prev).get("page") == str(MAX_BACK + 4)
