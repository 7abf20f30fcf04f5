"""The scripts keep Redis' key contract: every key a script touches is passed in KEYS.

On Redis Cluster a client sends EVALSHA to the node that owns its KEYS' slot, and that node
refuses a key of another slot only if the key was declared; a key built inside the script
from ARGV, or cut out of another key, goes unchecked and may land on a node that does not
hold it. So each script is parsed (with `_common.lua` before it, as Redis runs it) and every
`redis.call`/`redis.pcall` that can run in it is checked: each argument the command takes
as a key must be

  - `KEYS[n]`, or a local (or a parameter, at every call of its function) bound only to one;
  - a field of the table `queue_keys()` returns, which must itself read only `KEYS[n]`, in
    the order and under the names of `QueueKeys.all`;
  - a prefix (a `queue_keys()` field whose `QueueKeys` value ends with ':') `.. anything`:
    a key named only as the script runs (a popped job's hash), in the prefix's slot.

ARGV, a call's result (`string.sub`, `string.gsub`), a key with more appended to it and
anything the checker cannot follow are refused. A command the checker does not know is
refused too, until its key positions are added to `_KEY_ARGS` below.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from typing import Any

import pytest
from luaparser import ast as lua_ast
from luaparser import astnodes as lua

from conveyor.redis.keys import QueueKeys
from conveyor.redis.scripts import NAMES, _source

# Which arguments of a command (after its name) are keys: "first", "all", or "none" (a
# PUBLISH channel is not a key: it is no slot's, and a cluster broadcasts it).
_FIRST = (
    "EXPIRE GET HGET HGETALL HDEL HINCRBY HMGET HSET INCR LLEN LPUSH LTRIM PERSIST PEXPIRE RPUSH "
    "SADD SET SMEMBERS SREM ZADD ZCARD ZCOUNT ZPOPMIN ZRANGE ZRANGEBYSCORE ZRANK ZREM "
    "ZREMRANGEBYSCORE ZSCORE"
)
_KEY_ARGS: dict[str, str] = {
    **{name: "first" for name in _FIRST.split()},
    **{name: "all" for name in ("DEL", "EXISTS", "UNLINK", "TOUCH", "MGET")},
    **{name: "none" for name in ("TIME", "PUBLISH")},
}
_QUEUE_KEYS_FUNCTION = "queue_keys"
_QUEUE_KEY_COUNT = "QUEUE_KEY_COUNT"
_SAMPLE = QueueKeys("q")


class Kind(Enum):
    """What an expression holds, as far as keys go."""

    NIL = "nil"  # nothing (a variable's `nil` start): adds nothing to what else it holds
    KEY = "a key from KEYS"
    PREFIX = "a key prefix from KEYS"
    QUEUE_KEYS = "queue_keys()'s table"
    UNKNOWN = "not from KEYS"


def _meet(kinds: Iterator[Kind]) -> Kind:
    """One kind for a variable bound to each of `kinds` (NIL aside), else UNKNOWN."""
    found = Kind.NIL
    for kind in kinds:
        if kind is Kind.NIL or kind is found:
            continue
        if found is not Kind.NIL:
            return Kind.UNKNOWN
        found = kind
    return found


@dataclass(eq=False)
class Var:
    """A local variable (or a parameter): what is bound to it, and for a table, what its
    elements are bound to."""

    name: str
    sources: list[Any] = field(default_factory=list)  # expressions, or a Kind
    elements: list[Any] = field(default_factory=list)  # from `t[i] = v`
    iterated: list[Any] = field(default_factory=list)  # `for _, v in ipairs(t)`: t's nodes
    escaped: bool = False  # used other than indexed, iterated or measured: elements unknown
    function: Any = None  # its LocalFunction node, when it is one
    params: list[Var] = field(default_factory=list)


@dataclass
class _Call:
    """A `redis.call` and the function it is in (None: the script's own body)."""

    node: Any
    within: Var | None


class Checker:
    """Resolves every name of one script to its variable (Lua's lexical scopes), records
    what each variable is bound to, then judges each reachable `redis.call`'s keys."""

    def __init__(self, source: str) -> None:
        self.tree = lua_ast.parse(source)
        self.resolved: dict[int, Var | None] = {}  # id(Name node) -> its variable
        self.calls: list[_Call] = []
        self.problems: list[str] = []
        self.callers: dict[Var, set[Var | None]] = {}  # function -> where it is called
        self.functions: list[Var] = []
        self.queue_fields: dict[str, Kind] = {}
        self.queue_keys_var: Var | None = None
        self._within: Var | None = None
        self._kinds: dict[int, Kind] = {}
        self._busy: set[int] = set()
        self._block(self.tree.body.body, [{}])
        self._read_queue_keys()

    # -- pass 1: scopes and bindings -------------------------------------------------------
    def _lookup(self, scopes: list[dict[str, Var]], name: str) -> Var | None:
        for scope in reversed(scopes):
            if name in scope:
                return scope[name]
        return None

    def _block(self, body: list[Any], scopes: list[dict[str, Var]]) -> None:
        scopes = [*scopes, {}]
        for stmt in body:
            self._stmt(stmt, scopes)

    def _stmt(self, stmt: Any, scopes: list[dict[str, Var]]) -> None:
        if isinstance(stmt, lua.LocalAssign):
            for value in stmt.values:
                self._expr(value, scopes)
            for i, target in enumerate(stmt.targets):
                var = Var(target.id, [self._nth(stmt.values, i)])
                self.resolved[id(target)] = var
                scopes[-1][target.id] = var
        elif isinstance(stmt, lua.LocalFunction):
            var = Var(stmt.name.id, function=stmt)
            self.resolved[id(stmt.name)] = var
            scopes[-1][var.name] = var
            self.functions.append(var)
            self.callers[var] = set()
            if var.name == _QUEUE_KEYS_FUNCTION and len(scopes) == 2:
                self.queue_keys_var = var
            self._function(var, stmt.args, stmt.body, scopes)
        elif isinstance(stmt, lua.Function | lua.Method):
            self.problems.append(f"line {stmt.line}: only local functions are followed")
        elif isinstance(stmt, lua.Assign):
            for value in stmt.values:
                self._expr(value, scopes)
            for i, target in enumerate(stmt.targets):
                self._assign(target, self._nth(stmt.values, i), scopes)
        elif isinstance(stmt, lua.Forin):
            for expr in stmt.iter:
                self._expr(expr, scopes, ipairs_arg=self._ipairs_arg(stmt.iter))
            inner: dict[str, Var] = {}
            listed = self._ipairs_arg(stmt.iter)
            for i, target in enumerate(stmt.targets):
                var = Var(target.id, [Kind.UNKNOWN])
                if i == 1 and listed is not None:
                    var.sources = [("elements", listed)]
                self.resolved[id(target)] = var
                inner[target.id] = var
            self._block(stmt.body.body, [*scopes, inner])
        elif isinstance(stmt, lua.Fornum):
            for expr in (stmt.start, stmt.stop, stmt.step):
                if isinstance(expr, lua.Node):
                    self._expr(expr, scopes)
            var = Var(stmt.target.id, [Kind.UNKNOWN])
            self.resolved[id(stmt.target)] = var
            self._block(stmt.body.body, [*scopes, {var.name: var}])
        elif isinstance(stmt, lua.If | lua.ElseIf):
            self._expr(stmt.test, scopes)
            self._block(stmt.body.body, scopes)
            if isinstance(stmt.orelse, lua.Block):
                self._block(stmt.orelse.body, scopes)
            elif stmt.orelse is not None:
                self._stmt(stmt.orelse, scopes)
        elif isinstance(stmt, lua.While):
            self._expr(stmt.test, scopes)
            self._block(stmt.body.body, scopes)
        elif isinstance(stmt, lua.Repeat):
            self._block([*stmt.body.body], scopes)
            self._expr(stmt.test, scopes)
        elif isinstance(stmt, lua.Do):
            self._block(stmt.body.body, scopes)
        elif isinstance(stmt, lua.Return):
            for value in stmt.values:
                self._expr(value, scopes)
        elif isinstance(stmt, lua.Call | lua.Invoke):
            self._expr(stmt, scopes)
        elif not isinstance(stmt, lua.Break | lua.SemiColon | lua.Label | lua.Goto):
            self.problems.append(f"line {stmt.line}: cannot follow a {type(stmt).__name__}")

    @staticmethod
    def _nth(values: list[Any], i: int) -> Any:
        """The value the i-th target of an assignment gets: a call's extra results are
        unknown, a missing value is nil."""
        if i < len(values):
            return values[i]
        if values and isinstance(values[-1], lua.Call | lua.Invoke | lua.Varargs):
            return Kind.UNKNOWN
        return Kind.NIL

    @staticmethod
    def _ipairs_arg(iters: list[Any]) -> Any:
        """X in `for _, v in ipairs(X)`, else None."""
        if len(iters) != 1 or not isinstance(iters[0], lua.Call):
            return None
        call = iters[0]
        if isinstance(call.func, lua.Name) and call.func.id == "ipairs" and len(call.args) == 1:
            return call.args[0]
        return None

    def _function(self, var: Var | None, args: list[Any], body: Any, scopes: list[Any]) -> None:
        params: dict[str, Var] = {}
        for arg in args:
            if isinstance(arg, lua.Name):
                param = Var(arg.id)
                self.resolved[id(arg)] = param
                params[arg.id] = param
                if var is not None:
                    var.params.append(param)
                else:
                    param.sources.append(Kind.UNKNOWN)  # an anonymous function's callers
        outer, self._within = self._within, var if var is not None else self._within
        self._block(body.body, [*scopes, params])
        self._within = outer

    def _assign(self, target: Any, value: Any, scopes: list[dict[str, Var]]) -> None:
        if isinstance(target, lua.Name):
            var = self._lookup(scopes, target.id)
            self.resolved[id(target)] = var
            if var is None:
                self.problems.append(f"line {target.line}: assigns the global {target.id}")
            else:
                var.sources.append(value)
        elif isinstance(target, lua.Index):
            self._expr(target, scopes)
            base = target.value
            listed = self.resolved.get(id(base)) if isinstance(base, lua.Name) else None
            if listed is not None:
                listed.elements.append(value)
        else:
            self.problems.append(f"line {target.line}: cannot follow an assignment to it")

    def _expr(
        self,
        expr: Any,
        scopes: list[dict[str, Var]],
        *,
        role: str = "value",
        ipairs_arg: Any = None,
    ) -> None:
        if isinstance(expr, lua.Name):
            var = self._lookup(scopes, expr.id)
            self.resolved[id(expr)] = var
            if var is None:
                return
            if role == "iterated":
                var.iterated.append(expr)
            elif role not in ("indexed", "measured"):
                var.escaped = True
            if var.function is not None and role != "callee":
                for param in var.params:  # called from where it was passed: unknown
                    param.sources.append(Kind.UNKNOWN)
        elif isinstance(expr, lua.Index):
            if self._is_redis_call(expr):
                self.problems.append(f"line {expr.line}: redis.call used other than called")
            self._expr(expr.value, scopes, role="indexed")
            if expr.notation is lua.IndexNotation.SQUARE:
                self._expr(expr.idx, scopes)
        elif isinstance(expr, lua.Call):
            if self._is_redis_call(expr.func):
                self.calls.append(_Call(expr, self._within))
            else:
                self._expr(expr.func, scopes, role="callee")
            for arg in expr.args:
                self._expr(arg, scopes, role="iterated" if arg is ipairs_arg else "value")
            callee = self.resolved.get(id(expr.func)) if isinstance(expr.func, lua.Name) else None
            if callee is not None and callee.function is not None:
                self.callers[callee].add(self._within)
                for i, param in enumerate(callee.params):
                    param.sources.append(self._nth(expr.args, i))
        elif isinstance(expr, lua.Table):
            for item in expr.fields:
                if item.key is not None and item.between_brackets:  # {name = v}: no variable
                    self._expr(item.key, scopes)
                self._expr(item.value, scopes)
        elif isinstance(expr, lua.AnonymousFunction):
            self._function(None, expr.args, expr.body, scopes)
        elif isinstance(expr, lua.ULengthOP):
            self._expr(expr.operand, scopes, role="measured")
        elif isinstance(expr, lua.Node):
            for child in self._children(expr):
                self._expr(child, scopes)

    @staticmethod
    def _children(node: Any) -> Iterator[Any]:
        for name, value in vars(node).items():
            if name.startswith("_") or name == "comments":
                continue
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, lua.Node):
                    yield item

    @staticmethod
    def _is_redis_call(expr: Any) -> bool:
        return (
            isinstance(expr, lua.Index)
            and expr.notation is lua.IndexNotation.DOT
            and isinstance(expr.value, lua.Name)
            and expr.value.id == "redis"
            and isinstance(expr.idx, lua.Name)
            and expr.idx.id in ("call", "pcall")
        )

    def _read_queue_keys(self) -> None:
        """The fields of `queue_keys()`'s table: each must be `KEYS[n]` at the place and
        under the name `QueueKeys.all` gives it; a prefix is a value ending with ':'."""
        var = self.queue_keys_var
        if var is None:
            return
        body = var.function.body.body
        if len(body) != 1 or not isinstance(body[0], lua.Return) or len(body[0].values) != 1:
            self.problems.append("queue_keys() must be one `return {...}`")
            return
        table = body[0].values[0]
        for item in table.fields if isinstance(table, lua.Table) else []:
            name = item.key.id if isinstance(item.key, lua.Name) else None
            position = self._keys_position(item.value)
            if name is None or position is None:
                self.problems.append(f"line {item.line}: queue_keys() reads only KEYS[n]")
                continue
            expected = getattr(_SAMPLE, name, None)
            if position > len(_SAMPLE.all) or _SAMPLE.all[position - 1] != expected:
                self.problems.append(
                    f"line {item.line}: queue_keys().{name} is KEYS[{position}], which "
                    f"QueueKeys.all does not give as QueueKeys.{name}"
                )
                continue
            self.queue_fields[name] = Kind.PREFIX if str(expected).endswith(":") else Kind.KEY

    @staticmethod
    def _keys_position(expr: Any) -> int | None:
        if (
            isinstance(expr, lua.Index)
            and expr.notation is lua.IndexNotation.SQUARE
            and isinstance(expr.value, lua.Name)
            and expr.value.id == "KEYS"
            and isinstance(expr.idx, lua.Number)
        ):
            return int(expr.idx.n)
        return None

    # -- pass 2: what each expression holds ------------------------------------------------
    def kind(self, expr: Any) -> Kind:
        if isinstance(expr, Kind):
            return expr
        if isinstance(expr, tuple):  # ("elements", X): an element of the list X
            return self._element_kind(expr[1])
        if isinstance(expr, lua.Nil):
            return Kind.NIL
        if isinstance(expr, lua.Index):
            base = expr.value
            if isinstance(base, lua.Name) and base.id == "KEYS" and self._is_global(base):
                return Kind.KEY if expr.notation is lua.IndexNotation.SQUARE else Kind.UNKNOWN
            held = self.kind(base)
            if held is Kind.NIL:  # only bound where the code is not reached (or an error)
                return Kind.NIL
            if expr.notation is lua.IndexNotation.DOT and held is Kind.QUEUE_KEYS:
                return self.queue_fields.get(expr.idx.id, Kind.UNKNOWN)
            return Kind.UNKNOWN
        if isinstance(expr, lua.Name):
            var = self.resolved.get(id(expr))
            return Kind.UNKNOWN if var is None else self._var_kind(var)
        if isinstance(expr, lua.Call):
            callee = self.resolved.get(id(expr.func)) if isinstance(expr.func, lua.Name) else None
            if callee is not None and callee is self.queue_keys_var:
                return Kind.QUEUE_KEYS
            return Kind.UNKNOWN
        if isinstance(expr, lua.Concat):
            left = self.kind(expr.left)
            if left is Kind.NIL:
                return Kind.NIL
            return Kind.KEY if left is Kind.PREFIX else Kind.UNKNOWN
        return Kind.UNKNOWN

    def _is_global(self, name: Any) -> bool:
        return id(name) in self.resolved and self.resolved[id(name)] is None

    def _var_kind(self, var: Var) -> Kind:
        if var.function is not None:
            return Kind.UNKNOWN
        if id(var) in self._kinds:
            return self._kinds[id(var)]
        if id(var) in self._busy:
            return Kind.UNKNOWN  # bound to itself, round a loop: not followed
        self._busy.add(id(var))
        kind = _meet(self.kind(source) for source in var.sources)
        self._busy.discard(id(var))
        self._kinds[id(var)] = kind
        return kind

    def _element_kind(self, listed: Any) -> Kind:
        """What every element of the list `listed` (a table constructor, or a local only
        ever bound to one and then only indexed, iterated or measured) is bound to."""
        if isinstance(listed, lua.Table):
            if any(item.key is not None for item in listed.fields):
                return Kind.UNKNOWN
            return _meet(self.kind(item.value) for item in listed.fields)
        var = self.resolved.get(id(listed)) if isinstance(listed, lua.Name) else None
        if var is None or var.escaped:
            return Kind.UNKNOWN
        if not all(isinstance(source, lua.Table) for source in var.sources):
            return Kind.UNKNOWN
        tables = [self._element_kind(source) for source in var.sources]
        return _meet(iter([*tables, *(self.kind(value) for value in var.elements)]))

    # -- the verdict -----------------------------------------------------------------------
    def reached(self) -> set[Var]:
        """The functions the script's own body calls, directly or through others."""
        reached: set[Var] = set()
        grew = True
        while grew:
            grew = False
            for var, callers in self.callers.items():
                if var not in reached and any(c is None or c in reached for c in callers):
                    reached.add(var)
                    grew = True
        return reached

    def violations(self) -> list[str]:
        found = list(self.problems)
        reached = self.reached()
        for call in self.calls:
            if call.within is None or call.within in reached:
                found += self._judge(call.node)
        return found

    def _judge(self, call: Any) -> list[str]:
        args = call.args
        if not args or not isinstance(args[0], lua.String):
            return [f"line {call.line}: a command that is not a literal name"]
        command = args[0].s.decode().upper()
        spec = _KEY_ARGS.get(command)
        if spec is None:
            return [f"line {call.line}: {command}: which arguments are keys? (see _KEY_ARGS)"]
        keys = {"first": args[1:2], "all": args[1:], "none": []}[spec]
        if spec != "none" and not keys:
            return [f"line {call.line}: {command} without its key"]
        found = []
        for key in keys:
            kind = self.kind(key)
            if isinstance(key, lua.Call | lua.Invoke | lua.Varargs) and spec == "all":
                kind = Kind.UNKNOWN  # unpack(...): keys the checker cannot see
            if kind is not Kind.KEY:
                found.append(f"line {call.line}: {command}'s key is {kind.value}")
        return found


