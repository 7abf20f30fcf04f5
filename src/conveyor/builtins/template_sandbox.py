"""A Jinja2 sandbox whose renders are bounded in CPU and memory, for templates users write.

Jinja2's own sandbox keeps a template away from Python's internals, but not from the
worker's CPU and memory: `{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}
{% endfor %}` loops for hours without writing a character, and `{{ "a" * 400000000 }}`
allocates 400 MB in one operation. A `BoundedEnvironment` renders under three limits, each
failing the render with `LimitExceeded` naming it:

- Steps (MAX_STEPS). Every time a statement list runs (the template itself, each loop
  iteration, each macro or call-block call, each branch taken) it is charged its size in
  nodes, at least 1, before it runs. Only repeated bodies can run more than once, so the
  steps charged bound the template code executed, whatever the nesting, recursion
  (`loop(...)`, macros calling themselves) or data looped over. Work inside one node that
  grows with the data is charged by its size too: a filter a step per item of a list (4
  with an `attribute=`, 8 for `groupby`) or per 4 characters of a string, a comparison or
  a call per 64 items or characters it may scan.
- Values (MAX_VALUE characters, MAX_ITEMS items, MAX_INT_BITS bits). No operator, filter,
  call, `~` or output may make a bigger value. Where the result could outgrow the inputs
  (repetition, powers, padding to a width, replacing, joining, printf and str.format
  widths, batching) its size is computed from the arguments first, so an oversized value
  is refused before it is allocated. Everything else a template can reach makes at most a
  small constant multiple of its inputs (Python's own str/list/dict/int methods, Jinja's
  filters) and is checked on its result. Stringifying a container (output, `~`, `|string`,
  `|tojson`, `|join`...) measures it first, counting shared references each time, so a
  list nested inside itself twenty times cannot print to a gigabyte.
- Produced data (MAX_PRODUCED characters or items in all). Every value those checks see
  is charged, as is every output written (also into macro and `{% set %}` buffers, and
  literal text), so copying large values around in a loop runs out instead of running on.

The wall-clock deadline (`seconds`) is checked at every step as a last line: whatever work
an operation does between two steps is bounded by the value limits above.

Also: a template's source may hold MAX_TOKENS tokens (parsing and compiling happen before
any step can be counted), lists and dicts cannot be changed in place (the immutable
sandbox), `range` stops at MAX_RANGE items, and `lipsum` is not offered. Deep recursion
ends in Python's RecursionError, which callers report like any other template error.

Memory: no value a template holds is over MAX_VALUE characters (or MAX_ITEMS items), and
one operation on such values may briefly make at most _EXPANSION times that (escaping,
JSON) before its result is checked; all the values made in a render are at most
MAX_PRODUCED.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, operators, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Cycler, Joiner, Namespace, _PassArg
from markupsafe import Markup

# Why these numbers: a legitimate email template (a greeting, a table of a thousand order
# lines with half a dozen fields each, a footer) renders in about 60,000 steps and makes
# well under a megabyte. The limits leave ample room for that and cap the worst template at
# a fraction of a second of CPU.
MAX_STEPS = 200_000  # template nodes executed: under 0.3 s of CPU at the very worst
MAX_VALUE = 2_000_000  # characters of any one value: as much as a whole rendered part
MAX_ITEMS = 100_000  # items of any one list, tuple, dict or range made by a template
MAX_PRODUCED = 8_000_000  # characters and items made in all: a full part made, copied, written
MAX_INT_BITS = 14_000  # about 4,200 digits: Python refuses to print longer integers
MAX_RANGE = 10_000  # items of one range(): far more than any email loops over
MAX_TOKENS = 20_000  # of a template's source: a big HTML email has a few thousand; parsing
# and compiling this many take about 0.2 s (the 500,000 characters a payload may carry
# could hold 300,000 tokens: 3 s of CPU before the first step)
# How much larger than its input a size-neutral operation's result may be: escaping turns
# '"' into '&#34;', JSON '\U0001F600' into a twelve-character surrogate pair.
_EXPANSION = 12


# A call (a macro's above all: arguments, a new frame, a buffer) costs several nodes' time.
_CALL_STEPS = 3
_SIZES = f"{MAX_VALUE} characters, {MAX_ITEMS} items, {MAX_INT_BITS}-bit integers"


class LimitExceeded(SecurityError):
    """A render went over one of the limits; the message names it."""


# -- sizes -------------------------------------------------------------------------------


def shallow_size(value: Any) -> int:
    """Characters of a string, items of a container, 1 for anything else: what making or
    scanning the value costs at its top level."""
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset, range)):
        return len(value)
    return 1


def _items(value: Any) -> Iterable[Any] | None:
    """What a container shows when printed, or None for a leaf."""
    if isinstance(value, Mapping):
        return itertools.chain.from_iterable(value.items())
    if isinstance(value, Collection) and not isinstance(value, (str, bytes, range)):
        return value  # lists, tuples, sets, and dict views (printed with every item)
    if isinstance(value, Namespace):
        # Printed as <Namespace {...}> with every attribute (held under a mangled name).
        attrs: dict[str, Any] = object.__getattribute__(value, "_Namespace__attrs")
        return itertools.chain.from_iterable(attrs.items())
    return None


def _leaf_size(value: Any) -> int:
    """An upper bound on len(str(value)) of a leaf."""
    if isinstance(value, (str, bytes)):
        return len(value) + 3  # quotes and a b prefix inside a container's repr
    if isinstance(value, Undefined):
        return 0  # printing it raises (strict undefined), measuring it must not
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 2  # log10(2) < 0.3; and a sign
    if isinstance(value, range):
        return 40
    return 120  # floats and objects printed as <Macro 'm'>, <generator ...> and so on


def printed_size(value: Any, limit: int = MAX_VALUE) -> int:
    """An upper bound on len(str(value)), counting each reference to a shared value again
    (as printing does). Stops as soon as it is over `limit` (returning more than it) or has
    looked at MAX_ITEMS values, so measuring costs at most that much."""
    if isinstance(value, str):
        return len(value)
    total = 0
    stack: list[Any] = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_ITEMS:
            raise LimitExceeded(f"a value to print holds over {MAX_ITEMS} items")
        inner = _items(item)
        if inner is None:
            total += _leaf_size(item)
        else:
            total += 2
            for element in inner:
                total += 2
                stack.append(element)
        if total > limit:
            return total
    return total


# -- bounds of operations whose result can outgrow their inputs --------------------------

# One printf conversion: %(key)-08.3f, %*d, %%.
_PRINTF = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[#0 +-]*(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d*))?[hlL]?(?P<type>.)"
)
# The numbers of a str.format spec: width and precision (a fill character comes first).
_SPEC_NUMBERS = re.compile(r"\d+")


def printf_size(fmt: str, args: Any) -> int:
    """An upper bound on len(fmt % args), from the widths, precisions and arguments each
    conversion uses; computed before formatting so `"%999999999d" % 1` is never made."""
    positional = list(args) if isinstance(args, tuple) else [args]
    mapping = args if isinstance(args, Mapping) else {}
    total = len(fmt)
    next_arg = 0

    def take() -> Any:
        nonlocal next_arg
        value = positional[next_arg] if next_arg < len(positional) else None
        next_arg += 1
        return value

    for match in _PRINTF.finditer(fmt):
        if match["type"] == "%":
            continue
        for part in ("width", "prec"):
            number = match[part]
            if number == "*":
                taken = take()
                total += abs(taken) if isinstance(taken, int) else 0
            elif number:
                total += int(number)
        value = mapping.get(match["key"]) if match["key"] is not None else take()
        total += printed_size(value)
    return total


def _int_arg(args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str) -> int:
    value = args[index] if len(args) > index else kwargs.get(name, 0)
    return max(value, 0) if isinstance(value, int) else 0


def _str_arg(args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _replaced_size(text: str, old: Any, new: Any, count: Any) -> int:
    """len(text.replace(old, new, count)), exactly, without making it."""
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    found = text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _joined_size(separator: Any, items: Any) -> int:
    """An upper bound on len(separator.join(items)); an iterable of unknown length (a
    generator) is refused, since counting it would consume it."""
    if not isinstance(items, Collection):
        raise LimitExceeded("cannot join an iterator of unknown length: make it a |list first")
    if len(items) > MAX_ITEMS:
        return MAX_VALUE + 1
    size = len(separator) * len(items)
    for item in items:
        size += printed_size(item)
        if size > MAX_VALUE:
            break
    return size


def _translated_size(text: str, table: Any) -> int:
    if isinstance(table, Mapping):
        widest = max((printed_size(v) for v in table.values()), default=1)
        return len(text) * max(widest, 1)
    return len(text)


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits at


def _pieces(text: str | bytes, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on the items split/rsplit/splitlines return."""
    sep = _str_arg(args, kwargs, 0, "sep")
    limit = _str_arg(args, kwargs, 1, "maxsplit")
    if isinstance(text, bytes):  # counted the same way as text
        text = text.decode("latin-1")
        sep = sep.decode("latin-1") if isinstance(sep, bytes) else None
    if name == "splitlines":
        return sum(text.count(c) for c in _LINE_BREAKS) + 1
    found = text.count(sep) if isinstance(sep, str) and sep else len(text) // 2
    if isinstance(limit, int) and limit >= 0:
        found = min(found, limit)
    return found + 1


