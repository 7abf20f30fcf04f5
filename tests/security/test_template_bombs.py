"""`email.send` templates cannot take a worker's CPU or memory: every bomb a hostile owner
can write (loops without output, repetition, powers, padding, printf and str.format widths,
doubling, self-nesting lists, recursion) fails fast as a permanent error naming the limit,
allocating almost nothing, while legitimate templates still render; and on a real worker,
an owner's bombs do not hold up another owner's mail."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor.builtins.email import EmailPayload, render
from conveyor.client import AsyncClient, Job, JobState
from conveyor.config import Settings
from conveyor.errors import InvalidArgument
from conveyor.handlers import PermanentError
from tests.mailbox import Mailbox
from tests.processes import Keys, Service, Stack

S = JobState
# This thread's CPU one bomb may cost before it is stopped: measured about 0.3 s on a quiet
# machine and 0.63 s once under a loaded suite; an unbounded bomb runs for minutes.
CPU_SECONDS = 1.0
PEAK_BYTES = 4 << 20  # what one bomb may allocate (Python-level, tracemalloc's peak)


def bomb(name: str, part: str, named: str, template: str) -> Any:
    """One case: the template, the part it is given as, and what its error must name."""
    return pytest.param(template, part, named, id=name)


LARGER = "would be over the size limit (2000000 characters, 100000 items, 14000-bit integers)"
STEPS = "the template ran over its budget of 200000 steps"
BOMBS = [
    # The issue's loops: no output, so the output check never fires.
    bomb("issue_loops", "text", "range() of 100000 items is over the limit of 10000",
         "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"),
    bomb("step_loops", "text", STEPS,
         "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"),
    bomb("str_repeat", "text", f"the result of * {LARGER}", '{{ "a" * 400000000 }}'),
    bomb("list_repeat", "html", f"the result of * {LARGER}", "{{ [0] * 400000000 }}"),
    bomb("power", "text", f"the result of ** {LARGER}", "{{ 2 ** 100000000 }}"),
    bomb("int_squaring", "text", f"the result of * {LARGER}",
         "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
         "{% endfor %}"),
    bomb("range_list", "text", "over the limit of 10000", "{{ range(10**9)|list }}"),
    bomb("ljust", "text", f"a call of ljust {LARGER}", "{{ 'x'.ljust(10**9) }}"),
    bomb("str_center", "subject", f"a call of center {LARGER}", "{{ 'x'.center(10**9) }}"),
    bomb("zfill", "text", f"a call of zfill {LARGER}", "{{ 'x'.zfill(999999999) }}"),
    bomb("expandtabs", "text", f"a call of expandtabs {LARGER}",
         "{{ ('\t' * 1000).expandtabs(1000000) }}"),
    bomb("to_bytes", "text", f"a call of to_bytes {LARGER}",
         "{{ (1).to_bytes(1000000000, 'big') }}"),
    bomb("markup_ljust", "html", f"a call of ljust {LARGER}", "{{ ('x'|safe).ljust(10**9) }}"),
    bomb("format_width", "text", f"str.format {LARGER}", "{{ '{:>999999999}'.format(1) }}"),
    bomb("markup_format", "html", f"str.format {LARGER}",
         "{{ ('{:>999999999}'|safe).format(1) }}"),
    bomb("bytes_printf", "text", f"the result of % {LARGER}",
         "{{ ('%999999999d'.encode()) % 1 }}"),
    bomb("format_nested_width", "html", f"str.format {LARGER}",
         "{{ '{:{}}'.format(1, 999999999) }}"),
    bomb("printf_width", "text", f"the result of % {LARGER}", "{{ '%999999999d' % 1 }}"),
    bomb("printf_star", "text", f"the format filter {LARGER}",
         "{{ '%*d'|format(999999999, 1) }}"),
    bomb("center_filter", "text", f"the center filter {LARGER}", "{{ 'x'|center(1000000000) }}"),
    bomb("indent_filter", "text", f"the indent filter {LARGER}",
         "{{ ('\n' * 10000)|indent(100000) }}"),
    bomb("replace_empty", "html", f"the replace filter {LARGER}",
         "{% set s = 'a' * 2000 %}{{ s|replace('', s) }}"),
    bomb("wordwrap_string", "text", f"the wordwrap filter {LARGER}",
         "{{ ('a ' * 10000)|wordwrap(1, wrapstring='x' * 100000) }}"),
    bomb("tojson_indent", "text", "the tojson filter's indent is over 8",
         "{{ (range(10000)|list)|tojson(indent=1000000) }}"),
    bomb("batch_fill", "text", f"the batch filter {LARGER}",
         "{{ [1]|batch(1000000000, 'x')|list }}"),
    bomb("join_separator", "text", f"the join filter {LARGER}",
         "{{ range(10000)|join('x' * 100000) }}"),
    bomb("repeat_joined", "text", f"the result of * {LARGER}",
         "{{ ','.join(range(10000)|map('string')|list) * 1000 }}"),
    # Doubling: every step is small, the value grows exponentially.
    bomb("concat_doubling", "text", f"a ~ concatenation {LARGER}",
         "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
         "{% endfor %}"),
    bomb("self_nesting_list", "text", f"an output {LARGER}",
         "{% set ns = namespace(l=['x' * 1000]) %}{% for i in range(40) %}"
         "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}"),
    bomb("values_view", "text", f"an output {LARGER}",
         "{% set ns = namespace(l=['x' * 1000]) %}{% for i in range(40) %}"
         "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ dict(a=ns.l).values() }}"),
    bomb("sum_of_lists", "text", "the sum filter adds numbers only",
         "{% set l = range(10000)|list %}{{ [l, l, l, l, l]|sum(start=[]) }}"),
    bomb("split_words", "text", f"a call of split {LARGER}",
         "{{ ('a ' * 999999).split()|length }}"),
    bomb("list_of_chars", "text", f"the list filter {LARGER}",
         "{{ ('x' * 500000)|list|length }}"),
    # Output kept in a buffer (a macro's, a set block's) never reaches the output check.
    bomb("macro_buffer", "text", "the template made over 8000000 characters in all",
         "{% macro m() %}{% for i in range(10000) %}{{ 'x' * 100000 }}{% endfor %}"
         "{% endmacro %}{% set x = m() %}"),
    bomb("macro_recursion", "text", "the template nests too deeply",
         "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}"),
    bomb("macro_fanout", "html", STEPS,
         "{% macro m(n) %}{% if n %}{{ m(n-1) }}{{ m(n-1) }}{% endif %}{% endmacro %}"
         "{{ m(60) }}"),
    bomb("loop_recursion", "text", "the template nests too deeply",
         "{% for x in [[1]] recursive %}{{ loop([x, x]) }}{% endfor %}"),
    # A loop's `if` runs for items whose body never runs.
    bomb("loop_filter", "text", STEPS,
         "{% set l = range(10000)|list %}{% for a in range(10000) %}"
         "{% for b in l if b.imag %}{% endfor %}{% endfor %}"),
    bomb("spread_arguments", "text", STEPS,
         "{% macro m() %}{{ varargs|length }}{% endmacro %}{% set l = range(10000)|list %}"
         "{% for a in range(10000) %}{{ m(*l) }}{% endfor %}"),
    # Jinja copies slices with plain Python slicing, outside the sandbox.
    bomb("slice_copies", "text", "the template made over 8000000 characters in all",
         "{% set l = range(10000)|list %}{% for i in range(10000) %}{{ l[::1]|length }}"
         "{% endfor %}"),
    # `in` scans its right side: charged by its size, not as one step.
    bomb("in_scan", "text", STEPS,
         "{% set l = range(10000)|list %}{% for i in range(10000) %}{% if -1 in l %}{% endif %}"
         "{% endfor %}"),
]  # fmt: skip


def _payload(template: str, part: str, **context: Any) -> EmailPayload:
    fields = {"subject": "s", "text": "t", part: template}
    return EmailPayload.model_validate({"to": "a@example.com", **fields, "context": context})


def _render_failure(payload: EmailPayload) -> str:
    with pytest.raises(PermanentError) as failed:
        render(payload, Settings())
    return str(failed.value)


@pytest.mark.parametrize(("template", "part", "named"), BOMBS)
def test_a_template_bomb_fails_fast_naming_its_limit_and_allocates_little(
    template: str, part: str, named: str
) -> None:
    """Guards the render limits: each bomb ends in a PermanentError naming the limit it
    hit, within a fraction of a second of CPU, its Python allocations peaking under a few
    MB (the value that would have been huge is refused before it is made)."""
    payload = _payload(template, part)
    started = time.thread_time()
    message = _render_failure(payload)
    spent = time.thread_time() - started
    assert message.startswith(f"{part}: ") and named in message, message
    assert spent < CPU_SECONDS, f"{spent:.2f}s of CPU"
    tracemalloc.start()
    try:
        _render_failure(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"peak {peak / 1e6:.1f} MB"


def test_a_template_of_too_many_tokens_is_refused_at_submit() -> None:
    """Guards parsing cost: 500,000 characters of tags take seconds to parse and compile
    before any step is counted, so a template over 20,000 tokens is refused at submit."""
    with pytest.raises(ValueError, match="over 20000 tokens"):
        _payload("{{ a }}" * 10_000, "text")


def test_templates_nesting_too_deeply_to_parse_are_refused_at_submit() -> None:
    """Guards the parser's recursion: a RecursionError is a refused payload, not a crash."""
    with pytest.raises(ValueError, match="nests too deeply"):
        _payload("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "text")


def test_lists_and_dicts_cannot_be_grown_in_place() -> None:
    """Guards the immutable sandbox: `.append`/`.extend` would let a loop double a list
    with no operator to intercept."""
    message = _render_failure(_payload("{% set l = [1] %}{{ l.extend(l) }}", "text"))
    assert "unsafe" in message, message


def test_legitimate_templates_still_render() -> None:
    """Guards against limits that are too tight: a 1,000-line order table with filters,
    loop helpers, printf and str.format renders in full, escaped in HTML and not in text."""
    items = [{"sku": f"s{i}", "name": f"Widget & {i}", "qty": i % 7, "price": i * 1.25}
             for i in range(1000)]  # fmt: skip
    row = (
        "{% for it in items %}<tr class=\"{{ loop.cycle('odd', 'even') }}\">"
        "<td>{{ loop.index }}</td><td>{{ it.sku|upper }}</td><td>{{ it.name|truncate(30) }}"
        "</td><td>{{ '%.2f'|format(it.price) }}</td><td>{{ '{:>8}'.format(it.qty) }}</td>"
        "{% if it.qty > 3 %}<td>many</td>{% else %}<td>few</td>{% endif %}</tr>\n{% endfor %}"
        "Total {{ items|sum(attribute='price')|round(2) }} for {{ items|length }}: "
        "{{ items|map(attribute='sku')|select('in', ['s1', 's2'])|join(', ') }}"
    )
    payload = EmailPayload.model_validate(
        {"to": "a@example.com", "subject": "Order for {{ name }}", "text": row, "html": row,
         "context": {"name": "Ada", "items": items}}
    )  # fmt: skip
    started = time.thread_time()
    done = render(payload, Settings())
    assert time.thread_time() - started < CPU_SECONDS
    assert done.subject == "Order for Ada"
    assert done.text is not None and done.html is not None
    assert done.text.count("<tr") == 1000 and done.html.count("<tr") == 1000
    assert "<td>1000</td><td>S999</td><td>Widget & 999</td><td>1248.75</td>" in done.text
    assert "Widget &amp; 999" in done.html
    assert done.text.endswith("Total 624375.0 for 1000: s1, s2")


# -- on a real worker ----------------------------------------------------------------------

QUEUE = "template-bombs"
CONCURRENCY = 2
# More bombs than the worker runs at once; on the original code each held its slot and a
# thread for the job's whole 5-minute timeout (and kept burning CPU after it).
LOOPS = "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"
E2E_BOMBS = [  # (template, what its job's error names)
    ('{{ "a" * 400000000 }}', f"the result of * {LARGER}"),
    ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
     "range() of 100000 items is over the limit of 10000"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "the template nests too deeply"),
    *[(LOOPS, STEPS)] * 4,
]  # fmt: skip


