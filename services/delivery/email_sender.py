"""Email senders: a small pool of persistent SMTP connections, or `.eml` files in an outbox.

Both take a finished message (`CampaignMail.render` or `render_chunks`) and answer with a
`SendResult` classified by what certainly happened (SPEC §3): the SMTP sender drives MAIL, RCPT
and DATA itself so it knows which phase failed. Anything that goes wrong before the final "."
left this process certainly did not send (RETRY); a lost connection or a timeout after it may
have been accepted (UNKNOWN, never retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Literal, Protocol

from aiosmtplib import (
    SMTP,
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

from services.delivery.email_failures import classify_reply, one_line, open_failure, reply_text
from services.delivery.email_outbox import FileEmailSender
from services.delivery.email_wire import Message, WireChunk, bare_address, wire_chunks
from services.delivery.outcomes import ChannelGate, Outcome, SendResult

__all__ = ["EmailSender", "FileEmailSender", "Message", "SmtpEmailSender"]

Security = Literal["none", "starttls", "tls"]
CheckLine = tuple[bool, str]


class EmailSender(Protocol):
    """What the delivery engine needs from an email backend."""

    async def send(
        self, *, sender: str, recipient: str, message: Message, message_id: str
    ) -> SendResult: ...

    async def check(self) -> list[CheckLine]: ...

    async def close(self) -> None: ...


def _tls_version(smtp: SMTP) -> str:
    ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
    return (ssl_object.version() if ssl_object else None) or "TLS"


class _OpenFailed(Exception):
    """Opening a connection failed at one step; `result` says what that means for a message."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.reason)
        self.result = result


