"""ListJobs' filter language: AIP-160 (https://google.aip.dev/160) over a job's fields.

    state = RUNNING AND labels.team = "billing"
    (queue = emails OR queue = sms) -error:"timed out"
    create_time >= 2026-12-01T00:00:00Z AND payload.order.id = 42

`parse()` turns a filter string into a small typed tree (`And`, `Or`, `Not`, `Restriction`)
whose values are already converted (a `JobState`, epoch milliseconds, a typed payload
value), or raises InvalidArgument with one field violation on `filter` that names the
1-based character position and what is wrong there. The database side
(`conveyor.db.job_filters`) compiles the tree to SQL; nothing here knows SQL.

Precedence, as AIP-160 defines it (which is not the usual one): `AND` binds loosest,
then a sequence of terms separated by whitespace (also AND), then `OR`, so
`a AND b OR c` is `a AND (b OR c)`; `NOT` or `-` negates one term. Keywords are
case-sensitive: `and` is a value, not an operator.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeAlias

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from conveyor.errors import FieldViolation, InvalidArgument
from conveyor.jobs.labels import LABEL_KEY_PATTERN, valid_label_key
from conveyor.jobs.model import JobState

__all__ = [
    "MAX_DEPTH",
    "MAX_FILTER_LENGTH",
    "MAX_PAYLOAD_PATH",
    "MAX_RESTRICTIONS",
    "And",
    "Filter",
    "Not",
    "Or",
    "Restriction",
    "Value",
    "parse",
]

# Limits, so that one request cannot make a statement the database chokes on: the
# filter's length in characters, its comparisons, how deeply parentheses nest, and how
# deep a `payload.` path may reach.
MAX_FILTER_LENGTH = 2048
MAX_RESTRICTIONS = 32
MAX_DEPTH = 16
MAX_PAYLOAD_PATH = 8

# What a restriction compares with: a JobState (state), epoch milliseconds (times), text,
# or a payload value (bool, int, float, None or text).
Value: TypeAlias = JobState | str | int | float | bool | None

EQUALITY = ("=", "!=")
ORDERING = ("<", "<=", ">", ">=", "=", "!=")
HAS = ":"
ANY = "*"


@dataclass(frozen=True)
class Restriction:
    """One comparison: `path comparator value`, e.g. (`labels`, `team`) `=` "billing".
    `position` is the 1-based character where it starts in the filter."""

    path: tuple[str, ...]
    comparator: str
    value: Value
    position: int

    def fields(self) -> frozenset[str]:
        return frozenset({self.path[0]})


@dataclass(frozen=True)
class Not:
    operand: Filter

    def fields(self) -> frozenset[str]:
        return self.operand.fields()


@dataclass(frozen=True)
class And:
    operands: tuple[Filter, ...]

    def fields(self) -> frozenset[str]:
        return frozenset().union(*(o.fields() for o in self.operands))


@dataclass(frozen=True)
class Or:
    operands: tuple[Filter, ...]

    def fields(self) -> frozenset[str]:
        return frozenset().union(*(o.fields() for o in self.operands))


Filter: TypeAlias = And | Or | Not | Restriction

# The grammar of AIP-160's EBNF, less functions and composite arguments. Members and
# values are distinct terminals: LALR's contextual lexer only looks for a value after a
# comparator, so a bare value may hold ':' (2026-12-01T00:00:00Z) while `error:x` still
# splits at it. A keyword is never a field name, but only the exact word is one (`ANDY`
# is a name; `and` is a name, or a value).
_GRAMMAR = r"""
?expression: sequence (AND sequence)*
?sequence: factor factor*
?factor: term (OR term)*
?term: NOT simple -> negation
     | MINUS simple -> negation
     | simple
?simple: restriction | composite
composite: LPAREN expression RPAREN
restriction: MEMBER (COMPARATOR arg)?
?arg: VALUE | STRING

