"""Hostile input against a live api: generated requests, malformed bytes, huge messages and
forged page tokens. The server must answer each with the right status, stay up, and leave
no partial record behind.

The api here runs alone (its own Redis and database, no worker), so nothing runs and every
accepted job stays inspectable: afterwards every row of `jobs` must be a complete job that
some call was told was accepted (and each of those must be there, in Redis too).

- `test_generated_requests.py`: hypothesis builds JobService requests
  (unicode with NULs, huge and negative numbers, NaN and infinity in payloads, deep nesting,
  unknown enum numbers, out-of-range times, other owners' job ids, forged and borrowed page
  tokens, hostile `authorization` metadata), sent 32 at a time over a few channels.
- `test_malformed_bytes.py`: raw bytes on the wire (truncated varints, wrong wire
  types, invalid UTF-8 and encoded surrogates in string fields, huge length prefixes, open
  groups, nesting bombs, random bytes).
- `test_huge_messages.py`: 10 and 20 MB payloads, million-character ids, keys, types and
  tokens, a bulk of nearly 1 MB jobs, and listing them back.
- `test_page_tokens.py`: tokens are bound to their owner and filters and
  cannot be forged or edited.
- `test_bulk_submissions.py`: valid requests only,
  bulk and single submissions at the same time (what the generated test does by chance),
  so that a failure there is told apart from a failure on hostile input.
- `test_survival.py`: the totals, and a plain job
  submitted afterwards is committed.

An answer outside the RPC's expected codes (never INTERNAL, UNAVAILABLE, UNKNOWN, or no
answer at all) is a failure; failures are
grouped by RPC, code and what their requests had in common, with the smallest request and
the api log's tracebacks by kind and place. Run with `-s` for the counts.

Helpers, not tests: `rpcs` (the RPCs and a probe), `ledger` (what was accepted),
`generators` (hypothesis strategies and raw bytes), `engine` (sending and judging),
`checks` (what each test checks afterwards); `conftest` holds the api and the two runs.
"""