class _StaleConnection(Exception):
    """The connection died before anything of this message was sent: retry on a fresh one."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.reason)
        self.result = result


class _Slot:
    """One pooled connection: opened lazily, closed after `recycle_after` messages."""

    __slots__ = ("smtp", "used")

    def __init__(self) -> None:
        self.smtp: SMTP | None = None
        self.used = 0

    def discard(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
        self.smtp, self.used = None, 0


class SmtpEmailSender:
    """Sends over a pool of persistent aiosmtplib connections (`pool_size` messages at once)."""

    def __init__(
        self,
        host: str,
        port: int,
        security: Security,
        username: str | None,
        password: str | None,
        timeout: float = 30.0,
        pool_size: int = 4,
        recycle_after: int = 100,
        *,
        tls_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        if security not in ("none", "starttls", "tls"):
            raise ValueError("security must be none, starttls or tls")
        self.host, self.port, self.security = host, port, security
        self.username, self.password = username, password
        self.timeout = timeout
        self.recycle_after = max(1, recycle_after)
        # The system trust store by default, built once rather than per connection.
        self._tls_context = None if security == "none" else (
            tls_context or ssl.create_default_context()
        )
        self._local_hostname = local_hostname
        self._slots = [_Slot() for _ in range(max(1, pool_size))]
        self._idle: asyncio.LifoQueue[_Slot] = asyncio.LifoQueue()
        for slot in self._slots:
            self._idle.put_nowait(slot)
        self.connections_opened = 0
        self._gate = ChannelGate()

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    async def send(
        self, *, sender: str, recipient: str, message: Message, message_id: str
    ) -> SendResult:
        """Send one message to one recipient; provider_id is `message_id` when accepted."""
        try:
            sender, recipient = bare_address(sender), bare_address(recipient)
        except ValueError as exc:
            return SendResult(Outcome.FAILED, reason=str(exc))
        payload = wire_chunks(message)
        slot = await self._idle.get()  # LIFO: the most recently used, still-open connection
        try:
            refused = self._gate.refusal()  # checked with the slot: others may have just learnt
            if refused is not None:
                return refused
            result = await self._send_on(slot, sender, recipient, payload, message_id)
        except BaseException:  # cancelled mid-conversation: the connection's state is unknown
            slot.discard()
            raise
        finally:
            self._idle.put_nowait(slot)
        return self._gate.note(result)

    async def _send_on(
        self, slot: _Slot, sender: str, recipient: str, payload: list[bytes], message_id: str
    ) -> SendResult:
        for _attempt in range(2):
            reused = slot.smtp is not None and slot.smtp.is_connected
            if not reused:
                slot.discard()
                try:
                    slot.smtp = await self._open()
                except _OpenFailed as failure:
                    return failure.result
            assert slot.smtp is not None
            try:
                result = await self._transaction(slot.smtp, sender, recipient, payload, message_id)
            except _StaleConnection as stale:
                slot.discard()
                if reused:
                    continue  # the server dropped an idle connection: once more on a fresh one
                return stale.result
            slot.used += 1
            if not slot.smtp.is_connected:
                slot.discard()
            elif slot.used >= self.recycle_after:
                await self._quit(slot.smtp)
                slot.discard()
            return result
        return SendResult(Outcome.RETRY, reason=f"the connection to {self._where} keeps dropping")

    async def _transaction(
        self, smtp: SMTP, sender: str, recipient: str, payload: list[bytes], message_id: str
    ) -> SendResult:
        """MAIL, RCPT, DATA on an open connection, classified by the phase that failed."""
        mail_options: list[str] = []
        encoding = "ascii"
        if not (sender.isascii() and recipient.isascii()):
            if not smtp.supports_extension("smtputf8"):
                return SendResult(Outcome.FAILED, reason=(
                    f"{recipient} needs SMTPUTF8, which the SMTP server does not offer"))
            mail_options.append("SMTPUTF8")
            encoding = "utf-8"
        seven_bit = all(type(c) is WireChunk or c.isascii() for c in payload)
        if not seven_bit and smtp.supports_extension("8bitmime"):
            mail_options.append("BODY=8BITMIME")
        reverse_path, forward_path = (f"<{a}>".encode(encoding) for a in (sender, recipient))
        phase = "MAIL"
        loop = asyncio.get_running_loop()
        try:
            # One deadline, re-armed per reply, instead of aiosmtplib's wait_for() per command
            # (a timer, a callback and an extra event-loop pass for every reply).
            async with asyncio.timeout(None) as deadline:
                # SMTP.mail()/rcpt() would re-parse both addresses with email.utils each time.
                options = [option.encode("ascii") for option in mail_options]
                deadline.reschedule(loop.time() + self.timeout)
                response = await smtp.execute_command(
                    b"MAIL", b"FROM:" + reverse_path, *options, timeout=None)
                if response.code != 250:
                    raise SMTPSenderRefused(response.code, response.message, sender)
                phase = "RCPT"
                deadline.reschedule(loop.time() + self.timeout)
                response = await smtp.execute_command(b"RCPT", b"TO:" + forward_path, timeout=None)
                if response.code not in (250, 251):
                    raise SMTPRecipientRefused(response.code, response.message, recipient)
                phase = "DATA"
                deadline.reschedule(loop.time() + self.timeout)
                response = await smtp.execute_command(b"DATA", timeout=None)
                if response.code != 354:
                    raise SMTPDataError(response.code, response.message)
                protocol = smtp.protocol
                if protocol is None:
                    raise SMTPServerDisconnected("Connection lost")
                for chunk in payload:
                    protocol.write(chunk)
                protocol.write(b".\r\n")
                phase = "END"  # the whole message, final dot included, is handed to the socket
                deadline.reschedule(loop.time() + self.timeout)
                response = await protocol.read_response(timeout=None)
        except SMTPResponseException as exc:
            return await self._refused(smtp, exc, phase)
        except TimeoutError:
            unsent = smtp.transport.get_write_buffer_size() if smtp.transport else 0
            smtp.close()  # a reply may still come: this connection is out of step for good
            if phase == "END" and not unsent:
                return SendResult(Outcome.UNKNOWN, reason=(
                    f"timed out waiting for {self._where} to confirm the message: it may have "
                    "been delivered, so it is not retried"))
            return SendResult(Outcome.RETRY, reason=f"timed out at {phase} with {self._where}"
                              + (f" ({unsent} bytes of the message unsent)" if unsent else ""))
        except (SMTPServerDisconnected, OSError) as exc:
            smtp.close()
            lost = f"lost the connection to {self._where}"
            if phase == "END":
                return SendResult(Outcome.UNKNOWN, reason=(
                    f"{lost} after the message was handed over, before the server confirmed "
                    "it: it may have been delivered, so it is not retried"))
            result = SendResult(Outcome.RETRY, reason=f"{lost} at {phase}")
            if phase == "MAIL" and isinstance(exc, SMTPServerDisconnected):
                raise _StaleConnection(result) from exc
            return result
        if 200 <= response.code < 300:
            return SendResult.sent(message_id)
        if response.code == 421:
            smtp.close()
        return classify_reply(response.code, response.message, "END")

    async def _refused(self, smtp: SMTP, exc: SMTPResponseException, phase: str) -> SendResult:
        """A 4xx/5xx reply to MAIL, RCPT or DATA: reset the transaction, keep the connection."""
        if exc.code == 421 and phase == "MAIL":
            smtp.close()
            raise _StaleConnection(classify_reply(exc.code, exc.message, phase)) from exc
        if exc.code == 421 or not smtp.is_connected:
            smtp.close()
        else:
            try:
                await smtp.rset()
            except (SMTPException, OSError):
                smtp.close()
        if isinstance(exc, SMTPSenderRefused) and exc.code == 530:
            return SendResult(Outcome.CHANNEL_DOWN, error_code="530", reason=(
                f"the SMTP server requires a login ({reply_text(exc)}): "
                "set SMTP_USERNAME and SMTP_PASSWORD"))
        return classify_reply(exc.code, exc.message, phase)

    async def _open(self, report: list[CheckLine] | None = None) -> SMTP:
        """Connect, EHLO, STARTTLS, AUTH as configured; raise _OpenFailed naming step and fix."""
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        smtp = SMTP(
            hostname=self.host, port=self.port, timeout=self.timeout,
            use_tls=self.security == "tls", start_tls=False,
            tls_context=self._tls_context if self.security == "tls" else None,
            local_hostname=self._local_hostname,
        )
        step = "connect"
        try:
            greeting = await smtp.connect()
            self._note(report, f"connected to {self._where}: {one_line(greeting.message)}"
                       + (f" ({_tls_version(smtp)}, certificate valid for {self.host})"
                          if self.security == "tls" else ""))
            step = "EHLO"
            await smtp.ehlo()
            self._note(report, "EHLO accepted; the server offers: "
                       + (", ".join(sorted(smtp.esmtp_extensions)).upper() or "nothing"))
            if self.security == "starttls":
                step = "STARTTLS"
                await smtp.starttls(tls_context=self._tls_context)
                await smtp.ehlo()
                self._note(report, f"STARTTLS: {_tls_version(smtp)}, "
                                   f"certificate valid for {self.host}")
            elif self.security == "none":
                self._note(report, "SMTP_SECURITY=none: not encrypted (trusted networks only)")
            if self.username:
                step = "AUTH"
                await smtp.login(self.username, self.password or "")
                self._note(report, f"logged in as {self.username}")
        except (SMTPException, OSError, ValueError) as exc:  # OSError covers TLS and timeouts
            smtp.close()
            failure = open_failure(step, exc, where=self._where, security=self.security)
            raise _OpenFailed(failure) from exc
        self.connections_opened += 1
        return smtp

    @staticmethod
    def _note(report: list[CheckLine] | None, line: str) -> None:
        if report is not None:
            report.append((True, f"SMTP: {line}"))

    async def check(self, sender: str | None = None) -> list[CheckLine]:
        """For `campaign-bot check`: connect, EHLO, STARTTLS/TLS, AUTH (and MAIL FROM, RSET)."""
        lines: list[CheckLine] = []
        try:
            smtp = await self._open(report=lines)
        except _OpenFailed as failure:
            lines.append((False, f"SMTP: {failure.result.reason}"))
            return lines
        try:
            if sender:
                try:
                    await smtp.mail(sender)
                    await smtp.rset()
                    lines.append((True, f"SMTP: the server accepts mail from {sender} "
                                        "(MAIL FROM then RSET: nothing was sent)"))
                except SMTPResponseException as exc:
                    fix = ("set SMTP_USERNAME and SMTP_PASSWORD" if exc.code == 530 else
                           "set EMAIL_FROM to an address this SMTP account may send from")
                    refused = f"SMTP: MAIL FROM {sender} refused ({reply_text(exc)})"
                    lines.append((False, f"{refused}: {fix}"))
                except (SMTPException, OSError) as exc:
                    lines.append((False, f"SMTP: MAIL FROM {sender} failed ({exc})"))
            await self._quit(smtp)
        finally:
            smtp.close()
        return lines

    async def _quit(self, smtp: SMTP) -> None:
        with contextlib.suppress(SMTPException, OSError, TimeoutError):
            await asyncio.wait_for(smtp.quit(), timeout=min(self.timeout, 5.0))
        smtp.close()

    async def close(self) -> None:
        """QUIT every open connection."""
        open_slots = [slot for slot in self._slots if slot.smtp is not None]
        await asyncio.gather(*(self._quit(slot.smtp) for slot in open_slots if slot.smtp))
        for slot in open_slots:
            slot.discard()
