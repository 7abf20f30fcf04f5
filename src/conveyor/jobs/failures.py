"""What an attempt's failure tells the job's owner: the error text kept on the job
(`describe`) and the traceback kept with the attempt (`format_traceback`).

Both are shown to the owner (GetJob's `error`, ListJobAttempts' `traceback`), who is not the
operator, so neither may carry what only the server should know:

- **File names** are shown relative to the importable package a frame's module belongs to
  (`conveyor/builtins/csv_export.py`, `mypkg/jobs.py`, `sqlalchemy/engine/base.py`), never
  as the absolute path of a checkout, a virtualenv or site-packages. A file that is not a
  module of any package (a script, exec'd code) is shown by its base name. An `OSError`'s
  file names are shown by their base names too.
- **Database errors** keep the driver's message and lose the statement: SQLAlchemy's
  `StatementError` appends `[SQL: …]`, `[parameters: …]` and a link to its docs, and a
  driver's own message continues with `LINE 1: <the statement>` or `DETAIL: <the row's
  values>`; only the first line of the driver's message is kept.

Every exception of a chain (`raise … from …`, or an error while handling another) is shown
under the same rules, so a `PermanentError` raised from a database error does not leak the
statement through its cause.
"""

from __future__ import annotations

import linecache
import os
import traceback
from types import TracebackType

from sqlalchemy.exc import StatementError

# Longest error text kept on a job, longest traceback kept with an attempt, and how many of
# the innermost frames each exception of a chain shows.
MAX_ERROR_CHARS = 4000
MAX_TRACEBACK_CHARS = 8000
TRACEBACK_FRAMES = 8
# Modules of the DB-API drivers whose messages may continue with the statement or row values.
_DRIVERS = frozenset({"psycopg", "psycopg2", "psycopg_pool", "sqlite3", "aiosqlite", "asyncpg"})
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def describe(exc: BaseException) -> str:
    """The error text kept on the job: type, message and the innermost frame, as
    `RuntimeError: boom (at mypkg/jobs.py:12)`."""
    frames = _frames(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    text = f"{type(exc).__name__}: {message(exc)}{where}"
    return text[:MAX_ERROR_CHARS]


def format_traceback(exc: BaseException) -> str:
    """The traceback kept with the attempt: the last frames of each exception in the chain,
    formatted as Python does, with file names and messages under this module's rules."""
    chain, links = _chain(exc)
    parts: list[str] = []
    for i in range(len(chain) - 1, -1, -1):
        current = chain[i]
        frames = _frames(current.__traceback__)[-TRACEBACK_FRAMES:]
        if frames:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.StackSummary.from_list(frames).format())
        parts.append(_headline(current))
        if i > 0:
            parts.append(links[i - 1])
    return "".join(parts)[-MAX_TRACEBACK_CHARS:]


def message(exc: BaseException) -> str:
    """The exception's message without the server's file paths or SQL statements."""
    if isinstance(exc, StatementError):
        # args[0] is the message alone; str() would append the statement and parameters.
        first = exc.args[0] if exc.args else ""
        return _first_line(first if isinstance(first, str) else str(exc.orig or ""))
    if type(exc).__module__.partition(".")[0] in _DRIVERS:
        return _first_line(str(exc))
    if isinstance(exc, OSError) and exc.filename is not None:
        return _os_message(exc)
    return str(exc)


def shown_file(filename: str, module: str | None) -> str:
    """A frame's file as the owner sees it: its path within the package of `module` (the
    frame's module name), else its base name; `<string>`-like names stay as they are."""
    if filename.startswith("<") and filename.endswith(">"):
        return filename
    base = os.path.basename(filename)
    if not module or module == "__main__":
        return base
    parts = module.split(".")
    stem = os.path.splitext(base)[0]
    if stem == "__init__":
        return "/".join([*parts, base])
    if stem == parts[-1]:
        return "/".join([*parts[:-1], base])
    return base


def _frames(tb: TracebackType | None) -> list[traceback.FrameSummary]:
    """The traceback's frames, outermost first, with their files as `shown_file` shows them."""
    frames = []
    while tb is not None:
        frame, code = tb.tb_frame, tb.tb_frame.f_code
        spec = frame.f_globals.get("__spec__")
        module = getattr(spec, "name", None) or frame.f_globals.get("__name__")
        line = linecache.getline(code.co_filename, tb.tb_lineno, frame.f_globals).strip()
        shown = shown_file(code.co_filename, module if isinstance(module, str) else None)
        frames.append(
            traceback.FrameSummary(shown, tb.tb_lineno, code.co_name, lookup_line=False, line=line)
        )
        tb = tb.tb_next
    return frames


def _chain(exc: BaseException) -> tuple[list[BaseException], list[str]]:
    """The exception and those it was raised from or while handling, innermost first, and
    the sentence linking each to the one before it (as Python prints them)."""
    chain: list[BaseException] = []
    links: list[str] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        if current.__cause__ is not None:
            links.append(_CAUSE)
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            links.append(_CONTEXT)
            current = current.__context__
        else:
            current = None
    return chain, links


def _headline(exc: BaseException) -> str:
    """`module.Type: message`, as `traceback.format_exception_only` writes it."""
    name = type(exc).__qualname__
    if type(exc).__module__ not in ("__main__", "builtins"):
        name = f"{type(exc).__module__}.{name}"
    text = message(exc)
    return f"{name}: {text}\n" if text else f"{name}\n"


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def _os_message(exc: OSError) -> str:
    """OSError's own wording, with its file names reduced to their base names."""
    names = [_base_name(exc.filename)]
    if exc.filename2 is not None:
        names.append(_base_name(exc.filename2))
    if exc.errno is None or exc.strerror is None:
        return f"{exc.strerror or 'error'}: {' -> '.join(repr(n) for n in names)}"
    return f"[Errno {exc.errno}] {exc.strerror}: {' -> '.join(repr(n) for n in names)}"


def _base_name(name: object) -> str:
    if isinstance(name, str | bytes):
        return os.path.basename(os.fsdecode(name))
    return str(name)  # a file descriptor
