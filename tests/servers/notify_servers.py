"""Where the tests' job reports go: a real SMTP server (aiosmtpd) and an HTTP webhook receiver,
both on loopback, each keeping what it received."""

from __future__ import annotations

import email
import email.policy
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest

from tests.servers.server_common import free_port


@dataclass
class Mailbox:
    """What the SMTP server received: parsed messages, in order."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)

    def url(self, to: str = "backup-admins@example.com") -> str:
        return (f"mailto://127.0.0.1:{self.port}?from=vmkeep@example.com&to={to}"
                "&mode=insecure")


@dataclass
class Webhook:
    """What the webhook receiver got: the JSON bodies of its POSTs (Apprise's ``json://``)."""

    port: int
    posts: list[dict[str, Any]] = field(default_factory=list)

    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/vmkeep-hook"


def eventually(found: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll until ``found()`` is truthy; the deadline only stops a hung test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.05)
    return found()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    from aiosmtpd.controller import Controller

    box = Mailbox(free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            box.messages.append(parsed)
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with running_webhook() as hook:
        yield hook


@contextmanager
def running_webhook() -> Iterator[Webhook]:
    """A webhook receiver for the ``with`` block (module fixtures use this directly)."""
    hook = Webhook(free_port())

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            hook.posts.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", hook.port), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
