"""Socket Mode for the Slack stand-in: `apps.connections.open` and the WebSocket it hands out.

    async with SocketModeSlack() as slack:          # FakeSlack, plus Socket Mode
        # the app: SLACK_API_URL=slack.url, SLACK_APP_TOKEN=slack.app_token ("xapp-test")
        connection = await slack.wait_connected()    # the app connected; `hello` was sent
        envelope = await slack.slash_command("help")  # or slack.push(type, payload)
        ack = await slack.wait_ack(envelope)         # {"envelope_id": …} (+ "payload")
        await slack.wait_closed(connection)          # the app closed the socket itself
        connection.close_code, slack.socket_errors   # 1000; what Slack would not accept

As Slack does: `apps.connections.open` takes only the app-level token (a bot token gets
`not_allowed_token_type`) and answers a one-use URL on another host (here: another port),
like `wss://wss-primary.slack.com/link/?ticket=…&app_id=…`. The socket greets with `hello`;
envelopes carry `envelope_id`, `type`, `payload`, `accepts_response_payload`,
`retry_attempt` and `retry_reason`; the app acks with `{"envelope_id", "payload"?}`. An ack
for an unknown or already-acked envelope, a payload on an envelope that accepts none, or a
message that is not a JSON object lands in `socket_errors` (Slack ignores them).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import WSCloseCode, WSMsgType, web

from tests.fakes.slack_api import Call, FakeSlack
from tests.fakes.slack_files import SlackError
from tests.fakes.slack_requests import fill_state
from tests.fakes.slack_views import APP_ID, BOT_USER_ID, DEFAULT_USER, TEAM_ID

__all__ = ["ACK_SECONDS", "APP_TOKEN", "Envelope", "SocketConnection", "SocketModeSlack"]

APP_TOKEN = "xapp-test"
ACK_SECONDS = 3.0  # Slack retries an envelope not acked within 3 seconds
T = TypeVar("T")


@dataclass
class SocketConnection:
    """One WebSocket the app opened with a ticket from `apps.connections.open`."""

    ticket: str
    ws: web.WebSocketResponse
    received: list[Any] = field(default_factory=list)  # every text message the app sent
    closed: bool = False
    close_code: int | None = None  # 1000: the app closed it; 1006: the connection dropped

    @property
    def closed_by_app(self) -> bool:
        return self.closed and self.close_code == WSCloseCode.OK


@dataclass
class Envelope:
    """One envelope pushed to the app, and its ack once it came."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    sent_at: float
    ack: dict[str, Any] | None = None
    acked_after: float | None = None  # seconds from push to ack


