"""The built-in job type `email.send`: one email, rendered from templates, sent over SMTP.

Payload (checked at submit; a bad one is INVALID_ARGUMENT naming each bad field):

    to           address or list of addresses, 1 to 100 (with cc and bcc: 100 in all)
    cc, bcc      lists of addresses (bcc recipients get the mail but no header names them)
    from         the sender (default CONVEYOR_SMTP_FROM); also the envelope sender
    reply_to     one address
    subject      Jinja2 template of the subject (at most 998 characters)
    text, html   Jinja2 templates of the plain-text and HTML bodies (both: an alternative)
    context      the values the templates see: {"name": "Ada"} for `Hello {{ name }}`
    template     a template from CONVEYOR_EMAIL_TEMPLATES_DIR: the files <name>.subject,
                 <name>.txt and <name>.html, any of which may be missing; a field the
                 payload gives itself wins over the file. Names: [a-z0-9_.-], no folders.
    attachments  at most 20, each one of
                   {"job_id": "...", "artifact": "report.csv"}  an artifact of one of your jobs
                   {"key": "invoices/2026-11.pdf"}               one of your own files
                 with optional "filename" and "content_type" (else guessed from the name)
    headers      at most 20 extra headers ({"List-Unsubscribe": "<...>"}); they cannot
                 replace From, To, Subject, Message-ID, Date, Content-* or other structure
    links        at most 20 download links the templates see beside `context`, by name:
                   {"download": {"job_id": "...", "artifact": "bundle.zip"}}
                 makes `{{ download }}` a link to that artifact of one of your jobs (the
                 link GetJobResult would give), made when the mail is sent, so a job that
                 depends on the one making the artifact can mail it; it works for
                 "expires_seconds" (60 to 604800, default CONVEYOR_ARTIFACT_URL_SECONDS).
                 Names are identifiers, and not also keys of `context`

An address is `user@example.com` or `Ada <ada@example.com>`; the address itself must be
ASCII (an international domain in its xn-- form), the display name may be any text. The
payload needs a subject or a template, and a text, an html or a template. Templates run
in Jinja2's sandbox with strict variables: a variable the context lacks fails the job
(permanently) with its name. HTML is autoescaped; text and subject are not. Templates
cannot include others. Each render is bounded (conveyor.builtins.template_sandbox): at
most 20,000 tokens of source, 200,000 steps, values of 2,000,000 characters or 100,000
items, 10 s; a template over a limit fails the job (permanently) naming the limit.

Result: `{"message_id": "<job id@sender's domain>", "accepted": [addresses],
"refused": {address: {"code": 550, "message": "..."}}}`: a mail the server took for some
recipients but not all succeeds, and lists the others under `refused`.

Retries and duplicates. SMTP gives at-least-once delivery, not exactly-once: if the
connection drops after the server accepted the message but before its reply arrived, the
attempt fails and the next one sends the mail again. `ctx.once()` is not used on purpose:
its marker is committed before the send, so a worker that died between the marker and the
send would lose the mail for good. Instead every attempt of a job sends the same Message-ID,
derived from the job id, by which receivers and mail stores can recognise the duplicate.

What is retried (5 attempts, backoff from 1 minute up to 30, long enough for greylisting):
connection failures, timeouts and 4xx replies. What fails at once (DEAD): 5xx replies
(every recipient refused, sender refused, message refused, authentication failed), a
server certificate that does not verify, a server without STARTTLS when it is required,
missing variables or template files, attachments or links that are missing or not yours, attachments
over CONVEYOR_MAX_ATTACHMENT_BYTES in total, and settings that would send the SMTP password
in clear text to a host other than loopback (set CONVEYOR_SMTP_STARTTLS or CONVEYOR_SMTP_SSL).

TLS is verified against the system's roots, or the PEM bundle in CONVEYOR_SMTP_CA_FILE;
there is no way to turn verification off. Progress: 10 rendered, 50 attachments loaded,
100 sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Self

import aiosmtplib
import jinja2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from conveyor.builtins.template_sandbox import LimitExceeded, check_syntax, render_bounded
from conveyor.config import Settings
from conveyor.errors import InvalidArgument, NotFound
from conveyor.handlers.context import JobContext
from conveyor.handlers.registry import PermanentError, handler, payload_violations
from conveyor.jobs.artifacts import ArtifactName, guess_type, owner_file_key
from conveyor.jobs.retry import retry
from conveyor.objects import ObjectNotFound

MAX_RECIPIENTS = 100
MAX_ATTACHMENTS = 20
MAX_LINKS = 20
MAX_LINK_SECONDS = 7 * 86_400  # S3's longest presigned link
MAX_HEADERS = 20
MAX_SUBJECT = 998  # RFC 5322's longest line
MAX_BODY = 500_000  # characters of a text or html template in the payload
MAX_TEMPLATE_FILE = 1 << 20  # bytes of one template file
MAX_RENDERED = 2_000_000  # characters a rendered part may grow to
RENDER_SECONDS = 10.0  # longest a render may take (checked at every step of the template)

# One address: a dot-atom local part and a host name (one label allowed: user@localhost).
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_SPEC = re.compile(rf"(?P<local>{_LOCAL})@(?P<domain>{_LABEL}(?:\.{_LABEL})*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEMPLATE_NAME = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,99}")
_LINK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_JOB_ID = r"^[A-Za-z0-9-]{1,64}$"
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,75}")
_CONTENT_TYPE = r"^[A-Za-z0-9][A-Za-z0-9_!#$&^.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9_!#$&^.+-]{0,62}$"
# Headers the message's own structure owns: letting a payload set them would forge the
# sender, add hidden recipients, or break the MIME tree.
_RESERVED_HEADERS = frozenset(
    {"from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
     "mime-version", "return-path", "received", "dkim-signature"}
)  # fmt: skip
_RESERVED_PREFIXES = ("content-", "resent-")


# -- the payload -------------------------------------------------------------------------


def _check_address(value: str) -> str:
    """One mailbox, `a@b.c` or `Name <a@b.c>`. `parseaddr` alone quietly keeps the first of
    several addresses and accepts a bare word, so the address it finds must also be the only
    one and look like local@domain; CR/LF (header injection) is refused outright."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (CR, LF, ...)")
    if len(value) > 320:
        raise ValueError("must be at most 320 characters")
    _, addr = email.utils.parseaddr(value)
    if len(email.utils.getaddresses([value])) != 1:
        raise ValueError("must be a single address")
    match = _ADDR_SPEC.fullmatch(addr)
    if match is None or len(addr) > 254 or len(match["local"]) > 64:
        raise ValueError("is not an email address like user@example.com or Name <user@example.com>")
    return value.strip()