def method_size(method: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on the size of what a builtin method returns, for the methods whose
    result can outgrow their inputs; 0 for every other callable (checked on its result).
    `'x'.ljust(10**9)`, `'a\\tb'.expandtabs(10**9)`, `''.join`, `.replace('', big)` and
    `(1).to_bytes(10**9)` are refused from their arguments."""
    receiver = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(receiver, int) and name == "to_bytes":
        return _int_arg(args, kwargs, 0, "length")
    if not isinstance(receiver, (str, bytes)):
        return 0  # also Markup's methods, which wrap str's under the same names
    size = len(receiver)
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(size, _int_arg(args, kwargs, 0, "width"))
    if name == "expandtabs":
        tabs = receiver.count("\t") if isinstance(receiver, str) else receiver.count(b"\t")
        tabsize = _int_arg(args, kwargs, 0, "tabsize") if args or kwargs else 8
        return size + tabs * tabsize
    if name == "replace" and isinstance(receiver, str):
        old, new = _str_arg(args, kwargs, 0, "old"), _str_arg(args, kwargs, 1, "new")
        return _replaced_size(receiver, old, new, _str_arg(args, kwargs, 2, "count"))
    if name in ("split", "rsplit", "splitlines"):
        return _items_as_size(_pieces(receiver, name, args, kwargs))
    if name == "join" and args:
        return _joined_size(receiver, args[0])
    if name == "translate" and args and isinstance(receiver, str):
        return _translated_size(receiver, args[0])
    return 0


def binop_size(operator: str, left: Any, right: Any) -> int:
    """An upper bound on the size of `left <operator> right` for the operations that can
    outgrow their operands (repetition, concatenation, big-integer products and powers,
    printf), in the units of MAX_VALUE (items and bits scaled to them); 0 otherwise."""
    if operator == "*":
        if isinstance(right, (str, bytes, list, tuple)):
            left, right = right, left
        if isinstance(left, (str, bytes, list, tuple)) and isinstance(right, int):
            return _sequence_size(left, len(left) * max(right, 0))
        if isinstance(left, int) and isinstance(right, int):
            return _bits_as_size(left.bit_length() + right.bit_length())
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
        return _bits_as_size(left.bit_length() * max(right, 0))
    if operator == "+" and isinstance(left, (str, bytes, list, tuple)):
        return _sequence_size(left, len(left) + shallow_size(right))
    if operator == "%" and isinstance(left, (str, bytes)):
        text = left if isinstance(left, str) else left.decode("latin-1")
        return printf_size(text, right)
    return 0


def _sequence_size(kind: Any, length: int) -> int:
    """A length in the units the value limit uses: characters, or items held to MAX_ITEMS."""
    return length if isinstance(kind, (str, bytes)) else _items_as_size(length)


def _bits_as_size(bits: int) -> int:
    """An integer's size in the units the value limit uses: over MAX_INT_BITS is over."""
    return MAX_VALUE + 1 if bits > MAX_INT_BITS else bits * 3 // 10 + 1


# Filters whose result can outgrow their input, with the bound of that result computed
# from the arguments (the filtered value first).
def _indent_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    text = str(args[0]) if args and isinstance(args[0], str) else ""
    width = _str_arg(args, kwargs, 1, "width")
    pad = len(width) if isinstance(width, str) else (width if isinstance(width, int) else 4)
    return len(text) + (text.count("\n") + 1) * max(pad, 0)


def _wordwrap_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """Each line gets a wrapstring; a line holds a word (two characters with its space) or
    is `width` long, so there are at most len/2 + len/width + 1 of them."""
    text = args[0] if args and isinstance(args[0], str) else ""
    width = _int_arg(args, kwargs, 1, "width") or 79
    wrap = _str_arg(args, kwargs, 4, "wrapstring")
    lines = len(text) // 2 + len(text) // width + 1
    return len(text) + lines * (len(wrap) if isinstance(wrap, str) else 1)


def _replace_filter_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    text = args[0] if args and isinstance(args[0], str) else ""
    old, new = _str_arg(args, kwargs, 1, "old"), _str_arg(args, kwargs, 2, "new")
    return _replaced_size(text, old, new, _str_arg(args, kwargs, 3, "count"))


def _format_filter_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    if not args or not isinstance(args[0], str):
        return 0
    return printf_size(args[0], dict(kwargs) if kwargs else tuple(args[1:]))


def _batch_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    count = _int_arg(args, kwargs, 1, "linecount")
    return _items_as_size(shallow_size(args[0]) + count if args else count)


def _slice_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    count = _int_arg(args, kwargs, 1, "slices")
    return _items_as_size(shallow_size(args[0]) + count if args else count)


def _join_filter_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    separator = _str_arg(args, kwargs, 1, "d")
    return _joined_size(separator if isinstance(separator, str) else "", args[0] if args else ())


def _items_as_size(items: int) -> int:
    """An item count in the units the value limit uses: over MAX_ITEMS is over."""
    return MAX_VALUE + 1 if items > MAX_ITEMS else items


def _center_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    return _int_arg(args, kwargs, 1, "width") + (shallow_size(args[0]) if args else 0)


def _sum_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """`sum` adds numbers: a list `start` would make it concatenate lists (in quadratic
    time, to the product of the sizes), so it is refused."""
    start = _str_arg(args, kwargs, 2, "start")
    if start is not None and not isinstance(start, (int, float)):
        raise LimitExceeded("the sum filter adds numbers only (start must be a number)")
    return 0


def _list_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    return _items_as_size(shallow_size(args[0]) if args else 0)


MAX_INDENT = 8  # for |tojson(indent=...): every line of the JSON gets it once per level


def _tojson_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    indent = _str_arg(args, kwargs, 1, "indent")
    width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if width > MAX_INDENT:
        raise LimitExceeded(f"the tojson filter's indent is over {MAX_INDENT}")
    return 0


_FILTER_SIZES: dict[str, Callable[[Sequence[Any], Mapping[str, Any]], int]] = {
    "tojson": _tojson_size,
    "sum": _sum_size,
    "list": _list_size,
    "center": _center_size,
    "indent": _indent_size,
    "wordwrap": _wordwrap_size,
    "replace": _replace_filter_size,
    "format": _format_filter_size,
    "batch": _batch_size,
    "slice": _slice_size,
    "join": _join_filter_size,
}
# Filters that never turn a container into text; every other filter may (`x|upper` of a
# list prints it), so a container given to one is measured as printed first.
_STRUCTURAL_FILTERS = frozenset(
    {"length", "count", "first", "last", "random", "min", "max", "sort", "dictsort",
     "unique", "groupby", "map", "select", "reject", "selectattr", "rejectattr", "reverse",
     "list", "items", "default", "d", "attr", "batch", "slice", "sum", "abs", "int",
     "float", "round", "filesizeformat"}
)  # fmt: skip
# Filters that take the same time whatever their input's size; every other filter is
# charged a step per item of a container (each may cost a Python call, as `groupby`'s
# attribute lookups do) and per 4 characters of a string (`title` and `striptags` work
# word by word in Python), and `urlize` (regular expressions per word) per character.
_CONSTANT_FILTERS = frozenset(
    {"length", "count", "first", "last", "random", "default", "d", "attr", "safe", "abs",
     "int", "float", "round", "filesizeformat"}
)  # fmt: skip
# `groupby` looks up an attribute and builds a group per item: about 8 steps' worth.
_CHARS_PER_STEP = {"urlize": 1}
_STEPS_PER_ITEM = {"groupby": 8}


def filter_cost(name: str, value: Any, kwargs: Mapping[str, Any]) -> int:
    """The steps a filter is charged before it runs on `value`; looking up an attribute
    of every item (`sort(attribute=...)`, `map(attribute=...)`) costs 4 steps an item."""
    if name in _CONSTANT_FILTERS:
        return 1
    if isinstance(value, (str, bytes)):
        return 1 + len(value) // _CHARS_PER_STEP.get(name, 4)
    per_item = _STEPS_PER_ITEM.get(name, 4 if "attribute" in kwargs else 1)
    return 1 + shallow_size(value) * per_item


# -- the environment ---------------------------------------------------------------------


class Budget:
    """What one render may still spend; raises LimitExceeded naming the limit it is over."""

    __slots__ = ("deadline", "produced", "seconds", "steps")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.steps = MAX_STEPS
        self.produced = MAX_PRODUCED

    def step(self, cost: int, chars: int = 0) -> None:
        """Charge `cost` steps and `chars` characters of literal text (as produced data:
        writing a constant is cheap, holding it in a buffer is not)."""
        self.steps -= cost
        if chars:
            self.allow(chars, "literal text")
        if self.steps < 0:
            raise LimitExceeded(f"the template ran over its budget of {MAX_STEPS} steps")
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"rendering took over {self.seconds:g}s")

    def allow(self, size: int, what: str) -> None:
        """Refuse a value of `size` before it is made, and charge it when it may be."""
        if size > MAX_VALUE:
            raise LimitExceeded(f"{what} would be over the size limit ({_SIZES})")
        self.produced -= size
        if self.produced < 0:
            raise LimitExceeded(f"the template made over {MAX_PRODUCED} characters in all")

    def made(self, value: Any, what: str) -> Any:
        """Check and charge a value that was just made; returns it. Iterators (a `map`
        filter's generator) are drawn into a list here, so that their size is known."""
        if isinstance(value, Iterator) and not isinstance(value, (str, bytes)):
            value = list(itertools.islice(value, MAX_ITEMS + 1))
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > MAX_INT_BITS:
                raise LimitExceeded(f"{what} is an integer over {MAX_INT_BITS} bits")
            return value
        if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > MAX_ITEMS:
            raise LimitExceeded(f"{what} would hold more than the limit of {MAX_ITEMS} items")
        self.allow(shallow_size(value), what)
        return value