AND: "AND"
OR: "OR"
NOT: "NOT"
MINUS: "-"
LPAREN: "("
RPAREN: ")"
COMPARATOR: "<=" | ">=" | "!=" | "=" | "<" | ">" | ":"
MEMBER: /(?!(AND|OR|NOT)(?![A-Za-z0-9_.\-]))[A-Za-z_][A-Za-z0-9_.\-]*/
VALUE: /[^\s()"'=<>!]+/
STRING: /"(\\.|[^"\\])*"/s | /'(\\.|[^'\\])*'/s
%ignore /\s+/
"""

_NAMES = {
    "AND": "'AND'",
    "OR": "'OR'",
    "NOT": "'NOT'",
    "MINUS": "'-'",
    "LPAREN": "'('",
    "RPAREN": "')'",
}
FIELDS = (
    "state",
    "queue",
    "type",
    "owner",
    "id",
    "concurrency_key",
    "rate_key",
    "labels.KEY",
    "create_time",
    "finish_time",
    "error",
    "payload.PATH",
)
_TEXT_FIELDS = ("queue", "type", "owner", "id", "concurrency_key", "rate_key")
_TIME_FIELDS = ("create_time", "finish_time")
_NUMBER_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_INT = 2**63 - 1  # what SQLite binds; payload numbers are doubles (Struct) anyway


@cache
def _parser() -> Lark:
    return Lark(_GRAMMAR, start="expression", parser="lalr", lexer="contextual")


def _refuse(position: int, what: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation("filter", f"at {position}: {what}")])


def parse(text: str) -> Filter | None:
    """The filter `text` as a tree, or None for an empty (or blank) filter: no filter.

    Raises InvalidArgument (field `filter`) for anything it cannot run: a syntax error, an
    unknown field, a comparator or value the field does not take, or a limit passed."""
    if len(text) > MAX_FILTER_LENGTH:
        raise _refuse(MAX_FILTER_LENGTH + 1, f"a filter is at most {MAX_FILTER_LENGTH} characters")
    if not text.strip():
        return None
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None
    _check_shape(tree)
    return _Builder().build(tree)


# -- syntax errors ------------------------------------------------------------------------
def _syntax_error(text: str, exc: UnexpectedInput) -> InvalidArgument:
    """A lark error as a position and what is wrong there, in the filter's own terms."""
    if isinstance(exc, UnexpectedCharacters):
        offset = exc.pos_in_stream or 0
        position, char = offset + 1, text[offset]
        if char in "\"'":
            return _refuse(position, f"unterminated string (no closing {char})")
        return _refuse(position, f"unexpected character {char!r}")
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        at_end = token.type == "$END"
        position = len(text) + 1 if at_end else (token.start_pos or 0) + 1
        previous = _previous(exc)
        found = "the end of the filter" if at_end else repr(str(token))
        if previous is not None and previous.type == "COMPARATOR":
            return _refuse(position, f"expected a value after '{previous}'")
        if previous is not None and previous.type in ("AND", "OR", "NOT", "MINUS"):
            return _refuse(position, f"expected a restriction after {_NAMES[previous.type]}")
        if previous is not None and previous.type == "LPAREN" and token.type == "RPAREN":
            return _refuse(position, "empty parentheses")
        if token.type == "RPAREN":
            return _refuse(position, "')' without a matching '('")
        if at_end and "RPAREN" in exc.expected:
            return _refuse(position, "expected ')' to close a '('")
        if previous is None and token.type in ("AND", "OR"):
            return _refuse(position, f"expected a restriction before {_NAMES[token.type]}")
        if token.type == "COMPARATOR":
            return _refuse(position, f"expected a field before '{token}'")
        return _refuse(position, f"unexpected {found}")
    if isinstance(exc, UnexpectedEOF):  # pragma: no cover - LALR reports UnexpectedToken
        return _refuse(len(text) + 1, "unexpected end of the filter")
    return _refuse(1, str(exc))  # pragma: no cover


def _previous(exc: UnexpectedToken) -> Token | None:
    """The token the parser read last before the unexpected one (None at the start)."""
    parser = exc.interactive_parser
    if parser is None:  # pragma: no cover - LALR always attaches it
        return None
    stack = parser.parser_state.value_stack
    last = stack[-1] if stack else None
    return last if isinstance(last, Token) else None


# -- limits -------------------------------------------------------------------------------
def _check_shape(tree: Tree[Token]) -> None:
    """Refuse too many restrictions or too deep a nesting before the (recursive) build."""
    count = 0
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data == "composite":
            depth += 1
            if depth > MAX_DEPTH:
                raise _refuse(_start(node), f"parentheses nest at most {MAX_DEPTH} deep")
        if node.data == "restriction":
            count += 1
            if count > MAX_RESTRICTIONS:
                first = _restrictions(tree)
                raise _refuse(
                    _start(first[MAX_RESTRICTIONS]),
                    f"a filter has at most {MAX_RESTRICTIONS} restrictions",
                )
        stack += [(c, depth) for c in reversed(node.children) if isinstance(c, Tree)]


def _restrictions(tree: Tree[Token]) -> list[Tree[Token]]:
    """The restrictions in the order they are written."""
    found = [t for t in tree.iter_subtrees() if t.data == "restriction"]
    return sorted(found, key=_start)


def _start(node: Tree[Token]) -> int:
    """1-based position of a tree's first token."""
    first = next(_tokens(node))
    return (first.start_pos or 0) + 1


def _tokens(node: Tree[Token]) -> Iterator[Token]:
    stack: list[Tree[Token] | Token] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Token):
            yield item
        else:
            stack += reversed(item.children)


