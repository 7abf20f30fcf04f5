"""`email.send` against a real SMTP server (aiosmtpd on 127.0.0.1): templates rendered into
a text+html message with a stable Message-ID, attachments from artifacts and owner files on
both object stores, STARTTLS/implicit TLS with AUTH verified against a test CA, how SMTP
replies map to permanent or retried failures, and the payload checks made at submit."""

from __future__ import annotations

import email
import email.policy
import io
import re
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from conveyor.builtins.email import EmailPayload, check_transport, send_email  # registers it
from conveyor.config import Settings
from conveyor.embedded import free_port
from conveyor.errors import InvalidArgument
from conveyor.handlers import JobContext, PermanentError, Registry
from conveyor.jobs.artifacts import owner_file_key
from conveyor.objects import ObjectStore
from conveyor.objects.local import LocalStore
from conveyor.testing import RunFixture, run_handler

# -- a real SMTP server --------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Mailbox:
    """The aiosmtpd handler: keeps every message it accepts; refuses RCPT TO for the
    addresses in `refuse` with the reply given there."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    logins: list[tuple[str, bool]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), parsed))
        return "250 Message accepted"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """Accepts mailer/s3cret only, and notes every login tried (and over TLS or not)."""
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login.decode(), session.ssl is not None))
        ok = (data.login, data.password) == (b"mailer", b"s3cret")
        return AuthResult(success=ok, handled=False)

    def only(self) -> Received:
        assert len(self.received) == 1, f"expected one message, got {len(self.received)}"
        return self.received[0]


@dataclass
class Server:
    mailbox: Mailbox
    port: int

    def settings(self, cls: type[Settings] = Settings, **overrides: Any) -> Settings:
        return cls(smtp_host="127.0.0.1", smtp_port=self.port, smtp_timeout_seconds=5.0,
                   **overrides)  # fmt: skip

    def reset(self) -> Mailbox:
        self.mailbox.received.clear()
        self.mailbox.refuse.clear()
        self.mailbox.logins.clear()
        return self.mailbox


def _serve(**kwargs: Any) -> Iterator[Server]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, server_hostname="mx.test", **kwargs
    )
    controller.start()
    try:
        yield Server(mailbox, port)
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """What a worker would trust if the test CA were among the system's roots."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def plain_server() -> Iterator[Server]:
    yield from _serve()


@pytest.fixture
def smtp(plain_server: Server) -> Server:
    plain_server.reset()
    return plain_server


@pytest.fixture(scope="module")
def starttls_server(server_tls: ssl.SSLContext) -> Iterator[Server]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        server_hostname="mx.test",
        tls_context=server_tls,
        require_starttls=True,
        auth_required=True,
        authenticator=mailbox.authenticate,
    )
    controller.start()
    yield Server(mailbox, port)
    controller.stop()


@pytest.fixture
def starttls(starttls_server: Server) -> Server:
    starttls_server.reset()
    return starttls_server


@pytest.fixture
def folder_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects", base_url="http://127.0.0.1:0")


def _trusting(context: ssl.SSLContext) -> Registry:
    """email.send with the internal `tls_context` hook, in a registry of its own."""
    registry = Registry()

    async def send(payload: EmailPayload, ctx: JobContext) -> dict[str, Any]:
        return await send_email(payload, ctx, tls_context=context)

    registry.register("email.send", send, payload=EmailPayload)
    return registry


def _body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # SMTP's line ends, as the text had them


MAIL = {"to": "ada@example.com", "subject": "Hi", "text": "Hello"}


# -- 1. rendering, recipients, Message-ID ------------------------------------------------------