def _one_or_many(value: Any) -> Any:
    """`"to": "a@b.c"` is taken as a list of one."""
    return [value] if isinstance(value, str) else value


EmailAddress = Annotated[str, AfterValidator(_check_address)]
AddressList = Annotated[
    list[EmailAddress], BeforeValidator(_one_or_many), Field(max_length=MAX_RECIPIENTS)
]

# Templates are checked for syntax at submit and rendered at run time in a bounded sandbox
# (template_sandbox): it keeps templates from reaching Python internals and from spending
# more than a small, fixed amount of CPU and memory; its StrictUndefined makes a missing
# variable an error instead of an empty string in someone's inbox.


def _check_syntax(source: str | None) -> str | None:
    """A template that cannot parse is refused at submit rather than failing every attempt."""
    if source is not None:
        try:
            check_syntax(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from None
    return source


class Attachment(BaseModel):
    """An artifact of one of the owner's jobs (`job_id` + `artifact`), or one of the owner's
    own files (`key`, a path under files/<owner>/)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, pattern=_JOB_ID)
    artifact: ArtifactName | None = None
    key: str | None = None
    filename: str | None = Field(None, min_length=1, max_length=255)
    content_type: str | None = Field(None, pattern=_CONTENT_TYPE)

    @field_validator("key")
    @classmethod
    def _file_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                owner_file_key("owner", value)
            except InvalidArgument as exc:
                raise ValueError(exc.violations[0].description) from None
        return value

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, value: str | None) -> str | None:
        if value is not None and (_CONTROL.search(value) or "/" in value or "\\" in value):
            raise ValueError("must be a file name without folders or control characters")
        return value

    @field_validator("content_type")
    @classmethod
    def _leaf_type(cls, value: str | None) -> str | None:
        if value is not None and value.lower().split("/")[0] in ("multipart", "message"):
            raise ValueError("cannot be multipart/* or message/*")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        from_job = self.job_id is not None or self.artifact is not None
        if from_job and self.key is not None:
            raise ValueError("give either job_id and artifact, or key, not both")
        if from_job and (self.job_id is None or self.artifact is None):
            raise ValueError("an artifact needs both job_id and artifact")
        if not from_job and self.key is None:
            raise ValueError("give job_id and artifact (a job's artifact) or key (your file)")
        return self

    @property
    def name(self) -> str:
        """The file name the recipient sees."""
        if self.filename:
            return self.filename
        return self.artifact or PurePosixPath(self.key or "attachment").name


class Link(BaseModel):
    """A download link to an artifact of one of the owner's jobs, made at send time."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=_JOB_ID)
    artifact: ArtifactName
    expires_seconds: int | None = Field(None, ge=60, le=MAX_LINK_SECONDS)


def _check_link_names(value: dict[str, Link]) -> dict[str, Link]:
    """A link is a template variable: its name must be one `{{ name }}` can say."""
    for name in value:
        if not _LINK_NAME.fullmatch(name):
            raise ValueError(f"link name {name[:80]!r}: letters, digits and '_', not first a digit")
    return value


def _check_headers(value: dict[str, str]) -> dict[str, str]:
    """Extra headers may add information, never rewrite the message's structure or smuggle
    a second header in through a line break."""
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name[:80]!r}: use letters, digits and '-'")
        lower = name.lower()
        if lower in _RESERVED_HEADERS or lower.startswith(_RESERVED_PREFIXES):
            raise ValueError(f"header {name} is set by email.send itself")
        if _CONTROL.search(text) or len(text) > 998:
            raise ValueError(f"header {name}: at most 998 characters, no CR, LF or controls")
    return value