def _script_text(name: str) -> str:
    return (resources.files("conveyor.redis") / "scripts" / f"{name}.lua").read_text()


def _lines_of_common() -> int:
    return _script_text("_common").count("\n") + 1


def _placed(problem: str, name: str) -> str:
    """A problem's line, told as the file it is in (`_common.lua` comes first)."""
    head, _, rest = problem.partition(": ")
    if not head.startswith("line "):
        return f"{name}.lua: {problem}"
    line = int(head.removeprefix("line "))
    common = _lines_of_common()
    where = f"_common.lua:{line}" if line <= common else f"{name}.lua:{line - common}"
    return f"{where}: {rest}"


@functools.cache
def _checked(name: str) -> Checker:
    """The checker of one script, parsed once for every test (parsing takes a fifth of a
    second)."""
    return Checker(_source(name))


@pytest.mark.parametrize("name", NAMES)
def test_every_key_a_script_touches_comes_from_keys(name: str) -> None:
    """Guards the cluster contract, per script: no command reaches a key that was not
    declared in KEYS (directly, or as a declared prefix followed by an id found as the
    script runs). Each script also says what it takes (its `-- KEYS:` and `-- ARGV:`)."""
    source = _script_text(name)
    assert "-- KEYS:" in source and "-- ARGV:" in source, f"{name}.lua: say what it takes"
    found = [_placed(problem, name) for problem in _checked(name).violations()]
    assert found == [], "\n".join(found)