# -- the tree -----------------------------------------------------------------------------
class _Builder:
    """Lark's tree to the typed filter, checking every restriction against Conveyor's
    fields and converting its value."""

    def build(self, node: Tree[Token] | Token) -> Filter:
        assert isinstance(node, Tree)
        kind = node.data
        trees = [c for c in node.children if isinstance(c, Tree)]
        if kind == "expression":
            return And(tuple(self.build(c) for c in trees))
        if kind == "sequence":
            return And(tuple(self.build(c) for c in trees))
        if kind == "factor":
            return Or(tuple(self.build(c) for c in trees))
        if kind == "negation":
            return Not(self.build(trees[0]))
        if kind == "composite":
            return self.build(trees[0])
        return _restriction(node)


def _restriction(node: Tree[Token]) -> Restriction:
    member, *rest = [c for c in node.children if isinstance(c, Token)]
    position = (member.start_pos or 0) + 1
    if not rest:
        raise _refuse(
            position, f"expected a comparator and a value after '{member}' (e.g. state = RUNNING)"
        )
    comparator, arg = rest
    path = tuple(str(member).split("."))
    field = path[0]
    if field in ("labels", "payload"):
        return _nested(path, comparator, arg, position)
    if field not in ("state", "error", *_TEXT_FIELDS, *_TIME_FIELDS):
        raise _refuse(position, f"unknown field '{member}' (fields: {', '.join(FIELDS)})")
    if len(path) > 1:
        raise _refuse(position, f"'{field}' has no fields of its own ('{member}')")
    if field == "error":
        _allow(field, comparator, (HAS,))
        return Restriction(path, HAS, _text(arg), position)
    if field in _TIME_FIELDS:
        _allow(field, comparator, ORDERING)
        return Restriction(path, str(comparator), _time(arg), position)
    _allow(field, comparator, EQUALITY)
    value: Value = _state(arg) if field == "state" else _text(arg)
    return Restriction(path, str(comparator), value, position)


def _nested(path: tuple[str, ...], comparator: Token, arg: Token, position: int) -> Restriction:
    """`labels.KEY` (= or != text, or :* for presence) and `payload.PATH` (= or != a value)."""
    field, segments = path[0], path[1:]
    if not segments or not all(segments):
        raise _refuse(position, f"expected '{field}.NAME', got '{'.'.join(path)}'")
    if field == "labels":
        key = ".".join(segments)
        if not valid_label_key(key):
            raise _refuse(position, f"label key '{key}' does not match {LABEL_KEY_PATTERN}")
        if comparator == HAS:
            if not (arg.type == "VALUE" and arg == ANY):
                raise _refuse(_at(arg), f"'labels.{key}:' takes only '*' (has the label)")
            return Restriction((field, key), HAS, ANY, position)
        _allow(f"labels.{key}", comparator, (*EQUALITY, HAS))
        return Restriction((field, key), str(comparator), _text(arg), position)
    if len(segments) > MAX_PAYLOAD_PATH:
        raise _refuse(position, f"a payload path has at most {MAX_PAYLOAD_PATH} names")
    _allow("payload." + ".".join(segments), comparator, EQUALITY)
    return Restriction(path, str(comparator), _payload_value(arg), position)


def _allow(name: str, comparator: Token, allowed: tuple[str, ...]) -> None:
    if comparator not in allowed:
        takes = " or ".join(dict.fromkeys(allowed))
        raise _refuse(_at(comparator), f"'{name}' takes {takes}, not '{comparator}'")


def _at(token: Token) -> int:
    return (token.start_pos or 0) + 1


def _text(arg: Token) -> str:
    if arg.type == "STRING":
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), arg[1:-1], flags=re.DOTALL)
    return str(arg)


def _state(arg: Token) -> JobState:
    name = _text(arg).upper().removeprefix("JOB_STATE_")
    state = JobState.__members__.get(name)
    if state is None or state is JobState.UNSPECIFIED:
        names = ", ".join(s.name for s in JobState if s is not JobState.UNSPECIFIED)
        raise _refuse(_at(arg), f"unknown job state '{_text(arg)}' (states: {names})")
    return state


def _time(arg: Token) -> int:
    """An RFC 3339 timestamp as epoch milliseconds (what the database stores)."""
    text = _text(arg)
    try:  # RFC 3339 allows a lowercase t and z, which fromisoformat does not
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in text.upper():
        raise _refuse(
            _at(arg), f"expected an RFC 3339 time such as 2026-12-01T00:00:00Z, got '{text}'"
        )
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _payload_value(arg: Token) -> Any:
    """A bare `true`/`false`/`null` or number is typed (an integer stays an int); quoted
    text and any other bare text is a string."""
    if arg.type == "STRING":
        return _text(arg)
    text = str(arg)
    keywords: dict[str, Any] = {"true": True, "false": False, "null": None}
    if text in keywords:
        return keywords[text]
    match = _NUMBER_RE.match(text)
    if match is None:
        return text
    if match[2] is None and match[3] is None:
        number: int | float = int(text)
    else:
        number = float(text)
    if not math.isfinite(number) or abs(number) > _MAX_INT:
        raise _refuse(_at(arg), f"number out of range: {text}")
    return number