def _static_cost(body: Iterable[nodes.Node]) -> tuple[int, int]:
    """The nodes (at least 1) and literal characters of a statement list, not counting
    the statement lists nested in it: each charges its own as it runs."""
    count = chars = 0
    stack = list(body)
    while stack:
        node = stack.pop()
        count += 1
        if isinstance(node, nodes.TemplateData):
            chars += len(node.data)
        elif isinstance(node, nodes.Const) and isinstance(node.value, (str, bytes)):
            chars += len(node.value)
        for field, value in node.iter_fields():
            if isinstance(node, nodes.Stmt) and field in ("body", "else_"):
                continue
            if isinstance(value, nodes.Node):
                stack.append(value)
            elif isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, nodes.Node))
    return max(count, 1), chars


def _charged(test: nodes.Node) -> bool:
    """Whether a loop's test already starts with the charge visit_For puts before it."""
    if not isinstance(test, nodes.And) or not isinstance(test.left, nodes.Call):
        return False
    called = test.left.node
    return isinstance(called, nodes.EnvironmentAttribute) and called.name == "budget_steps"


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with the budget's checkpoints compiled in: a step charge at
    the start of every statement list and for every item a loop's `if` looks at, a size
    check on `~` and on what a comparison scans."""

    def blockvisit(self, nodes: Iterable[nodes.Node], frame: Frame) -> None:
        body = list(nodes)
        count, chars = _static_cost(body)
        if chars:
            self.writeline(f"environment.budget.step({count}, {chars})")
        else:
            self.writeline(f"environment.budget.step({count})")
        super().blockvisit(body, frame)

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        """A loop's `if` runs for every item, also those it skips (whose body never runs to
        charge them), so it is prefixed with `environment.budget_steps(<its size>) and`."""
        test = node.test
        if test is not None and not _charged(test):
            cost = nodes.Const(_static_cost([test])[0])
            charge = nodes.Call(nodes.EnvironmentAttribute("budget_steps"), [cost], [], None, None)
            node.test = nodes.And(charge, test)
        super().visit_For(node, frame)

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.bounded_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    @optimizeconst
    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        """Jinja writes slices as Python slicing, past the sandbox: here they go through
        `environment.sliced`, which charges the copy a slice makes."""
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.sliced(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for i, part in enumerate((node.arg.start, node.arg.stop, node.arg.step)):
            self.write(", " if i else "")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write("))")

    def visit_Operand(self, node: nodes.Operand, frame: Frame) -> None:
        self.write(f" {operators[node.op]} environment.scanned(")
        self.visit(node.expr, frame)
        self.write(")")


class _BoundedFormatter(SandboxedFormatter):
    """str.format for templates: each field's width, precision and value are counted
    before the field is formatted, over the whole format string."""

    def __init__(self, env: BoundedEnvironment, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._budget = env.budget
        self._size = 0

    def vformat(self, format_string: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._size = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        if len(format_spec) > 40:
            raise LimitExceeded("a format spec over 40 characters")
        widths = sum(int(n) for n in _SPEC_NUMBERS.findall(format_spec))
        self._size += widths + printed_size(value)
        if self._size > MAX_VALUE:
            raise LimitExceeded(f"str.format would be over the size limit ({_SIZES})")
        return super().format_field(value, format_spec)


class _BoundedEscapeFormatter(_BoundedFormatter, SandboxedEscapeFormatter):
    pass


def _bounded_range(budget: Budget) -> Callable[..., range]:
    def bounded_range(*args: int) -> range:
        made = range(*args)
        if len(made) > MAX_RANGE:
            raise LimitExceeded(f"range() of {len(made)} items is over the limit of {MAX_RANGE}")
        budget.allow(len(made), "range()")
        return made

    return bounded_range


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with every render bounded (see the module docstring). One
    environment per render: it holds that render's budget."""

    code_generator_class = BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *, autoescape: bool, seconds: float) -> None:
        self.budget = Budget(seconds)
        super().__init__(
            undefined=jinja2.StrictUndefined,
            autoescape=autoescape,
            keep_trailing_newline=True,
            finalize=self._output,
        )
        self.globals = {
            "range": _bounded_range(self.budget),
            "dict": dict,
            "namespace": Namespace,
            "cycler": Cycler,
            "joiner": Joiner,
        }
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}
        self.tests = {name: self._bounded_test(test) for name, test in self._tests()}

    # The hooks the generated code calls.

    def _output(self, value: Any) -> Any:
        """Every value written out, at the top or into a buffer, is measured and charged."""
        self.budget.allow(printed_size(value), "an output")
        return value

    def bounded_concat(self, join: Callable[[Iterable[Any]], str], parts: tuple[Any, ...]) -> str:
        self.budget.step(1)
        self.budget.allow(sum(printed_size(part) for part in parts), "a ~ concatenation")
        return join(parts)

    def scanned(self, value: Any) -> Any:
        """A comparison's right side: `in` and `==` scan it, so its size is a cost."""
        self.budget.step(1 + shallow_size(value) // 64)
        return value

    def budget_steps(self, cost: int) -> bool:
        """True, after charging `cost` steps (see BoundedCodeGenerator.visit_For)."""
        self.budget.step(cost)
        return True

    # The sandbox's own hooks.

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.budget.step(1)
        self.budget.allow(binop_size(operator, left, right), f"the result of {operator}")
        return self.budget.made(super().call_binop(context, operator, left, right), operator)

    def call(
        __self,  # Jinja's own signature: a template's keyword arguments may be "self"
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        budget = __self.budget
        receiver = shallow_size(getattr(__obj, "__self__", None))
        # A method scans its receiver at C speed; spread arguments (`m(*items)`) are
        # copied and bound one by one.
        budget.step(_CALL_STEPS + receiver // 64 + (len(args) + len(kwargs)) // 8)
        what = f"a call of {getattr(__obj, '__name__', type(__obj).__name__)}"
        budget.allow(method_size(__obj, args, kwargs), what)
        return budget.made(super().call(__context, __obj, *args, **kwargs), what)

    def sliced(self, obj: Any, part: slice) -> Any:
        self.budget.step(1)
        return self.budget.made(obj[part], "a slice")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """The sandbox's str.format wrapper, with formatters that count field widths."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        owner: str = value.__self__
        formatter: _BoundedFormatter
        if isinstance(owner, Markup):
            formatter = _BoundedEscapeFormatter(self, escape=owner.escape)
        else:
            formatter = _BoundedFormatter(self)
        is_map = value.__name__ == "format_map"

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return functools.update_wrapper(bounded_format, value)

    # Filters and tests.

    def _bounded_filter(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        budget = self.budget
        passes = 1 if _PassArg.from_obj(fn) is not None else 0
        bound = _FILTER_SIZES.get(name)
        structural = name in _STRUCTURAL_FILTERS
        what = f"the {name} filter"

        @functools.wraps(fn)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            given = args[passes:]
            value = given[0] if given else None
            if isinstance(value, Iterator) and not isinstance(value, (str, bytes)):
                value = budget.made(value, what)
                given = (value, *given[1:])
                args = (*args[:passes], *given)
            budget.step(filter_cost(name, value, kwargs))
            if not structural and not isinstance(value, str):
                budget.allow(printed_size(value) * _EXPANSION, what)
            if bound is not None:
                budget.allow(bound(given, kwargs), what)
            return budget.made(fn(*args, **kwargs), what)

        return bounded

    def _tests(self) -> Iterator[tuple[str, Callable[..., Any]]]:
        """Jinja's tests (its stubs type them as the bare `function`)."""
        tests: Mapping[str, Any] = self.tests
        return iter(tests.items())

    def _bounded_test(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        budget = self.budget

        @functools.wraps(fn)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            budget.step(1 + sum(shallow_size(a) for a in args) // 64)
            return fn(*args, **kwargs)

        return bounded


_PARSER = ImmutableSandboxedEnvironment()


def _count_tokens(source: str) -> None:
    """Refuse a template of over MAX_TOKENS tokens, reading no further than that: parsing
    and compiling cost CPU in proportion to the tokens, before any budget can count."""
    tokens = itertools.islice(_PARSER.lexer.tokeniter(source, None), MAX_TOKENS + 1)
    if sum(1 for _ in tokens) > MAX_TOKENS:
        raise LimitExceeded(f"the template has over {MAX_TOKENS} tokens")


def check_syntax(source: str) -> None:
    """Parse a template (at submit) without compiling or running it: TemplateSyntaxError
    for bad syntax, for too many tokens, and for nesting too deep to parse (which Python
    reports as recursion)."""
    try:
        _count_tokens(source)
        _PARSER.parse(source)
    except LimitExceeded as exc:
        raise jinja2.TemplateSyntaxError(str(exc), 1) from None
    except RecursionError:
        raise jinja2.TemplateSyntaxError("the template nests too deeply", 1) from None


def render_bounded(
    source: str, context: Mapping[str, Any], *, autoescape: bool, seconds: float
) -> Iterator[str]:
    """Render `source` under the limits, as the chunks Jinja produces (compiling is
    charged to the same budget)."""
    _count_tokens(source)
    env = BoundedEnvironment(autoescape=autoescape, seconds=seconds)
    return env.from_string(source).generate(dict(context))


__all__ = [
    "MAX_ITEMS",
    "MAX_PRODUCED",
    "MAX_RANGE",
    "MAX_STEPS",
    "MAX_TOKENS",
    "MAX_VALUE",
    "BoundedEnvironment",
    "LimitExceeded",
    "check_syntax",
    "printed_size",
    "render_bounded",
]
