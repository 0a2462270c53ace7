"""SmtpEmailSender against a real aiosmtpd server, and FileEmailSender on disk."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.delivery.email_message import Attachment, CampaignMail
from services.delivery.email_sender import FileEmailSender, SmtpEmailSender
from services.delivery.email_wire import WireChunk, smtp_payload, wire_chunks
from services.delivery.outcomes import Outcome
from tests.fakes.smtp_server import FakeSmtp

SENDER = "hola@sonrisa.example"
MAIL = CampaignMail(
    sender=f"Clínica Sonrisa <{SENDER}>",
    postal_address="Av. Reforma 222, CDMX 06600",
    preview_text="Our news",
    attachment=Attachment("promo.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"%%EOF\n"),
)


def message(to: str = "maria@patients.example") -> tuple[str, bytes]:
    message_id = MAIL.new_message_id()
    raw = MAIL.render(
        to=to, message_id=message_id, subject="¡Hola!",
        text_body="Hola,\n.a line that starts with a dot\n..and two\n\nBye",
        unsubscribe_url="https://bot.example/unsubscribe/t",
    )
    return message_id, raw


def make_sender(server: FakeSmtp, **options: object) -> SmtpEmailSender:
    settings: dict[str, object] = {
        "host": "127.0.0.1", "port": server.port, "security": "none", "username": None,
        "password": None, "timeout": 2.0, "local_hostname": "bot.test",
    }
    settings.update(options)
    return SmtpEmailSender(**settings)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FakeSmtp]:
    with FakeSmtp() as smtp:
        yield smtp


@pytest.fixture
async def sender(server: FakeSmtp) -> AsyncIterator[SmtpEmailSender]:
    smtp_sender = make_sender(server, pool_size=2)
    yield smtp_sender
    await smtp_sender.close()


async def send(sender: SmtpEmailSender, to: str = "maria@patients.example"):
    message_id, raw = message(to)
    return await sender.send(sender=SENDER, recipient=to, message=raw, message_id=message_id)


async def test_sends_the_exact_message_and_reports_its_message_id(
    server: FakeSmtp, sender: SmtpEmailSender
) -> None:
    message_id, raw = message()
    result = await sender.send(sender=SENDER, recipient="maria@patients.example",
                               message=raw, message_id=message_id)
    assert result.outcome is Outcome.SENT and result.provider_id == message_id
    [received] = server.messages
    assert received.sender == SENDER and received.recipients == ["maria@patients.example"]
    assert received.data == raw  # dot-stuffing applied on the wire, undone by the server
    parsed = received.parsed()
    assert parsed["Message-ID"] == message_id and parsed["Subject"] == "¡Hola!"


async def test_pool_reuses_connections(server: FakeSmtp, sender: SmtpEmailSender) -> None:
    results = [await send(sender, f"p{i}@patients.example") for i in range(5)]
    results += await asyncio.gather(*(send(sender, f"q{i}@patients.example") for i in range(15)))
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert len(server.messages) == 20
    assert server.connections <= 2


async def test_pool_recycles_connections_after_n_messages(server: FakeSmtp) -> None:
    smtp_sender = make_sender(server, pool_size=1, recycle_after=3)
    for i in range(7):
        assert (await send(smtp_sender, f"p{i}@patients.example")).outcome is Outcome.SENT
    await smtp_sender.close()
    assert server.connections == 3
    assert server.quits == 3  # two recycled, one at close()


@pytest.mark.parametrize("at", ["mail", "rcpt", "data"])
async def test_4xx_is_retry_and_the_connection_keeps_working(
    server: FakeSmtp, sender: SmtpEmailSender, at: str
) -> None:
    server.fail_next(451, at=at)  # type: ignore[arg-type]
    result = await send(sender)
    assert result.outcome is Outcome.RETRY
    assert result.error_code == "451" and "Temporary local problem" in (result.reason or "")
    assert (await send(sender)).outcome is Outcome.SENT
    assert server.connections == 1 and len(server.messages) == 1


async def test_421_is_retry_and_the_next_message_reconnects(
    server: FakeSmtp, sender: SmtpEmailSender
) -> None:
    assert (await send(sender)).outcome is Outcome.SENT
    server.fail_next(421, at="rcpt")
    result = await send(sender)
    assert result.outcome is Outcome.RETRY and result.error_code == "421"
    assert (await send(sender)).outcome is Outcome.SENT
    assert server.connections == 2


@pytest.mark.parametrize("at", ["rcpt", "data"])
async def test_5xx_is_failed_with_the_servers_reason(
    server: FakeSmtp, sender: SmtpEmailSender, at: str
) -> None:
    server.fail_recipient("gone@patients.example", 550, at=at,  # type: ignore[arg-type]
                          text="5.1.1 <gone@patients.example>: no such user")
    result = await send(sender, "gone@patients.example")
    assert result.outcome is Outcome.FAILED and result.error_code == "550"
    assert result.reason == "550 5.1.1 <gone@patients.example>: no such user"
    assert (await send(sender, "ok@patients.example")).outcome is Outcome.SENT
    assert [m.recipients for m in server.messages] == [["ok@patients.example"]]


async def test_connection_refused_is_retry() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    smtp_sender = SmtpEmailSender("127.0.0.1", port, "none", None, None, timeout=2.0,
                                  local_hostname="bot.test")
    result = await send(smtp_sender)
    assert result.outcome is Outcome.RETRY
    assert f"127.0.0.1:{port}" in (result.reason or "") and "SMTP_HOST" in (result.reason or "")


@pytest.mark.parametrize("at", ["mail", "rcpt"])
async def test_drop_before_data_is_retry(server: FakeSmtp, at: str) -> None:
    smtp_sender = make_sender(server)
    server.drop_next(at=at)  # type: ignore[arg-type]
    result = await send(smtp_sender)
    assert result.outcome is Outcome.RETRY
    assert server.messages == []
    assert (await send(smtp_sender)).outcome is Outcome.SENT
    await smtp_sender.close()


async def test_a_dead_idle_connection_is_replaced_transparently(
    server: FakeSmtp, sender: SmtpEmailSender
) -> None:
    assert (await send(sender)).outcome is Outcome.SENT
    server.drop_next(at="mail")  # as if the server had timed the idle connection out
    assert (await send(sender)).outcome is Outcome.SENT
    assert server.connections == 2 and len(server.messages) == 2


async def test_drop_after_data_is_unknown_and_the_server_has_it(
    server: FakeSmtp, sender: SmtpEmailSender
) -> None:
    server.drop_next(at="data")
    result = await send(sender)
    assert result.outcome is Outcome.UNKNOWN
    assert "may have been delivered" in (result.reason or "")
    assert len(server.messages) == 1


async def test_timeout_after_data_is_unknown(server: FakeSmtp) -> None:
    smtp_sender = make_sender(server, timeout=0.3)
    server.stall_next(2.0)
    assert (await send(smtp_sender)).outcome is Outcome.UNKNOWN
    assert len(server.messages) == 1
    await smtp_sender.close()


async def test_timeout_before_data_is_retry(server: FakeSmtp) -> None:
    smtp_sender = make_sender(server, timeout=0.3)
    server.stall_next(2.0, at="rcpt")
    result = await send(smtp_sender)
    assert result.outcome is Outcome.RETRY and "timed out at RCPT" in (result.reason or "")
    assert server.messages == []
    await smtp_sender.close()


async def test_login() -> None:
    with FakeSmtp(auth=("clinic", "s3cret")) as server:
        good = make_sender(server, username="clinic", password="s3cret")
        assert (await send(good)).outcome is Outcome.SENT
        await good.close()

        bad = make_sender(server, username="clinic", password="wrong")
        result = await send(bad)
        assert result.outcome is Outcome.CHANNEL_DOWN and result.error_code == "535"
        assert result.reason is not None and result.reason.startswith(
            "the SMTP server rejected the login (535 ")
        assert result.reason.endswith("check SMTP_USERNAME and SMTP_PASSWORD")

        anonymous = make_sender(server)
        result = await send(anonymous)
        assert result.outcome is Outcome.CHANNEL_DOWN
        assert "set SMTP_USERNAME" in (result.reason or "")
        assert len(server.messages) == 1


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_with_a_trusted_certificate(mode: str) -> None:
    with FakeSmtp(tls=mode, auth=("clinic", "s3cret")) as server:  # type: ignore[arg-type]
        smtp_sender = make_sender(
            server, security="starttls" if mode == "starttls" else "tls",
            username="clinic", password="s3cret", tls_context=server.client_tls_context)
        assert (await send(smtp_sender)).outcome is Outcome.SENT
        lines = await smtp_sender.check(sender=SENDER)
        await smtp_sender.close()
    assert all(ok for ok, _ in lines)
    assert any("certificate valid" in line or "TLS" in line for _, line in lines)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_an_untrusted_certificate_is_channel_down(mode: str) -> None:
    with FakeSmtp(tls=mode) as server:  # type: ignore[arg-type]
        smtp_sender = make_sender(server, security="starttls" if mode == "starttls" else "tls")
        result = await send(smtp_sender)  # the system trust store does not know the test CA
    assert result.outcome is Outcome.CHANNEL_DOWN
    assert "certificate" in (result.reason or "") and "SMTP_HOST" in (result.reason or "")


async def test_tls_against_a_plain_server_is_channel_down_with_a_fix(server: FakeSmtp) -> None:
    result = await send(make_sender(server, security="tls"))
    assert result.outcome is Outcome.CHANNEL_DOWN
    assert "SMTP_SECURITY=starttls" in (result.reason or "")


async def test_starttls_not_offered_is_channel_down(server: FakeSmtp) -> None:
    result = await send(make_sender(server, security="starttls"))
    assert result.outcome is Outcome.CHANNEL_DOWN
    assert "does not offer STARTTLS" in (result.reason or "")


async def test_check_reports_each_step_and_sends_nothing(server: FakeSmtp) -> None:
    lines = await make_sender(server).check(sender=SENDER)
    assert all(ok for ok, _ in lines)
    assert [line.split(":")[1].strip().split()[0] for _, line in lines] == [
        "connected", "EHLO", "SMTP_SECURITY=none", "the"]
    assert server.messages == []


async def test_check_names_the_fix_when_login_fails() -> None:
    with FakeSmtp(auth=("clinic", "s3cret")) as server:
        lines = await make_sender(server, username="clinic", password="nope").check()
    assert [ok for ok, _ in lines] == [True, True, True, False]
    assert "check SMTP_USERNAME and SMTP_PASSWORD" in lines[-1][1]


async def test_a_malformed_address_fails_without_reaching_the_server(
    server: FakeSmtp, sender: SmtpEmailSender
) -> None:
    message_id, raw = message()
    result = await sender.send(sender=SENDER, message=raw, message_id=message_id,
                               recipient="maria@patients.example\r\nRCPT TO:<x@evil.example>")
    assert result.outcome is Outcome.FAILED and "not an email address" in (result.reason or "")
    assert server.connections == 0


async def test_sends_render_chunks_as_the_same_message(
    server: FakeSmtp, sender: SmtpEmailSender
) -> None:
    message_id = MAIL.new_message_id()
    chunks = MAIL.render_chunks(
        to="maria@patients.example", message_id=message_id, subject="Chunks",
        text_body=".starts with a dot\n\nBye", unsubscribe_url="https://bot.example/u/t")
    result = await sender.send(sender=SENDER, recipient="maria@patients.example",
                               message=chunks, message_id=message_id)
    assert result.outcome is Outcome.SENT
    assert server.messages[0].data == b"".join(chunks)


def test_wire_chunks_skip_checked_chunks_and_join_when_lines_straddle() -> None:
    shared = WireChunk(b"\r\n--b\r\nQUJD\r\n--b--\r\n")
    head = b"Subject: x\r\n\r\n.dot\r\n"
    out = wire_chunks([head, shared])
    assert out[1] is shared and out[0] == b"Subject: x\r\n\r\n..dot\r\n"
    assert wire_chunks([b"Subject: x\r", b"\n\r\n.dot"]) == [b"Subject: x\r\n\r\n..dot\r\n"]
    for bad in (b".dot\r\n", b"a\nb\r\n", b"no newline", "ñ\r\n".encode()):
        with pytest.raises(ValueError):
            WireChunk(bad)


def test_smtp_payload_normalises_line_ends_and_stuffs_dots() -> None:
    assert smtp_payload(b".a\r\nb\n.c\rd") == b"..a\r\nb\r\n..c\r\nd\r\n"
    same = b"a\r\nb\r\n"
    assert smtp_payload(same) is same  # nothing to do: no copy of a large message


async def test_file_sender_writes_parseable_eml_files(tmp_path: Path) -> None:
    outbox = FileEmailSender(tmp_path / "outbox")
    message_id, raw = message()
    result = await outbox.send(sender=SENDER, recipient="maria@patients.example",
                               message=raw, message_id=message_id)
    assert result.outcome is Outcome.SENT and result.provider_id == message_id
    [path] = (tmp_path / "outbox").iterdir()
    assert path == outbox.path_for(message_id)
    assert path.name == message_id.strip("<>") + ".eml"
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == message_id and parsed["Subject"] == "¡Hola!"
    assert (await outbox.check())[0][0] is True


async def test_file_sender_reports_an_unwritable_outbox(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    outbox = FileEmailSender(blocker / "outbox")
    message_id, raw = message()
    result = await outbox.send(sender=SENDER, recipient="m@p.example", message=raw,
                               message_id=message_id)
    assert result.outcome is Outcome.CHANNEL_DOWN and "OUTBOX_DIR" in (result.reason or "")
    assert (await outbox.check())[0][0] is False