class EmailPayload(BaseModel):
    """The payload of `email.send`; see the module docstring."""

    model_config = ConfigDict(extra="forbid")

    to: Annotated[AddressList, Field(min_length=1)]
    cc: AddressList = []
    bcc: AddressList = []
    from_: EmailAddress | None = Field(None, alias="from")
    reply_to: EmailAddress | None = None
    subject: Annotated[str | None, AfterValidator(_check_syntax)] = Field(
        None, max_length=MAX_SUBJECT
    )
    text: Annotated[str | None, AfterValidator(_check_syntax)] = Field(None, max_length=MAX_BODY)
    html: Annotated[str | None, AfterValidator(_check_syntax)] = Field(None, max_length=MAX_BODY)
    context: dict[str, Any] = {}
    template: str | None = Field(None, max_length=100)
    attachments: list[Attachment] = Field([], max_length=MAX_ATTACHMENTS)
    links: Annotated[dict[str, Link], AfterValidator(_check_link_names)] = Field(
        {}, max_length=MAX_LINKS
    )
    headers: Annotated[dict[str, str], AfterValidator(_check_headers)] = Field(
        {}, max_length=MAX_HEADERS
    )

    @field_validator("template")
    @classmethod
    def _template_name(cls, value: str | None) -> str | None:
        """A bare name, so it can only ever name files directly in the templates folder."""
        if value is not None and not _TEMPLATE_NAME.fullmatch(value):
            raise ValueError("must be a template name: a-z, 0-9, '_', '.', '-', no folders")
        return value

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value):
            raise ValueError("must be one line (no CR or LF)")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.subject is None and self.template is None:
            raise ValueError("give a subject or a template")
        if self.text is None and self.html is None and self.template is None:
            raise ValueError("give a text, an html or a template")
        if len(self.to) + len(self.cc) + len(self.bcc) > MAX_RECIPIENTS:
            raise ValueError(f"to, cc and bcc may name at most {MAX_RECIPIENTS} recipients")
        both = sorted(self.links.keys() & self.context.keys())
        if both:
            raise ValueError(f"{', '.join(both)}: a name of links cannot also be one of context")
        return self


