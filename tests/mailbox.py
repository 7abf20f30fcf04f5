"""A real SMTP server for the tests (aiosmtpd on 127.0.0.1 and a free port, in a thread):
it keeps every message it accepts, and tests wait for one without sleeping."""

from __future__ import annotations

import email
import email.policy
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from conveyor.embedded import free_port


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


class Mailbox:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self._arrived = threading.Condition()
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)  # what the default policy makes
        with self._arrived:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
            self._arrived.notify_all()
        return "250 OK"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, subject: str, timeout: float = 30.0) -> Received:
        """The first message with this subject, once it has arrived."""

        def found() -> Received | None:
            return next((r for r in self.received if r.message["Subject"] == subject), None)

        with self._arrived:
            if not self._arrived.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"no message {subject!r} within {timeout}s")
        result = found()
        assert result is not None
        return result

    @property
    def env(self) -> dict[str, str]:
        return {"CONVEYOR_SMTP_HOST": "127.0.0.1", "CONVEYOR_SMTP_PORT": str(self.port)}