def test_queue_keys_reads_only_keys_in_queue_keys_order() -> None:
    """Guards the shared half of the contract: `queue_keys()` reads every field from KEYS
    (no key sliced out of another), by QueueKeys' names and in `QueueKeys.all`'s order, and
    the scripts' own keys start right after them (QUEUE_KEY_COUNT)."""
    checker = _checked("claim")
    assert checker.queue_keys_var is not None
    problems = [p for p in checker.problems if "queue_keys" in p]
    assert problems == []
    assert set(checker.queue_fields) == {
        name for name in dir(QueueKeys) if getattr(_SAMPLE, name, None) in _SAMPLE.all
    }
    counts = [
        stmt.values[0].n
        for stmt in checker.tree.body.body
        if isinstance(stmt, lua.LocalAssign) and stmt.targets[0].id == _QUEUE_KEY_COUNT
    ]
    assert counts == [len(_SAMPLE.all)]


def test_every_shared_function_runs_in_some_script() -> None:
    """Guards the checker's reach: it judges a shared function's calls only in the scripts
    that call it, so each function of `_common.lua` must be called by at least one."""
    reached: set[str] = set()
    for name in NAMES:
        checker = _checked(name)
        reached |= {var.name for var in checker.reached()}
    common = {var.name for var in _checked("announce").functions}
    assert common - reached == set()