def test_a_templated_text_and_html_message_arrives_with_its_recipients_and_id(
    smtp: Server,
) -> None:
    """Subject, text and html are rendered with the context (html escaped, text not); To
    and Cc are headers, Bcc only the envelope; the Message-ID derives from the job id (so a
    re-sent attempt is a recognisable duplicate); progress goes 10, 50, 100."""
    run = run_handler(
        "email.send",
        {
            "to": ["Ada Lovelace <ada@example.com>", "bob@example.com"],
            "cc": "carol@example.com",
            "bcc": ["dave@example.com"],
            "from": "Reports <reports@example.org>",
            "reply_to": "help@example.org",
            "subject": "Hello {{ name }}",
            "text": "Dear {{ name }}, you have {{ count }} reports.",
            "html": "<p>Dear <b>{{ name }}</b></p>",
            "context": {"name": "<Ada>", "count": 3},
            "headers": {"List-Unsubscribe": "<mailto:unsubscribe@example.org>"},
        },
        settings=smtp.settings(),
    )
    got = smtp.mailbox.only()
    assert got.mail_from == "reports@example.org"
    everyone = ["ada@example.com", "bob@example.com", "carol@example.com", "dave@example.com"]
    assert got.rcpt_tos == everyone
    msg = got.message
    assert msg["To"] == "Ada Lovelace <ada@example.com>, bob@example.com"
    assert msg["Cc"] == "carol@example.com"
    assert msg["Bcc"] is None
    assert msg["From"] == "Reports <reports@example.org>"
    assert msg["Reply-To"] == "help@example.org"
    assert msg["Subject"] == "Hello <Ada>"
    assert msg["List-Unsubscribe"] == "<mailto:unsubscribe@example.org>"
    assert msg["Message-ID"] == f"<{run.job_id}@example.org>"
    assert msg.get_content_type() == "multipart/alternative"
    assert _body(msg, "plain").strip() == "Dear <Ada>, you have 3 reports."
    assert _body(msg, "html").strip() == "<p>Dear <b>&lt;Ada&gt;</b></p>"
    assert run.result == {
        "message_id": f"<{run.job_id}@example.org>",
        "accepted": everyone,
        "refused": {},
    }
    assert [p for p, _ in run.progress] == [10, 50, 100]


def test_the_default_sender_and_an_html_only_message(smtp: Server) -> None:
    """Without `from`, CONVEYOR_SMTP_FROM sends (and names the Message-ID's domain); html
    alone makes a single text/html body."""
    run = run_handler(
        "email.send",
        {"to": "ada@example.com", "subject": "Hi", "html": "<p>hi</p>"},
        settings=smtp.settings(smtp_from="Conveyor <noreply@mail.example.net>"),
    )
    msg = smtp.mailbox.only().message
    assert msg["From"] == "Conveyor <noreply@mail.example.net>"
    assert msg["Message-ID"] == f"<{run.job_id}@mail.example.net>"
    assert msg.get_content_type() == "text/html"


def test_a_raw_dict_payload_is_parsed_by_the_handler_too(smtp: Server) -> None:
    """A caller that hands the handler the stored dict instead of the model (as the worker
    may) gets the same checks and mail: a bad dict is a PermanentError, not a crash."""

    async def raw(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        return await send_email(payload, ctx)

    registry = Registry()
    registry.register("email.send", raw)  # no model: the handler gets the dict
    run_handler("email.send", dict(MAIL), settings=smtp.settings(), registry=registry)
    assert smtp.mailbox.only().message["Subject"] == "Hi"
    with pytest.raises(PermanentError, match=r"payload\.to"):
        run_handler("email.send", {**MAIL, "to": "nope"}, registry=registry)


def test_a_missing_template_variable_fails_permanently_naming_it(smtp: Server) -> None:
    with pytest.raises(PermanentError, match="'name' is undefined"):
        run_handler("email.send", {**MAIL, "text": "Dear {{ name }}"}, settings=smtp.settings())
    assert smtp.mailbox.received == []


# -- 2. attachments -------------------------------------------------------------------------


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, folder_store: LocalStore) -> ObjectStore:
    """Both object stores; the S3 server only starts for the s3 case."""
    if request.param == "s3":
        s3: ObjectStore = request.getfixturevalue("s3_store")
        return s3
    return folder_store


def _attachments(msg: EmailMessage) -> dict[str, tuple[str, bytes]]:
    found = {}
    for part in msg.iter_attachments():
        assert isinstance(part, EmailMessage)
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        found[part.get_filename() or ""] = (part.get_content_type(), data)
    return found


def test_an_artifact_and_an_owner_file_arrive_byte_identical(
    smtp: Server, store: ObjectStore
) -> None:
    """An artifact of another of the owner's jobs and an object of the owner's files are
    attached unchanged, with types guessed from the name unless the payload says."""
    fixture = RunFixture(owner="alice")
    report = b"month,total\n2026-11,42\n" * 50
    fixture.add_artifact(store, "job-export", "report.csv", report)
    terms = bytes(range(256)) * 40
    key = owner_file_key("alice", "legal/terms.pdf")
    store.put(key, io.BytesIO(terms), length=len(terms))
    run = run_handler(
        "email.send",
        {
            **MAIL,
            "attachments": [
                {"job_id": "job-export", "artifact": "report.csv"},
                {"key": "legal/terms.pdf", "filename": "Terms.pdf"},
                {"key": "legal/terms.pdf", "filename": "raw", "content_type": "image/png"},
            ],
        },
        store=store,
        fixture=fixture,
        settings=smtp.settings(),
    )
    msg = smtp.mailbox.only().message
    assert _attachments(msg) == {
        "report.csv": ("text/csv", report),
        "Terms.pdf": ("application/pdf", terms),
        "raw": ("image/png", terms),
    }
    assert _body(msg, "plain").strip() == "Hello"
    assert run.result["accepted"] == ["ada@example.com"]