# -- rendering ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str | None
    html: str | None


_TEMPLATE_SUFFIXES = {"subject": ".subject", "text": ".txt", "html": ".html"}


def _template_files(name: str, settings: Settings) -> dict[str, str]:
    """The parts of a named template that exist, as source text. The name was checked at
    submit (no '/' can reach here), and the path is checked again to stay in the folder."""
    if not settings.email_templates_dir:
        raise PermanentError(f"template {name!r}: no CONVEYOR_EMAIL_TEMPLATES_DIR is configured")
    root = Path(settings.email_templates_dir)
    parts: dict[str, str] = {}
    for part, suffix in _TEMPLATE_SUFFIXES.items():
        path = root / f"{name}{suffix}"
        if path.parent != root or not path.is_file():
            continue
        if path.stat().st_size > MAX_TEMPLATE_FILE:
            raise PermanentError(f"template file {path.name} is over {MAX_TEMPLATE_FILE} bytes")
        try:
            parts[part] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PermanentError(f"template file {path.name} is not UTF-8") from None
    if not parts:
        raise PermanentError(f"there is no template {name!r} (no .subject, .txt or .html)")
    return parts


def _render_one(source: str, context: dict[str, Any], part: str) -> str:
    """Render one part. Everything a template can do wrong is the payload's fault and would
    fail again, so it is permanent. The sandbox bounds the work and every value; the output
    is also checked in chunks, as it grows, against the size a part may have."""
    chunks: list[str] = []
    size = 0
    try:
        for chunk in render_bounded(
            source, context, autoescape=part == "html", seconds=RENDER_SECONDS
        ):
            size += len(chunk)
            if size > MAX_RENDERED:
                raise PermanentError(f"{part}: renders to more than {MAX_RENDERED} characters")
            chunks.append(chunk)
    except PermanentError:
        raise
    except LimitExceeded as exc:
        raise PermanentError(f"{part}: {exc}") from None
    except RecursionError:
        raise PermanentError(
            f"{part}: the template nests too deeply (macro calls, recursive loops or values)"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise PermanentError(f"{part}: syntax error on line {exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise PermanentError(f"{part}: {exc.message} in the context") from None
    except Exception as exc:
        raise PermanentError(f"{part}: {type(exc).__name__}: {exc}") from None
    return "".join(chunks)


def render(payload: EmailPayload, settings: Settings) -> Rendered:
    """The subject and bodies, from the payload's own templates over the named template's
    files. Blocking (it reads files and may take a while): run it in a thread."""
    sources = _template_files(payload.template, settings) if payload.template else {}
    for part in _TEMPLATE_SUFFIXES:
        given = getattr(payload, part)
        if given is not None:
            sources[part] = given
    done = {part: _render_one(src, payload.context, part) for part, src in sources.items()}
    # A subject is one line: a template file's trailing newline, or a value with line breaks,
    # becomes spaces rather than a second header line.
    subject = " ".join(_CONTROL.sub(" ", done.get("subject", "")).split())
    if not subject:
        raise PermanentError("the subject is empty (give one, or a template with <name>.subject)")
    if done.get("text") is None and done.get("html") is None:
        raise PermanentError(f"template {payload.template!r} has neither a .txt nor an .html")
    return Rendered(subject, done.get("text"), done.get("html"))


# -- attachments -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Located:
    """An attachment found and sized, not yet read."""

    attachment: Attachment
    size: int
    stored_type: str
    read: Callable[[], Awaitable[bytes]]


async def _locate(attachment: Attachment, ctx: JobContext) -> Located:
    """Find an attachment and its size without reading it, so the total can be checked
    before any bytes are loaded. Something missing, or someone else's, is NotFound either
    way (the message does not tell the two apart) and permanent: it will not appear."""
    if attachment.key is not None:
        return await _locate_file(attachment, attachment.key, ctx)
    job_id, name = attachment.job_id or "", attachment.artifact or ""
    try:
        found = await ctx.artifacts.find(name, job_id=job_id)
    except NotFound as exc:
        raise PermanentError(f"attachment: {exc.message}") from None

    async def read() -> bytes:
        try:
            return await ctx.artifacts.read(name, job_id=job_id)
        except NotFound as exc:
            raise PermanentError(f"attachment: {exc.message}") from None

    return Located(attachment, found.size, found.content_type, read)


async def _locate_file(attachment: Attachment, path: str, ctx: JobContext) -> Located:
    if not ctx.owner:
        raise PermanentError("this job has no owner, so it has no files to attach")
    store = ctx.artifacts.sync.store
    key = owner_file_key(ctx.owner, path)
    stored = await asyncio.to_thread(store.stat, key)
    if stored is None:
        raise PermanentError(f"attachment: you have no file {path!r}")

    async def read() -> bytes:
        try:
            return await asyncio.to_thread(store.read, key)
        except ObjectNotFound:
            raise PermanentError(f"attachment: you have no file {path!r}") from None

    return Located(attachment, stored.size, stored.content_type, read)


def _content_type(located: Located) -> tuple[str, str]:
    """The type given in the payload, else the stored one, else a guess from the name."""
    chosen = located.attachment.content_type
    if not chosen and located.stored_type not in ("", "application/octet-stream"):
        chosen = located.stored_type.split(";")[0].strip().lower()
    if not chosen or "/" not in chosen or chosen.startswith(("multipart/", "message/")):
        chosen = guess_type(located.attachment.name)
    maintype, _, subtype = chosen.partition("/")
    return maintype, subtype


async def load_attachments(
    payload: EmailPayload, ctx: JobContext, limit: int
) -> list[tuple[Attachment, bytes, tuple[str, str]]]:
    """Every attachment's bytes and MIME type; over `limit` bytes in total is permanent,
    checked from the sizes before reading and again on what was read (an object can be
    replaced in between)."""
    located = [await _locate(a, ctx) for a in payload.attachments]
    total = sum(item.size for item in located)
    if total > limit:
        raise PermanentError(f"the attachments total {total} bytes; the limit is {limit}")
    loaded = []
    for item in located:
        data: bytes = await item.read()
        total += len(data) - item.size
        if total > limit:
            raise PermanentError(f"the attachments total over {limit} bytes")
        loaded.append((item.attachment, data, _content_type(item)))
    return loaded


async def make_links(payload: EmailPayload, ctx: JobContext, settings: Settings) -> dict[str, str]:
    """Each link's URL, by name. An artifact that is missing or not the owner's is
    permanent, worded as for attachments (another owner's reads as missing)."""
    store = ctx.artifacts.sync.store
    made: dict[str, str] = {}
    for name, link in payload.links.items():
        try:
            found = await ctx.artifacts.find(link.artifact, job_id=link.job_id)
        except NotFound as exc:
            raise PermanentError(f"links.{name}: {exc.message}") from None
        expires = timedelta(seconds=link.expires_seconds or settings.artifact_url_seconds)
        made[name] = await asyncio.to_thread(
            store.url, found.key, expires=expires, filename=found.name,
            content_type=found.content_type,
        )  # fmt: skip
    return made


# -- the message -------------------------------------------------------------------------


def _mailbox(value: str) -> Address:
    name, addr = email.utils.parseaddr(value)
    return Address(display_name=name, addr_spec=addr)


def message_id(job_id: str, sender: str) -> str:
    """The same for every attempt of a job, so a re-sent mail is a recognisable duplicate."""
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "conveyor"
    return f"<{job_id}@{domain}>"


def build_message(
    payload: EmailPayload,
    rendered: Rendered,
    attachments: list[tuple[Attachment, bytes, tuple[str, str]]],
    *,
    sender: str,
    msgid: str,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = _mailbox(sender)
    msg["To"] = tuple(_mailbox(a) for a in payload.to)
    if payload.cc:
        msg["Cc"] = tuple(_mailbox(a) for a in payload.cc)
    if payload.reply_to:
        msg["Reply-To"] = _mailbox(payload.reply_to)
    msg["Subject"] = rendered.subject
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    msg["Message-ID"] = msgid
    for name, value in payload.headers.items():
        msg[name] = value
    if rendered.text is not None:
        msg.set_content(rendered.text)
        if rendered.html is not None:
            msg.add_alternative(rendered.html, subtype="html")
    elif rendered.html is not None:
        msg.set_content(rendered.html, subtype="html")
    for attachment, data, (maintype, subtype) in attachments:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=attachment.name)
    return msg


def envelope_recipients(payload: EmailPayload) -> list[str]:
    """Everyone the mail goes to (bcc too), each once."""
    seen: dict[str, str] = {}
    for value in (*payload.to, *payload.cc, *payload.bcc):
        addr = email.utils.parseaddr(value)[1]
        seen.setdefault(addr.lower(), addr)
    return list(seen.values())


# -- SMTP --------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport(settings: Settings) -> None:
    """Settings that cannot work, or would leak the password, fail before any connection."""
    if settings.smtp_ssl and settings.smtp_starttls:
        raise PermanentError("CONVEYOR_SMTP_SSL and CONVEYOR_SMTP_STARTTLS exclude each other")
    encrypted = settings.smtp_ssl or settings.smtp_starttls
    if settings.smtp_username and not encrypted and not _is_loopback(settings.smtp_host):
        raise PermanentError(
            f"refusing to send SMTP credentials in clear text to {settings.smtp_host}: "
            "set CONVEYOR_SMTP_STARTTLS or CONVEYOR_SMTP_SSL"
        )


def default_tls_context(settings: Settings) -> ssl.SSLContext:
    """Verifying TLS: the system's roots, or the operator's CA bundle for a private relay."""
    return ssl.create_default_context(cafile=settings.smtp_ca_file or None)


def _is_certificate_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _refused(codes: list[int]) -> bool:
    """5xx is the server's final word; 4xx (greylisting, a full queue) may pass later."""
    return bool(codes) and all(500 <= code < 600 for code in codes)


def classify(exc: Exception) -> Exception:
    """The exception an SMTP failure is raised as: PermanentError when retrying cannot
    help, else the original (the worker retries it with backoff)."""
    if _is_certificate_failure(exc):
        return PermanentError(f"the SMTP server's certificate did not verify: {exc}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        why = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        return PermanentError(f"every recipient was refused: {why}") if _refused(codes) else exc
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if _refused([exc.code]):
            return PermanentError(f"{type(exc).__name__}: {exc.code} {exc.message}")
        return exc
    # aiosmtplib raises the bare base class only for what the server lacks (STARTTLS, AUTH)
    # or the settings get wrong: no later attempt would find it otherwise.
    if isinstance(exc, aiosmtplib.SMTPNotSupported) or type(exc) is aiosmtplib.SMTPException:
        return PermanentError(f"SMTP: {exc.message}")
    return exc


async def smtp_send(
    msg: EmailMessage,
    sender: str,
    recipients: list[str],
    settings: Settings,
    *,
    tls_context: ssl.SSLContext | None = None,
) -> dict[str, aiosmtplib.SMTPResponse]:
    """Send one message; the recipients the server refused (others were accepted). Once
    the server has accepted the data, a failing QUIT is ignored: failing the attempt then
    would send the mail twice."""
    encrypted = settings.smtp_ssl or settings.smtp_starttls
    login = bool(settings.smtp_username)
    client = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username if login else None,
        password=settings.smtp_password if login else None,
        use_tls=settings.smtp_ssl,
        start_tls=settings.smtp_starttls,
        timeout=settings.smtp_timeout_seconds,
        tls_context=(tls_context or default_tls_context(settings)) if encrypted else None,
    )
    try:
        try:
            await client.connect()
            refused, _ = await client.send_message(msg, sender=sender, recipients=recipients)
        except Exception as exc:
            failure = classify(exc)
            if failure is exc:
                raise
            raise failure from exc
        with contextlib.suppress(Exception):
            await client.quit()
    finally:
        client.close()
    return refused


# -- the handler -------------------------------------------------------------------------


def _configured_sender(settings: Settings) -> str:
    """CONVEYOR_SMTP_FROM, which gets the same check as a payload's `from`."""
    try:
        return _check_address(settings.smtp_from)
    except ValueError as exc:
        raise PermanentError(f"CONVEYOR_SMTP_FROM {exc}") from None


def _parsed(payload: EmailPayload | dict[str, Any]) -> EmailPayload:
    """The model, also when a caller hands over the raw dict."""
    if isinstance(payload, EmailPayload):
        return payload
    try:
        return EmailPayload.model_validate(payload)
    except ValidationError as exc:
        why = "; ".join(f"{v.field}: {v.description}" for v in payload_violations(exc))
        raise PermanentError(f"invalid payload for email.send: {why}") from None


async def send_email(
    payload: EmailPayload | dict[str, Any],
    ctx: JobContext,
    *,
    tls_context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """`email.send` itself; `tls_context` replaces the verifying context built from the
    settings (tests pass one trusting their own CA)."""
    model = _parsed(payload)
    settings = ctx.settings
    if settings is None:
        raise RuntimeError("email.send needs the worker's settings in its context")
    check_transport(settings)
    if model.links:  # the templates see each link as a variable, beside the context
        links = await make_links(model, ctx, settings)
        model = model.model_copy(update={"context": {**model.context, **links}})
    rendered = await asyncio.to_thread(render, model, settings)
    ctx.progress(10, "rendered")
    attachments = await load_attachments(model, ctx, settings.max_attachment_bytes)
    ctx.progress(50, f"{len(attachments)} attachments loaded")
    sender = model.from_ or _configured_sender(settings)
    msgid = message_id(ctx.job_id, sender)
    msg = build_message(model, rendered, attachments, sender=sender, msgid=msgid)
    recipients = envelope_recipients(model)
    refused = await smtp_send(
        msg, email.utils.parseaddr(sender)[1], recipients, settings, tls_context=tls_context
    )
    ctx.progress(100, "sent")
    accepted = [r for r in recipients if r not in refused]
    ctx.log.info("email sent to %d of %d recipients", len(accepted), len(recipients))
    return {
        "message_id": msgid,
        "accepted": accepted,
        "refused": {r: {"code": e.code, "message": e.message} for r, e in refused.items()},
    }


# Templates are a user's text: besides the bounded sandbox, each attempt runs in a child
# of its own (killed on cancel and timeout, its memory capped), so nothing a template
# does can reach the worker or another owner's mail. 256 MiB holds the largest rendered
# parts and 25 MiB of attachments several times over.
@handler(
    "email.send",
    payload=EmailPayload,
    timeout=timedelta(minutes=5),
    max_attempts=5,
    retry=retry(initial=60, maximum=1800, multiplier=3),
    isolation="process",
    memory_limit_mb=256,
)
async def email_send(payload: EmailPayload, ctx: JobContext) -> dict[str, Any]:
    """Render and send one email; see the module docstring."""
    return await send_email(payload, ctx)