# The checker itself: what it must refuse, and what it must let through.
_REFUSED = {
    "an ARGV key": "redis.call('HGET', ARGV[1], 'f')",
    "a key built from ARGV": "redis.call('HGET', ARGV[1] .. ARGV[2], 'f')",
    "a key cut from another": "redis.call('DEL', (string.gsub(KEYS[1], ':a:', ':b:', 1)))",
    "a key with more on it": "redis.call('HGET', KEYS[1] .. ':x', 'f')",
    "a sliced prefix": "redis.call('ZADD', string.sub(KEYS[1], 1, -6) .. 'p:', 1, 'm')",
    "a second key of DEL": "redis.call('DEL', KEYS[1], ARGV[1])",
    "keys DEL cannot see": "redis.call('DEL', unpack(KEYS))",
    "an unknown command": "redis.call('BLMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT', 0)",
    "a computed command": "redis.call(ARGV[1], KEYS[1])",
    "a pcall": "redis.pcall('HGET', ARGV[1], 'f')",
    "a local from ARGV": "local k = ARGV[1]\nredis.call('HGET', k, 'f')",
    "a local either way": (
        "local k = KEYS[1]\nif ARGV[2] then k = ARGV[1] end\nredis.call('HGET', k)"
    ),
    "a parameter from ARGV": (
        "local function f(k) redis.call('HGET', k, 'f') end\nf(KEYS[1])\nf(ARGV[1])"
    ),
    "a list with an ARGV": "for _, k in ipairs({KEYS[1], ARGV[1]}) do redis.call('DEL', k) end",
    "a list grown from ARGV": (
        "local l = {KEYS[1]}\nl[2] = ARGV[1]\nfor _, k in ipairs(l) do redis.call('DEL', k) end"
    ),
    "a list passed away": (
        "local l = {KEYS[1]}\ng(l)\nfor _, k in ipairs(l) do redis.call('DEL', k) end"
    ),
    "a shadowed KEYS": "local KEYS = ARGV\nredis.call('HGET', KEYS[1], 'f')",
    "redis.call kept aside": "local c = redis.call\nc('HGET', ARGV[1], 'f')",
    "a prefix from ARGV": "local p = ARGV[1]\nredis.call('HGET', p .. 'id', 'f')",
}
_ACCEPTED = {
    "KEYS": "redis.call('HGET', KEYS[1], 'f')\nredis.call('HGET', KEYS[1 + #ARGV], 'f')",
    "a local of KEYS": "local k = KEYS[2]\nredis.call('ZADD', k, 1, ARGV[1])",
    "a parameter of KEYS": "local function f(k) redis.call('DEL', k) end\nf(KEYS[1])",
    "a channel from ARGV": "redis.call('PUBLISH', ARGV[1] .. ARGV[2], 'x')",
    "no keys": "redis.call('TIME')",
    "a list of KEYS": "for _, k in ipairs({KEYS[1], KEYS[2]}) do redis.call('DEL', k) end",
    "a maybe-nil key": (
        "local k = nil\nif ARGV[1] then k = KEYS[1] end\nif k then redis.call('DEL', k) end"
    ),
    "a function never called": "local function f() redis.call('HGET', ARGV[1], 'f') end",
}