def test_another_owners_artifact_is_refused_like_a_missing_one(
    smtp: Server, folder_store: LocalStore
) -> None:
    """Mallory's artifact is invisible to alice: the NotFound becomes a PermanentError
    (retrying cannot make it hers) worded exactly as for an artifact that does not exist,
    so the error does not reveal that it does. Nothing is sent."""
    fixture = RunFixture(owner="alice")
    fixture.add_artifact(folder_store, "job-m", "secret.csv", b"s", owner="mallory")
    messages = []
    for job_id in ("job-m", "job-none"):
        payload = {**MAIL, "attachments": [{"job_id": job_id, "artifact": "secret.csv"}]}
        with pytest.raises(PermanentError) as caught:
            run_handler(
                "email.send", payload, store=folder_store, fixture=fixture,
                settings=smtp.settings(),
            )  # fmt: skip
        messages.append(str(caught.value).replace(job_id, "JOB"))
    assert messages[0] == messages[1] == "attachment: job JOB has no artifact 'secret.csv'"
    with pytest.raises(PermanentError, match=re.escape("no file 'nope.pdf'")):
        run_handler(
            "email.send", {**MAIL, "attachments": [{"key": "nope.pdf"}]},
            store=folder_store, fixture=fixture, settings=smtp.settings(),
        )  # fmt: skip
    assert smtp.mailbox.received == []


def _download(store: ObjectStore, url: str) -> tuple[bytes, int]:
    """What a link in a mail gives, and until when (epoch seconds; S3's: 0, not read):
    S3 serves it itself; the folder store's link is checked as its download server checks
    it, then the object is read."""
    if not isinstance(store, LocalStore):
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read(), 0
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    key = unquote(parts.path.removeprefix("/objects/"))
    refused = store.signer.check(
        key, query["expires"], query["filename"], query["type"], query["signature"]
    )
    assert refused == "", refused
    return store.read(key), int(query["expires"])


def test_links_become_download_links_of_artifacts_at_send_time(
    smtp: Server, store: ObjectStore
) -> None:
    """Guards issue 25's workflow (export, bundle, email the link): `links` names an
    artifact of another of the owner's jobs, and the templates see a working download link
    to it (text as is, html escaped), lasting `expires_seconds` or the server's link time."""
    fixture = RunFixture(owner="alice")
    bundle = b"PK\x03\x04" + bytes(range(256)) * 8
    fixture.add_artifact(store, "job-bundle", "bundle.zip", bundle)
    link: dict[str, Any] = {
        "job_id": "job-bundle",
        "artifact": "bundle.zip",
        "expires_seconds": 3600,
    }
    payload = {
        **MAIL,
        "text": "Get it: {{ download }}",
        "html": '<a href="{{ download }}">{{ name }}</a>',
        "context": {"name": "your export"},
        "links": {"download": link},
    }
    settings = smtp.settings()
    run_handler("email.send", payload, store=store, fixture=fixture, settings=settings)
    msg = smtp.mailbox.only().message
    url = _body(msg, "plain").strip().removeprefix("Get it: ")
    got, until = _download(store, url)
    assert got == bundle
    assert until == 0 or 3500 < until - time.time() <= 3600
    assert url.replace("&", "&amp;") in _body(msg, "html")

    smtp.reset()
    del link["expires_seconds"]
    run_handler("email.send", payload, store=store, fixture=fixture, settings=settings)
    _, until = _download(store, _body(smtp.mailbox.only().message, "plain").split()[-1])
    window = settings.artifact_url_seconds
    assert until == 0 or window - 100 < until - time.time() <= window


