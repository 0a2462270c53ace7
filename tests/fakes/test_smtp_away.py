"""FakeSmtp going away: open connections closed, connects refused, back on the same port."""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage

import pytest

from tests.fakes.smtp_server import FakeSmtp


def message(n: int) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "clinic@example.org", "ana@example.com", f"n{n}"
    mail.set_content("Hello")
    return mail


def send(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.send_message(message(n))


def refused(port: int) -> bool:
    try:
        smtplib.SMTP("127.0.0.1", port, timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_go_away_closes_sessions_refuses_connects_and_come_back_reuses_the_port() -> None:
    with FakeSmtp() as smtp:
        port = smtp.port
        send(port, 1)
        open_client = smtplib.SMTP("127.0.0.1", port, timeout=5)
        assert open_client.noop()[0] == 250

        smtp.go_away()
        assert smtp.is_away
        with pytest.raises(smtplib.SMTPServerDisconnected):
            open_client.send_message(message(2))
        open_client.close()
        assert refused(port)

        smtp.come_back()
        assert smtp.port == port and not smtp.is_away
        send(port, 3)
        assert [m.parsed()["Subject"] for m in smtp.messages] == ["n1", "n3"]
        assert smtp.messages[-1].recipients == ["ana@example.com"]


def test_away_returns_at_once_and_the_server_comes_back_by_itself() -> None:
    with FakeSmtp() as smtp:
        port = smtp.port
        began = time.monotonic()
        smtp.away(1.0)
        assert time.monotonic() - began < 0.5  # non-blocking
        assert refused(port)
        deadline = time.monotonic() + 5
        while refused(port):
            assert time.monotonic() < deadline, "the server never came back"
            time.sleep(0.05)
        assert time.monotonic() - began >= 0.95
        send(port, 1)
        assert [m.parsed()["Subject"] for m in smtp.messages] == ["n1"]


def test_come_back_early_cancels_the_scheduled_return_and_exit_while_away_is_clean() -> None:
    with FakeSmtp() as smtp:
        smtp.away(0.3)
        smtp.come_back()
        send(smtp.port, 1)
        smtp.go_away()  # the timer of the first away() must not bring it back
        time.sleep(0.5)
        assert refused(smtp.port)
    assert not smtp.is_away  # __exit__ released the port
