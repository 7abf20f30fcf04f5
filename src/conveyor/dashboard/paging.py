"""Links to the first, previous and next page of a listing whose pages are opaque tokens.

The API hands out only the next page's token (AIP-158), so the way back is carried in the
URL: `page` is the token of the page shown, `back` (repeated) the tokens of the pages
between the first and it, oldest first. "Next" appends `page` to the trail, "Previous"
pops it. The trail lives in the link, not in the session, so the browser's own back
button, a second tab and a bookmarked page all page back correctly, and the server keeps
nothing per listing. At most `MAX_BACK` tokens are kept, so a URL stays a few KB however
far one pages on: past that, "Previous" from the oldest remembered page leads to the
first page. A token is only ever sent back to the API, which signs and checks its own
tokens, so a tampered trail is the API's INVALID_ARGUMENT, nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

MAX_BACK = 20


@dataclass(frozen=True, slots=True)
class Paging:
    """The listing's paging links; "" where there is no such page."""

    first: str
    prev: str
    next: str


def paging(path: str, query: QueryParams, keep: Mapping[str, str], next_token: str) -> Paging:
    """The links of the page `query` asks for (its `page` and `back`) at `path`; `keep`:
    the listing's other parameters (filter, state, …), carried on every link."""
    page = query.get("page", "")
    back = query.getlist("back")[-MAX_BACK:]

    def link(token: str, trail: Sequence[str]) -> str:
        params = [(k, v) for k, v in keep.items() if v]
        if token:
            params += [("page", token), *(("back", t) for t in trail[-MAX_BACK:])]
        return f"{path}?{urlencode(params)}" if params else path

    if not page:
        return Paging("", "", link(next_token, []) if next_token else "")
    prev = link(back[-1], back[:-1]) if back else link("", [])
    after = link(next_token, [*back, page]) if next_token else ""
    return Paging(link("", []), prev, after)