def test_a_link_to_a_missing_or_foreign_artifact_fails_permanently(
    smtp: Server, folder_store: LocalStore
) -> None:
    """As with attachments: another owner's artifact reads as missing, and nothing is sent."""
    fixture = RunFixture(owner="alice")
    fixture.add_artifact(folder_store, "job-m", "secret.zip", b"s", owner="mallory")
    for job_id in ("job-m", "job-none"):
        payload = {
            **MAIL,
            "text": "{{ link }}",
            "links": {"link": {"job_id": job_id, "artifact": "secret.zip"}},
        }
        with pytest.raises(PermanentError, match=f"links.link: job {job_id} has no artifact"):
            run_handler(
                "email.send", payload, store=folder_store, fixture=fixture,
                settings=smtp.settings(),
            )  # fmt: skip
    assert smtp.mailbox.received == []


def test_attachments_over_the_limit_fail_before_any_is_read(
    smtp: Server, store: ObjectStore
) -> None:
    """The sizes are added up from the store's metadata first: over
    CONVEYOR_MAX_ATTACHMENT_BYTES is permanent and nothing is sent."""
    fixture = RunFixture()
    fixture.add_artifact(store, "job-1", "a.bin", b"x" * 700)
    fixture.add_artifact(store, "job-1", "b.bin", b"y" * 700)
    payload = {
        **MAIL,
        "attachments": [
            {"job_id": "job-1", "artifact": "a.bin"},
            {"job_id": "job-1", "artifact": "b.bin"},
        ],
    }
    with pytest.raises(PermanentError, match="total 1400 bytes; the limit is 1024"):
        run_handler(
            "email.send", payload, store=store, fixture=fixture,
            settings=smtp.settings(max_attachment_bytes=1024),
        )  # fmt: skip
    assert smtp.mailbox.received == []


# -- 3. TLS and AUTH -----------------------------------------------------------------------


def test_starttls_and_auth_with_a_trusted_ca(starttls: Server, client_tls: ssl.SSLContext) -> None:
    """A server that requires STARTTLS and AUTH gets both: the login happens over TLS,
    verified against the CA passed to the internal hook."""
    settings = starttls.settings(smtp_starttls=True, smtp_username="mailer", smtp_password="s3cret")
    run_handler("email.send", dict(MAIL), settings=settings, registry=_trusting(client_tls))
    assert starttls.mailbox.logins == [("mailer", True)]
    assert starttls.mailbox.only().rcpt_tos == ["ada@example.com"]


