"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 (a free port) with injectable faults.

    with FakeSmtp() as smtp:
        smtp.fail_next(451, n=1, at="rcpt")
        ... send to 127.0.0.1:smtp.port ...
        smtp.messages[0].parsed()["Subject"]

Faults: a reply code for the next N messages or for one recipient (at MAIL, RCPT or DATA),
dropping the connection before DATA or after the message was received (it is recorded, then
the connection closes with no reply), stalling after DATA, a login (535 when wrong), STARTTLS
or implicit TLS with a certificate from a throwaway test CA (trustme).

The server can also go away as a whole: `away(30)` (non-blocking) or `go_away()` /
`come_back()` close every open connection and leave nothing listening on the port (clients
get ECONNREFUSED), then listen again on the same port.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Literal, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Phase = Literal["mail", "rcpt", "data"]


@dataclass(frozen=True)
class Received:
    """One message as the server received it (dot-stuffing undone)."""

    sender: str
    recipients: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        """The message parsed by the stdlib parser."""
        return cast(EmailMessage, email.message_from_bytes(self.data, policy=email.policy.default))


@dataclass
class _Fault:
    action: Literal["reply", "drop", "stall"]
    at: Phase
    remaining: int | None  # None: every time (a recipient's fault)
    code: int = 0
    text: str = ""
    recipient: str | None = None
    seconds: float = 0.0


_DEFAULT_TEXT = {
    421: "4.3.2 Service not available, closing transmission channel",
    451: "4.3.0 Temporary local problem, try again later",
    452: "4.2.2 Mailbox full",
    550: "5.1.1 Mailbox unavailable",
    552: "5.3.4 Message too big",
    554: "5.7.1 Message rejected",
}


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: list[_Fault] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    quits: int = 0


