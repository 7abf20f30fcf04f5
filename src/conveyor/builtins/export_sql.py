"""What a `csv.export` query may be, decided by PostgreSQL's own parser (`pglast`).

A query is accepted when, read by PostgreSQL's grammar (libpg_query, the server's parser
compiled as a library), it is exactly one plain `SELECT`: `WITH ... SELECT`, `VALUES`,
`TABLE t` and set operations included, but

- no second statement (`;` between statements, whatever the quoting: dollar quotes,
  `E''` strings, comments are all understood by the parser, not guessed at);
- no data-modifying `WITH` (`INSERT`/`UPDATE`/`DELETE`/`MERGE` anywhere in the tree),
  no `SELECT ... INTO`, no locking clause (`FOR UPDATE`, `FOR SHARE`, ...);
- no `$1`-style parameters of its own (placeholders are `:name`, bound from `params`);
- no call to a function of `DENIED_FUNCTIONS` (below).

The check runs twice: at submit (the payload model, so the client gets INVALID_ARGUMENT
naming `payload.query`) and again in the worker just before the query is sent, on the
very text that is sent, so a worker never trusts that the API checked.

Functions. The export role's privileges are the primary defence: the worker refuses to
start when that role is a superuser, can write, or is a member of the roles that read
server files or signal other sessions (see `conveyor.builtins.export_database`). The
deny-list covers what privileges cannot: functions that run SQL text the parser never
saw (`query_to_xml('...')`, `ts_stat`, `dblink`), that change the pooled session beyond
the statement (`set_config`, which would also forge the `conveyor.owner` setting that
per-owner row-level security reads; session advisory locks), and that signal the other
export sessions of the same role (`pg_terminate_backend`, `pg_cancel_backend`). The
server-file functions (`pg_read_file`, `lo_import`, ...) are denied too, as a second
line behind the role check. `pg_sleep` is not denied: the statement timeout and the
job's deadline bound it.

Placeholders: `:name` (a name of letters, digits and `_`, not right after a letter,
digit, `:` or `\\`, as SQLAlchemy's `text()` reads them) is found by PostgreSQL's
scanner, so a `:name` inside a string, a quoted name or a comment is left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import orjson
from pglast.parser import ParseError, Token, parse_sql_json, scan, split

# Functions a query may not call (matched on the last part of the name, any schema).
DENIED_FUNCTIONS = frozenset(
    {
        # Run SQL given as text, which this check never sees.
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
        # Change the pooled session beyond this statement (and forge conveyor.owner).
        "set_config",
        # Signal other sessions of the same role (other owners' exports).
        "pg_terminate_backend",
        "pg_cancel_backend",
        # Server files and large objects (privilege-gated; a second line).
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "lo_import",
        "lo_export",
    }
)
# Name prefixes denied the same way: dblink's functions, and advisory locks (a session
# lock would outlive the job on the pooled connection).
DENIED_PREFIXES = ("dblink", "pg_advisory", "pg_try_advisory")

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_WORD_BEFORE = re.compile(r"[:\w\\]")
_WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


class RefusedQuery(ValueError):
    """The query is not one plain SELECT this check accepts; the message says why."""


@dataclass(frozen=True)
class ExportStatement:
    """A checked query: its text without trailing `;` or comments (`body`), and where its
    `:name` placeholders are (start offset, name), in order."""

    body: str
    placeholders: tuple[tuple[int, str], ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for _, name in self.placeholders)

    def rendered(self, placeholder: str, escape_percent: bool) -> str:
        """The body with each `:name` written as `placeholder.format(name=...)`, and every
        other `%` doubled when `escape_percent` (psycopg's `%(name)s` style needs it)."""
        out: list[str] = []
        at = 0
        for start, name in self.placeholders:
            out.append(self._escaped(self.body[at:start], escape_percent))
            out.append(placeholder.format(name=name))
            at = start + 1 + len(name)
        out.append(self._escaped(self.body[at:], escape_percent))
        return "".join(out)

    @staticmethod
    def _escaped(text: str, escape_percent: bool) -> str:
        return text.replace("%", "%%") if escape_percent else text

    def psycopg(self, counting: bool = False) -> str:
        """The statement as sent through psycopg (`%(name)s` placeholders)."""
        return _wrap(self.rendered("%({name})s", escape_percent=True), counting)

    def server_text(self, counting: bool = False) -> str:
        """What the PostgreSQL server receives for `psycopg(counting)`: each placeholder
        becomes `$n` (psycopg numbers them; any number parses the same)."""
        return _wrap(self.rendered("$1", escape_percent=False), counting)

    def sqlite(self, counting: bool = False) -> str:
        """The statement for sqlite3, which binds `:name` itself."""
        return _wrap(self.body, counting)


def _wrap(sql: str, counting: bool) -> str:
    return f"SELECT count(*) FROM (\n{sql}\n) AS q" if counting else sql


def export_statement(query: str) -> ExportStatement:
    """The query, checked (see the module docstring); RefusedQuery says what is wrong."""
    try:
        tokens = scan(query)
    except ParseError as exc:
        raise RefusedQuery(f"is not valid SQL: {exc}") from None
    significant = [t for t in tokens if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    if any(t.name == "PARAM" for t in significant):
        raise RefusedQuery("uses $n parameters; write :name placeholders and give `params`")
    while significant and significant[-1].name == "ASCII_59":  # trailing `;`
        significant.pop()
    if not significant:
        raise RefusedQuery("must be a single SELECT (or WITH ... SELECT) statement")
    statement = ExportStatement(
        body=query[: significant[-1].end + 1], placeholders=_placeholders(query, significant)
    )
    check_server_text(statement.server_text())
    # The count wraps the checked query (the same tokens between our own), so it must
    # read as one statement too; the parser's split says so without building a tree.
    try:
        counted = split(statement.server_text(counting=True), with_parser=True)
    except ParseError as exc:
        raise RefusedQuery(f"is not valid SQL: {exc}") from None
    if len(counted) != 1:
        raise RefusedQuery("must be a single statement (no `;` between statements)")
    return statement


def _placeholders(query: str, tokens: list[Token]) -> tuple[tuple[int, str], ...]:
    found: list[tuple[int, str]] = []
    for colon, after in pairwise(tokens):
        if colon.name != "ASCII_58" or after.start != colon.end + 1:
            continue
        if colon.start and _WORD_BEFORE.fullmatch(query[colon.start - 1]):
            continue  # `a[1:n]`, `x::int`: not a placeholder
        name = query[after.start : after.end + 1]
        if _PARAM_NAME.fullmatch(name):
            found.append((colon.start, name))
    return tuple(found)


def check_server_text(sql: str) -> None:
    """Refuse `sql` unless PostgreSQL's grammar reads it as one plain SELECT.

    The tree is read as libpg_query's JSON (parsed in C, loaded by orjson) rather than as
    pglast's Python objects: a 100,000-character query is checked in tens of milliseconds,
    not a second, which matters because the API checks every submitted query."""
    try:
        tree = orjson.loads(parse_sql_json(sql))
    except ParseError as exc:
        raise RefusedQuery(f"is not valid SQL: {exc}") from None
    statements = tree.get("stmts") or []
    if len(statements) != 1:
        raise RefusedQuery("must be a single statement (no `;` between statements)")
    root = statements[0].get("stmt") or {}
    if "SelectStmt" not in root:
        raise RefusedQuery("must be a single SELECT (or WITH ... SELECT) statement")
    _inspect(root)


def _inspect(root: dict[str, Any]) -> None:
    """Walk the whole tree (CTEs, subqueries, expressions, FROM items), iteratively."""
    todo: list[Any] = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        _check_node(node)
        todo.extend(value for value in node.values() if isinstance(value, dict | list))


def _check_node(node: dict[str, Any]) -> None:
    """One JSON object of the tree. Its members are checked by name, not only its type
    key: fields typed as a struct (a set operation's `larg`/`rarg` SelectStmt) come
    without the `{"SelectStmt": ...}` wrapper."""
    if not _WRITES.isdisjoint(node):
        raise RefusedQuery("must not write (no INSERT, UPDATE, DELETE or MERGE in WITH)")
    if node.get("intoClause"):
        raise RefusedQuery("must not be SELECT ... INTO")
    if node.get("lockingClause"):
        raise RefusedQuery("must not lock rows (no FOR UPDATE / FOR SHARE)")
    parts = node.get("funcname")
    if isinstance(parts, list) and parts:
        name = str(parts[-1].get("String", {}).get("sval", "")).lower()
        if name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES):
            raise RefusedQuery(f"must not call {name}()")