class SocketModeSlack(FakeSlack):
    """FakeSlack serving Socket Mode: `socket_url` is where the app's WebSocket lands."""

    def __init__(self, *, app_token: str = APP_TOKEN, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app_token = app_token
        self.connections: list[SocketConnection] = []
        self.envelopes: dict[str, Envelope] = {}
        self.socket_errors: list[str] = []
        self.socket_url = ""
        self._tickets: set[str] = set()
        self._changed = asyncio.Condition()
        self._socket_runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> SocketModeSlack:
        await super().__aenter__()
        app = web.Application()
        app.router.add_get("/link/", self._link)
        self._socket_runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                            shutdown_timeout=1.0)
        await self._socket_runner.setup()
        site = web.TCPSite(self._socket_runner, "127.0.0.1", 0)
        await site.start()
        self.socket_url = f"ws://127.0.0.1:{self._socket_runner.addresses[0][1]}/link/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for connection in self.connections:
                if not connection.closed:
                    await connection.ws.close(code=WSCloseCode.GOING_AWAY)
            if self._socket_runner is not None:
                await self._socket_runner.cleanup()
        finally:
            await super().__aexit__(*exc)

    # -- apps.connections.open ------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["method"] != "apps.connections.open":
            return await super()._api(request)
        params = await self._params(request)
        call = Call("apps.connections.open", params, self._token(request, params))
        self.calls.append(call)
        try:
            if call.token is None:
                raise SlackError("not_authed")
            if not call.token.startswith("xapp-"):
                raise SlackError("not_allowed_token_type")
            if call.token != self.app_token:
                raise SlackError("invalid_auth")
            ticket = secrets.token_hex(16)
            self._tickets.add(ticket)
            call.response = {"ok": True,
                             "url": f"{self.socket_url}?ticket={ticket}&app_id={APP_ID}"}
        except SlackError as exc:
            call.response = exc.body
        return web.json_response(call.response)

    # -- the WebSocket ----------------------------------------------------------------------

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:  # unknown or used: Slack refuses the upgrade
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse()  # answers the client's pings (slack_sdk sends them)
        await ws.prepare(request)
        connection = SocketConnection(ticket, ws)
        await ws.send_json({
            "type": "hello", "num_connections": 1 + sum(not c.closed for c in self.connections),
            "debug_info": {"host": "applink-fake", "build_number": 1,
                           "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        })
        self.connections.append(connection)
        await self._notify()
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._received(connection, message.data)
                    await self._notify()
        finally:
            connection.closed, connection.close_code = True, ws.close_code
            await self._notify()
        return ws

    def _received(self, connection: SocketConnection, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            message = data
        connection.received.append(message)
        if not isinstance(message, dict) or not isinstance(message.get("envelope_id"), str):
            self.socket_errors.append(f"not an ack: {data[:200]}")
            return
        envelope = self.envelopes.get(message["envelope_id"])
        if envelope is None:
            self.socket_errors.append(f"ack for an unknown envelope: {data[:200]}")
        elif envelope.ack is not None:
            self.socket_errors.append(f"second ack for {envelope.envelope_id}")
        else:
            envelope.ack = message
            envelope.acked_after = time.monotonic() - envelope.sent_at
            if "payload" in message and not envelope.accepts_response_payload:
                self.socket_errors.append(
                    f"payload on {envelope.envelope_id}, which accepts none (Slack drops it)")
            elif envelope.payload.get("type") == "view_submission":  # Slack applies the ack
                view_id = envelope.payload["view"]["id"]
                errors = self.apply_view_response(view_id, message.get("payload"))
                self.socket_errors.extend(f"view in the ack of {view_id}: {e}" for e in errors)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, check: Callable[[], T], seconds: float, what: str) -> T:
        async with self._changed:
            try:
                return await asyncio.wait_for(self._changed.wait_for(check), seconds)
            except TimeoutError:
                raise AssertionError(f"Socket Mode: no {what} within {seconds} s") from None

    # -- what a test drives and waits for ---------------------------------------------------

    @property
    def connection(self) -> SocketConnection | None:
        """The newest open connection (where envelopes go), if any."""
        return next((c for c in reversed(self.connections) if not c.closed), None)

    async def wait_connected(self, seconds: float = 10.0) -> SocketConnection:
        return await self._wait(lambda: self.connection, seconds, "connection")

    async def wait_closed(self, connection: SocketConnection,
                          seconds: float = 10.0) -> SocketConnection:
        await self._wait(lambda: connection.closed, seconds, "close of the socket")
        return connection

    async def push(self, type: str, payload: dict[str, Any], *,
                   accepts_response_payload: bool | None = None) -> Envelope:
        """Send an envelope down the newest connection, as Slack delivers a request."""
        connection = self.connection
        if connection is None:
            raise AssertionError("Socket Mode: no open connection to push to")
        if accepts_response_payload is None:  # Slack: commands and interactions do
            accepts_response_payload = type in ("slash_commands", "interactive")
        envelope = Envelope(str(uuid.uuid4()), type, payload, accepts_response_payload,
                            time.monotonic())
        self.envelopes[envelope.envelope_id] = envelope
        await connection.ws.send_json({
            "envelope_id": envelope.envelope_id, "payload": payload, "type": type,
            "accepts_response_payload": accepts_response_payload,
            "retry_attempt": 0, "retry_reason": "",
        })
        return envelope

    async def wait_ack(self, envelope: Envelope, seconds: float = 5.0) -> dict[str, Any]:
        """The app's ack of `envelope` (fails after `seconds`; check `acked_after` too)."""
        return await self._wait(lambda: envelope.ack, seconds,
                                f"ack of {envelope.type} {envelope.envelope_id}")

    async def slash_command(self, text: str = "", *, command: str = "/campaign",
                            user_id: str = DEFAULT_USER, channel_id: str = "C0CAMPAIGNS",
                            trigger_id: str | None = None) -> Envelope:
        """A slash command as Socket Mode carries it (the HTTP form's fields, as JSON)."""
        return await self.push("slash_commands", {
            "token": "verification", "team_id": TEAM_ID, "team_domain": "clinic",
            "channel_id": channel_id, "channel_name": "marketing", "user_id": user_id,
            "user_name": user_id.lower(), "command": command, "text": text,
            "api_app_id": APP_ID, "is_enterprise_install": "false",
            "response_url": self.new_response_url(channel_id, user_id),
            "trigger_id": trigger_id or self.new_trigger_id(),
        })

    async def view_submission(self, view: dict[str, Any], values: dict[str, Any] | None = None,
                              *, user_id: str = DEFAULT_USER) -> Envelope:
        """Submit a view the app opened (`values` as in `fill_state`); its ack's
        `response_action` is applied to the views once it comes, as Slack does."""
        state = fill_state(view, values or {}, slack=self)
        return await self.push("interactive", {
            "type": "view_submission", "team": {"id": TEAM_ID, "domain": "clinic"},
            "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(),
                     "team_id": TEAM_ID},
            "api_app_id": APP_ID, "token": "verification", "enterprise": None,
            "is_enterprise_install": False, "trigger_id": self.new_trigger_id(view["id"]),
            "view": {**view, "state": {"values": state}}, "response_urls": [],
        })

    async def event(self, event: dict[str, Any]) -> Envelope:
        """An Events API callback for `event` (no response payload accepted)."""
        return await self.push("events_api", {
            "token": "verification", "team_id": TEAM_ID, "api_app_id": APP_ID,
            "event": {"event_ts": f"{time.time():.6f}", **event}, "type": "event_callback",
            "event_id": "Ev" + secrets.token_hex(5).upper(), "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True,
                                "is_enterprise_install": False}],
            "is_ext_shared_channel": False,
        })