class _Handler:
    """aiosmtpd hooks: record envelopes, apply the first matching fault."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def _take(self, at: Phase, recipients: list[str]) -> _Fault | None:
        with self.state.lock:
            for fault in self.state.faults:
                if fault.at != at or (fault.recipient and fault.recipient not in recipients):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.state.faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _drop(server: SMTP) -> str:
        if server.transport is not None:
            server.transport.close()
        return "250 OK (never delivered: the connection is closed)"

    @staticmethod
    def _reply(server: SMTP, fault: _Fault) -> str:
        if fault.code == 421 and server.transport is not None:
            # Like a real server: say 421, then hang up (after the reply is written).
            asyncio.get_running_loop().call_soon(server.transport.close)
        return f"{fault.code} {fault.text or _DEFAULT_TEXT.get(fault.code, 'Error')}"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = self._take("mail", [])
        if fault is not None and fault.action == "stall":
            await asyncio.sleep(fault.seconds)
        if fault is not None and fault.action == "drop":
            return self._drop(server)
        if fault is not None and fault.action == "reply":
            return self._reply(server, fault)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = self._take("rcpt", [address])
        if fault is not None and fault.action == "stall":
            await asyncio.sleep(fault.seconds)
        if fault is not None and fault.action == "drop":
            return self._drop(server)
        if fault is not None and fault.action == "reply":
            return self._reply(server, fault)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self._take("data", list(envelope.rcpt_tos))
        if fault is not None and fault.action == "reply":
            return self._reply(server, fault)
        content = envelope.original_content or b""
        received = Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(content))
        with self.state.lock:
            self.state.messages.append(received)
        if fault is not None and fault.action == "drop":
            return self._drop(server)
        if fault is not None and fault.action == "stall":
            await asyncio.sleep(fault.seconds)
        return "250 OK: queued"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.state.lock:
            self.state.quits += 1
        return "221 Bye"


class _Controller(Controller):
    """Controller on a free port (port 0), counting connections; it can go away and return."""

    def __init__(self, state: _State, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=0, **kwargs)
        self.state = state
        self.sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        # While away, a bound socket that does not listen keeps the port ours: connects are
        # refused (nothing listens) and no other program can take the port meanwhile.
        self.placeholder: socket.socket | None = None
        self.return_timer: asyncio.TimerHandle | None = None

    def factory(self) -> SMTP:
        with self.state.lock:
            self.state.connections += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "AUTH without TLS": deliberate in tests
            session = super().factory()
        self.sessions.add(session)
        return session

    def _create_server(self) -> Coroutine[Any, Any, asyncio.AbstractServer]:
        # As aiosmtpd's, plus SO_REUSEPORT: the placeholder can then bind the port while
        # this server still holds it, and the server can bind it again while the
        # placeholder does.
        return self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=self.port,
            ssl=self.ssl_context, reuse_port=True,
        )

    async def go_away(self) -> None:
        """(In the controller's loop.) Stop listening, then close every open session."""
        if self.return_timer is not None:
            self.return_timer.cancel()
            self.return_timer = None
        if self.placeholder is not None:
            return
        placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        placeholder.bind((self.hostname, self.port))
        self.placeholder = placeholder
        assert self.server is not None
        self.server.close()  # closes the listening socket, not the sessions (Python ≤ 3.12)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()

    async def come_back(self) -> None:
        """(In the controller's loop.) Listen again on the same port."""
        if self.return_timer is not None:
            self.return_timer.cancel()
            self.return_timer = None
        if self.placeholder is None:
            return
        self.server = await self._create_server()
        self.placeholder.close()
        self.placeholder = None

    async def away_for(self, seconds: float) -> None:
        await self.go_away()
        self.return_timer = self.loop.call_later(
            seconds, lambda: self.loop.create_task(self.come_back()))

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class FakeSmtp:
    """A threaded aiosmtpd server; use as a context manager."""

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        tls: Literal["starttls", "implicit"] | None = None,
    ) -> None:
        self._state = _State()
        self.auth = auth
        self.tls = tls
        self.client_tls_context: ssl.SSLContext | None = None
        kwargs: dict[str, Any] = {"server_hostname": "fake-smtp.test", "ready_timeout": 5.0}
        if tls:
            import trustme

            ca = trustme.CA()
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
            self.client_tls_context = ssl.create_default_context()
            ca.configure_trust(self.client_tls_context)
            if tls == "starttls":
                kwargs.update(tls_context=server_context, require_starttls=True)
            else:
                kwargs["ssl_context"] = server_context
        if auth:
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=False)
        self._controller = _Controller(self._state, _Handler(self._state), **kwargs)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (isinstance(data, LoginPassword) and self.auth is not None
              and (data.login.decode(), data.password.decode()) == self.auth)
        return AuthResult(success=ok, handled=False)

    def __enter__(self) -> FakeSmtp:
        self._controller.start()
        with self._state.lock:
            self._state.connections = 0  # the controller's own start-up probe
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._controller.stop()
        if self._controller.placeholder is not None:  # stopped while away
            self._controller.placeholder.close()
            self._controller.placeholder = None

    def _in_server_loop(self, action: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `action` in the server's own loop (thread) and wait until it is done."""
        if threading.current_thread() is self._controller._thread:
            raise RuntimeError("call this from outside the server's thread (a handler would "
                               "wait for itself)")
        future = asyncio.run_coroutine_threadsafe(action(), self._controller.loop)
        future.result(timeout=10)

    def go_away(self) -> None:
        """Close every open connection and listen no more: connects are refused from now on."""
        self._in_server_loop(self._controller.go_away)

    def come_back(self) -> None:
        """Listen again, on the same port (also cancels the return `away()` scheduled)."""
        self._in_server_loop(self._controller.come_back)

    def away(self, seconds: float) -> None:
        """`go_away()` now and `come_back()` after `seconds`; returns at once."""
        self._in_server_loop(lambda: self._controller.away_for(seconds))

    @property
    def is_away(self) -> bool:
        return self._controller.placeholder is not None

    @property
    def port(self) -> int:
        return int(self._controller.port)

    @property
    def messages(self) -> list[Received]:
        with self._state.lock:
            return list(self._state.messages)

    @property
    def connections(self) -> int:
        """Connections accepted since start."""
        with self._state.lock:
            return self._state.connections

    @property
    def quits(self) -> int:
        with self._state.lock:
            return self._state.quits

    def _add(self, fault: _Fault) -> None:
        with self._state.lock:
            self._state.faults.append(fault)

    def fail_next(self, code: int, n: int = 1, at: Phase = "rcpt", text: str = "") -> None:
        """Reply `code` to the next `n` messages at MAIL, RCPT or DATA (after the data)."""
        self._add(_Fault("reply", at, n, code=code, text=text))

    def fail_recipient(self, recipient: str, code: int, at: Phase = "rcpt", text: str = "") -> None:
        """Reply `code` every time this recipient is given (at RCPT, or at the end of DATA)."""
        self._add(_Fault("reply", at, None, code=code, text=text, recipient=recipient))

    def drop_next(self, n: int = 1, at: Phase = "data") -> None:
        """Close the connection: at MAIL/RCPT (nothing received), or after DATA (recorded)."""
        self._add(_Fault("drop", at, n))

    def stall_next(self, seconds: float, n: int = 1, at: Phase = "data") -> None:
        """Wait `seconds` before replying at MAIL/RCPT, or after recording the message (DATA)."""
        self._add(_Fault("stall", at, n, seconds=seconds))