@pytest.mark.parametrize("what", _REFUSED)
def test_the_checker_refuses(what: str) -> None:
    """Guards the checker's honesty: each way of reaching a key outside KEYS is caught."""
    assert Checker(_REFUSED[what]).violations() != []


@pytest.mark.parametrize("what", _ACCEPTED)
def test_the_checker_accepts(what: str) -> None:
    """Guards against a checker that refuses everything: keys from KEYS pass."""
    assert Checker(_ACCEPTED[what]).violations() == []


def test_the_checker_follows_queue_keys_prefixes() -> None:
    """A prefix field of `queue_keys()` may take an id; a key field may not, and a field
    that is not read from KEYS (or not at QueueKeys.all's place) is refused."""
    common = _script_text("_common")
    good = common + "\nlocal q = queue_keys()\nredis.call('HGET', q.job_prefix .. ARGV[1], 'f')"
    assert Checker(good).violations() == []
    extended = common + "\nlocal q = queue_keys()\nredis.call('HGET', q.ready .. ':x', 'f')"
    assert Checker(extended).violations() != []
    sliced = common.replace("parked_prefix = KEYS[14]", "parked_prefix = KEYS[1] .. 'p:'")
    assert sliced != common
    assert Checker(sliced).violations() != []
    moved = common.replace("conf = KEYS[7]", "conf = KEYS[8]")
    assert moved != common
    assert Checker(moved).violations() != []