def test_the_ca_file_setting_verifies_and_a_wrong_password_is_permanent(
    starttls: Server, ca: trustme.CA, tmp_path: Path
) -> None:
    """`CONVEYOR_SMTP_CA_FILE` trusts a private CA; a
    refused login (535) is a PermanentError, not a retry."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    good = starttls.settings(
        Settings, smtp_ca_file=str(ca_file), smtp_starttls=True,
        smtp_username="mailer", smtp_password="s3cret",
    )  # fmt: skip
    run_handler("email.send", dict(MAIL), settings=good)
    assert len(starttls.mailbox.received) == 1
    bad = good.model_copy(update={"smtp_password": "wrong"})
    with pytest.raises(PermanentError, match="535"):
        run_handler("email.send", dict(MAIL), settings=bad)
    assert len(starttls.mailbox.received) == 1


def test_an_untrusted_certificate_is_refused_before_the_password_is_sent(
    starttls: Server,
) -> None:
    """Without the test CA the server's certificate does not verify: permanent, and the
    server never sees a login. There is no setting that skips verification."""
    settings = starttls.settings(smtp_starttls=True, smtp_username="mailer", smtp_password="s3cret")
    with pytest.raises(PermanentError, match="certificate did not verify"):
        run_handler("email.send", dict(MAIL), settings=settings)
    assert starttls.mailbox.logins == []
    assert starttls.mailbox.received == []


def test_a_server_without_starttls_is_refused_when_it_is_required(smtp: Server) -> None:
    """CONVEYOR_SMTP_STARTTLS=true never falls back to clear text: a server that does not
    offer STARTTLS fails the job permanently and receives nothing."""
    with pytest.raises(PermanentError, match="STARTTLS extension not supported"):
        run_handler("email.send", dict(MAIL), settings=smtp.settings(smtp_starttls=True))
    assert smtp.mailbox.received == []


def test_implicit_tls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    """CONVEYOR_SMTP_SSL connects with TLS from the first byte (port 465 style)."""
    for server in _serve(ssl_context=server_tls):
        run_handler(
            "email.send", dict(MAIL), settings=server.settings(smtp_ssl=True),
            registry=_trusting(client_tls),
        )  # fmt: skip
        assert server.mailbox.only().message["Subject"] == "Hi"


def test_credentials_in_clear_text_only_to_loopback() -> None:
    """A password would cross the network unencrypted: refused before connecting (the host
    is never contacted). To loopback (a local relay) it is allowed."""
    remote = Settings(smtp_host="smtp.example.com", smtp_username="u", smtp_password="p")
    with pytest.raises(PermanentError, match=re.escape("clear text to smtp.example.com")):
        run_handler("email.send", dict(MAIL), settings=remote)
    for host in ("127.0.0.1", "localhost", "::1"):
        check_transport(Settings(smtp_host=host, smtp_username="u", smtp_password="p"))
    with pytest.raises(PermanentError, match="exclude each other"):
        check_transport(Settings(smtp_ssl=True, smtp_starttls=True))


# -- 4. SMTP replies and outages -----------------------------------------------------------


def test_a_550_for_every_recipient_is_permanent_and_for_some_is_reported(smtp: Server) -> None:
    """5xx is final: when every recipient is refused the job is DEAD at once; when only
    some are, the mail went to the others and the refusals are in the result."""
    smtp.mailbox.refuse["nobody@example.com"] = "550 5.1.1 no such user"
    with pytest.raises(PermanentError, match=re.escape("550 5.1.1 no such user")):
        run_handler("email.send", {**MAIL, "to": "nobody@example.com"}, settings=smtp.settings())
    assert smtp.mailbox.received == []
    run = run_handler(
        "email.send",
        {**MAIL, "to": ["ada@example.com", "nobody@example.com"]},
        settings=smtp.settings(),
    )
    assert smtp.mailbox.only().rcpt_tos == ["ada@example.com"]
    assert run.result["accepted"] == ["ada@example.com"]
    assert run.result["refused"] == {
        "nobody@example.com": {"code": 550, "message": "5.1.1 no such user"}
    }


def test_a_4xx_refusal_is_retried(smtp: Server) -> None:
    """4xx (greylisting, a full disk) may pass later: a plain exception, so the worker
    retries with backoff."""
    smtp.mailbox.refuse["ada@example.com"] = "451 4.7.1 greylisted, try again later"
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
        run_handler("email.send", dict(MAIL), settings=smtp.settings())
    assert not isinstance(caught.value, PermanentError)


def test_an_unreachable_server_is_retried() -> None:
    """Nothing listens on the port: a connection error, which is retried."""
    settings = Settings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_timeout_seconds=5)
    with pytest.raises(Exception) as caught:
        run_handler("email.send", dict(MAIL), settings=settings)
    assert not isinstance(caught.value, PermanentError)
    assert isinstance(caught.value, aiosmtplib.SMTPConnectError | OSError)


# -- 5. payloads refused at submit ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**MAIL, "to": ["ada@example.com\r\nBcc: eve@example.com"]}, "payload.to[0]"),
        ({**MAIL, "to": ["ada@example.com", "not an address"]}, "payload.to[1]"),
        ({**MAIL, "to": "ada@example.com, eve@example.com"}, "payload.to[0]"),
        ({**MAIL, "to": []}, "payload.to"),
        ({**MAIL, "to": [f"u{i}@example.com" for i in range(101)]}, "payload.to"),
        ({**MAIL, "cc": ["eve@"]}, "payload.cc[0]"),
        ({**MAIL, "from": "Eve <eve@example.com>\nBcc: x@example.com"}, "payload.from"),
        ({**MAIL, "subject": "Hi\r\nBcc: eve@example.com"}, "payload.subject"),
        ({**MAIL, "headers": {"X-Tag": "a\r\nBcc: eve@example.com"}}, "payload.headers"),
        ({**MAIL, "headers": {"Message-ID": "<forged@example.com>"}}, "payload.headers"),
        ({**MAIL, "headers": {"Content-Type": "text/evil"}}, "payload.headers"),
        ({**MAIL, "headers": {"Bad Name:": "v"}}, "payload.headers"),
        ({**MAIL, "template": "../secrets"}, "payload.template"),
        ({**MAIL, "template": "a/b"}, "payload.template"),
        ({**MAIL, "text": "{% if %}"}, "payload.text"),
        ({**MAIL, "attachments": [{"key": "../bob/x.pdf"}]}, "payload.attachments[0].key"),
        ({**MAIL, "attachments": [{"job_id": "j"}]}, "payload.attachments[0]"),
        ({**MAIL, "attachments": [{"key": "a", "artifact": "b", "job_id": "j"}]},
         "payload.attachments[0]"),
        ({**MAIL, "attachments": [{"key": "a", "filename": "x/y"}]},
         "payload.attachments[0].filename"),
        ({**MAIL, "attachments": [{"key": f"f{i}"} for i in range(21)]}, "payload.attachments"),
        ({**MAIL, "unknown": 1}, "payload.unknown"),
        ({**MAIL, "links": {"1st": {"job_id": "j", "artifact": "a.zip"}}}, "payload.links"),
        ({**MAIL, "links": {"a": {"job_id": "j"}}}, "payload.links.a.artifact"),
        ({**MAIL, "links": {"a": {"job_id": "j", "artifact": "../x"}}},
         "payload.links.a.artifact"),
        ({**MAIL, "links": {"a": {"job_id": "j", "artifact": "x", "expires_seconds": 5}}},
         "payload.links.a.expires_seconds"),
        ({**MAIL, "context": {"a": 1}, "links": {"a": {"job_id": "j", "artifact": "x"}}},
         "payload"),
        ({"to": "ada@example.com", "text": "no subject"}, "payload"),
        ({"to": "ada@example.com", "subject": "no body"}, "payload"),
    ],
)  # fmt: skip
def test_bad_payloads_are_invalid_argument_with_field_paths(
    payload: dict[str, Any], field: str
) -> None:
    """Refused before anything runs (as the API refuses them at submit), naming the field."""
    with pytest.raises(InvalidArgument) as caught:
        run_handler("email.send", payload)
    fields = [v.field for v in caught.value.violations]
    assert field in fields, caught.value.message


# -- 6. named templates --------------------------------------------------------------------


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "welcome.subject").write_text("Welcome, {{ user.name }}!\n")
    (folder / "welcome.txt").write_text("Hi {{ user.name }}, your plan is {{ plan }}.\n")
    (folder / "welcome.html").write_text("<h1>Hi {{ user.name }}</h1><p>{{ plan }}</p>\n")
    (folder / "note.txt").write_text("Just text: {{ body }}\n")
    return folder


def _with_templates(server: Server, folder: Path) -> Settings:
    return server.settings(email_templates_dir=str(folder))


def test_a_named_template_from_the_templates_folder(smtp: Server, templates: Path) -> None:
    """<name>.subject, .txt and .html are rendered with the context; a subject file's
    trailing newline does not leak into the header."""
    run_handler(
        "email.send",
        {"to": "ada@example.com", "template": "welcome",
         "context": {"user": {"name": "Ada & co"}, "plan": "pro"}},
        settings=_with_templates(smtp, templates),
    )  # fmt: skip
    msg = smtp.mailbox.only().message
    assert msg["Subject"] == "Welcome, Ada & co!"
    assert _body(msg, "plain") == "Hi Ada & co, your plan is pro.\n"
    assert _body(msg, "html") == "<h1>Hi Ada &amp; co</h1><p>pro</p>\n"


def test_payload_fields_fill_in_and_override_a_named_template(
    smtp: Server, templates: Path
) -> None:
    """A template without a .subject takes the payload's; the payload's own html is added."""
    run_handler(
        "email.send",
        {"to": "ada@example.com", "template": "note", "subject": "Note: {{ body }}",
         "html": "<i>{{ body }}</i>", "context": {"body": "hello"}},
        settings=_with_templates(smtp, templates),
    )  # fmt: skip
    msg = smtp.mailbox.only().message
    assert msg["Subject"] == "Note: hello"
    assert _body(msg, "plain") == "Just text: hello\n"
    assert _body(msg, "html").strip() == "<i>hello</i>"


def test_template_failures_are_permanent(smtp: Server, templates: Path) -> None:
    """An unknown template, one missing its subject, or a variable the context lacks would
    fail on every attempt: permanent, with what is wrong."""
    settings = _with_templates(smtp, templates)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"template": "nope"}, "no template 'nope'"),
        ({"template": "note", "context": {"body": "x"}}, "the subject is empty"),
        ({"template": "welcome", "context": {"plan": "pro"}}, "'user' is undefined"),
    ]
    for extra, why in cases:
        with pytest.raises(PermanentError, match=re.escape(why)):
            run_handler("email.send", {"to": "ada@example.com", **extra}, settings=settings)
    with pytest.raises(PermanentError, match="no CONVEYOR_EMAIL_TEMPLATES_DIR"):
        run_handler("email.send", {"to": "ada@example.com", "template": "welcome"},
                    settings=smtp.settings())  # fmt: skip
    assert smtp.mailbox.received == []