@pytest.fixture
def bomb_worker(stack: Stack) -> Iterator[Service]:
    """A worker process of its own on its own queue, so nothing else shares its slots."""
    worker = stack.start(
        "worker", "--concurrency", str(CONCURRENCY), "--queues", QUEUE, env=stack.worker_env()
    )
    yield worker
    assert worker.stop() == 0, worker.tail()


@pytest.fixture
async def owners(stack: Stack, keys: Keys) -> AsyncIterator[tuple[AsyncClient, AsyncClient]]:
    async with (
        AsyncClient(stack.api_addr, api_key=keys.alice) as alice,
        AsyncClient(stack.api_addr, api_key=keys.bob) as bob,
    ):
        yield alice, bob


async def _ended(client: AsyncClient, job_id: str, seconds: float) -> Job:
    """The job once it is SUCCEEDED or DEAD, failing the test after `seconds`."""
    last: Job | None = None
    try:
        async with asyncio.timeout(seconds):
            async for update in client.watch(job_id):
                last = update.job
                if last.state in (S.SUCCEEDED, S.DEAD):
                    return last
    except TimeoutError:
        pass
    state = S(last.state).name if last is not None else "unknown"
    raise AssertionError(f"job {job_id} still {state} after {seconds}s")


async def test_template_bombs_do_not_hold_up_another_owners_mail(
    bomb_worker: Service, owners: tuple[AsyncClient, AsyncClient], mailbox: Mailbox
) -> None:
    """Guards issue 18's "no tenant can hurt another" for email.send: alice submits more
    template bombs (a memory bomb, CPU-only loops, runaway recursion) than the worker runs
    at once, then bob sends a normal email to the same queue. Bob's job succeeds within
    5 s and his mail arrives; every bomb ends DEAD at its first attempt, naming its limit."""
    alice, bob = owners
    bombs = [
        await alice.submit(
            "email.send", {"to": "x@example.com", "subject": "bomb", "text": text}, queue=QUEUE
        )
        for text, _ in E2E_BOMBS
    ]
    subject = f"Receipt {bombs[0].id}"
    normal = await bob.submit(
        "email.send",
        {"to": "bob@example.com", "subject": subject, "text": "Thanks {{ name }}",
         "context": {"name": "Bob"}},
        queue=QUEUE,
    )  # fmt: skip
    done = await _ended(bob, normal.id, 5.0)
    assert done.state == S.SUCCEEDED, done.error
    got = await asyncio.to_thread(mailbox.wait_for, subject, 5.0)
    assert got.recipients == ["bob@example.com"]
    for bomb, (_, named) in zip(bombs, E2E_BOMBS, strict=True):
        ended = await _ended(alice, bomb.id, 5.0)
        assert ended.state == S.DEAD and ended.attempt == 1, ended
        assert "text: " in ended.error and named in ended.error, ended.error


async def test_a_template_of_too_many_tokens_is_invalid_argument_at_the_api(
    owners: tuple[AsyncClient, AsyncClient],
) -> None:
    """Guards the token limit through the real API: INVALID_ARGUMENT naming the field."""
    alice, _ = owners
    with pytest.raises(InvalidArgument) as refused:
        await alice.submit(
            "email.send", {"to": "x@example.com", "subject": "s", "text": "{{ a }}" * 10_000}
        )
    assert any(
        v.field == "payload.text" and "over 20000 tokens" in v.description
        for v in refused.value.violations
    ), refused.value.violations
