"""A local HTTP server speaking enough of Twilio's REST API for the real twilio client.

    async with FakeTwilio() as tw:              # 127.0.0.1, a free port
        sender = TwilioSmsSender(api_url=tw.url, account_sid=tw.account_sid, ...)
        tw.fail_next(429, n=2, retry_after=1)   # the next two POSTs get 429 / 20429
        tw.fail_for("+5215512345678", 21610)    # this recipient always gets 21610
        tw.fail_next("drop")                    # accept the message, then drop the connection
        tw.fail_next(500, n=3, stored=True)     # store the message, then answer 500 anyway
        tw.messages                             # accepted messages, with monotonic timestamps

Faults are an HTTP status (429, 500, 503, 401, …: Twilio's JSON error body with the usual code),
a Twilio error code (21211, 21610, 21614, 21612, 21408, …: with its usual HTTP status), or
"drop": the message is accepted and recorded, then the connection is cut without an answer.
A 5xx normally stores nothing; with `stored=True` the message is stored (and will be sent, and
listed) although the answer says 500, as Twilio does when it fails after taking a message.
`delay` holds every answer back (after recording the request), for read timeouts; `list_faults`
makes the next Messages list GETs fail with a status (Twilio still down while asked).

Served: POST `/2010-04-01/Accounts/{sid}/Messages.json`, GET of the same (the Messages list,
newest first, filtered by `To`, `From` and `DateSent` like Twilio's, paged with `PageSize`
and `Page`/`PageToken`), `GET /2010-04-01/Accounts/{sid}.json`,
`GET …/IncomingPhoneNumbers.json?PhoneNumber=`, and Messaging's `GET /v1/Services/{sid}` (point
both the api and messaging domains at `tw.url`). Errors use Twilio's JSON error body.
Twilio → us: `send_status_callback()` and `send_inbound()` post signed webhooks.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
Fault = int | Literal["drop"]

# Twilio error code → (HTTP status, message); {to}/{from_} are filled in.
ERRORS: dict[int, tuple[int, str]] = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource {path} was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "An internal server error has occurred"),
    21211: (400, "Invalid 'To' Phone Number: {to}"),
    21408: (400, "Permission to send an SMS has not been enabled for the region "
                 "indicated by the 'To' number: {to}"),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21606: (400, "The From phone number {from_} is not a valid, SMS-capable inbound phone "
                 "number or short code for your account."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21612: (400, "The 'To' phone number: {to}, is not currently reachable using the 'From' "
                 "phone number: {from_} via SMS."),
    21614: (400, "'To' number is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
}
_BY_STATUS = {429: 20429, 500: 20500, 401: 20003, 404: 20404}


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _segments(body: str) -> int:
    """A rough GSM-7 count: the fake need not agree with sms_text to the character."""
    return 1 if len(body) <= 160 else -(-len(body) // 153)


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment)


@dataclass
class ReceivedMessage:
    """A message the fake accepted (including ones whose response it then dropped)."""

    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    form: dict[str, str]
    received_at: float  # time.monotonic() when the request arrived: for rate checks
    created_at: datetime
    answered: bool = True  # False when the fake dropped the connection instead of answering


@dataclass
class Request:
    """Every request the fake saw, accepted or not: for 'exactly one POST' assertions."""

    method: str
    path: str
    status: int | None  # None: the connection was dropped
    to: str | None = None


@dataclass
class _Fault:
    fault: Fault
    retry_after: float | None = None
    stored: bool = False


@dataclass
class FakeTwilio:
    """Twilio-shaped HTTP server on 127.0.0.1 for tests and benchmarks."""

    account_sid: str = field(default_factory=lambda: _sid("AC"))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    phone_numbers: tuple[str, ...] = ("+15005550006",)
    messaging_service_sids: tuple[str, ...] = field(default_factory=lambda: (_sid("MG"),))
    delay: float = 0.0  # seconds before answering any request (after recording it)
    messages: list[ReceivedMessage] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    url: str = field(default="", init=False)
    _next: deque[_Fault] = field(default_factory=deque, init=False, repr=False)
    _per_recipient: dict[str, _Fault] = field(default_factory=dict, init=False, repr=False)
    _list_faults: deque[int] = field(default_factory=deque, init=False, repr=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    # -- faults ---------------------------------------------------------------------------
    def fail_next(self, fault: Fault, n: int = 1, *, retry_after: float | None = None,
                  stored: bool = False) -> None:
        """The next `n` message POSTs get an HTTP status, a Twilio code or "drop" (see above);
        `stored`: the message is kept (and listed) though the answer is an error."""
        self._next.extend(_Fault(fault, retry_after, stored) for _ in range(n))

    def fail_for(self, to: str, fault: Fault, *, retry_after: float | None = None) -> None:
        """Every message POST to `to` gets this HTTP status / Twilio code, or "drop"."""
        self._per_recipient[to] = _Fault(fault, retry_after)

    def fail_lists(self, status: int, n: int = 1) -> None:
        """The next `n` Messages list GETs answer `status` (e.g. 500, 503)."""
        self._list_faults.extend([status] * n)

    def clear_faults(self) -> None:
        """Forget every injected fault."""
        self._next.clear()
        self._per_recipient.clear()
        self._list_faults.clear()

    @property
    def posts(self) -> list[Request]:
        """The message POSTs received, whatever their answer."""
        return [r for r in self.requests
                if r.method == "POST" and r.path.endswith("/Messages.json")]

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> FakeTwilio:
        app = web.Application()
        base = "/2010-04-01/Accounts/{sid}"
        app.router.add_post(base + "/Messages.json", self._create_message)
        app.router.add_get(base + "/Messages.json", self._list_messages)
        app.router.add_get(base + ".json", self._fetch_account)
        app.router.add_get(base + "/IncomingPhoneNumbers.json", self._list_numbers)
        app.router.add_get("/v1/Services/{sid}", self._fetch_service)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers -------------------------------------------------------------------------
    def _authorised(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        expected = (self.account_sid, self.auth_token)
        return scheme.lower() == "basic" and (login, password) == expected

    def _error(self, request: web.Request, code: int, status: int | None = None, **values: Any
               ) -> web.Response:
        usual, template = ERRORS.get(code, (400, "Error {code}"))
        status = status or usual
        message = template.format(path=request.path, code=code, **{"to": "", "from_": ""} | values)
        body = {"code": code, "message": message, "status": status,
                "more_info": f"https://www.twilio.com/docs/errors/{code}"}
        return web.json_response(body, status=status)

    def _gate(self, request: web.Request) -> web.Response | None:
        """401 for wrong credentials, 404 for another account's URL; None when allowed."""
        if not self._authorised(request):
            return self._error(request, 20003)
        if request.match_info.get("sid", self.account_sid) != self.account_sid and (
            not request.path.startswith("/v1/")
        ):
            return self._error(request, 20404)
        return None

    async def _answer(self, request: web.Request, response: web.Response, to: str | None = None
                      ) -> web.Response:
        self.requests.append(Request(request.method, request.path, response.status, to))
        if self.delay:
            await asyncio.sleep(self.delay)
        return response

    def _take_fault(self, to: str) -> _Fault | None:
        if to in self._per_recipient:
            return self._per_recipient[to]
        return self._next.popleft() if self._next else None

    async def _create_message(self, request: web.Request) -> web.StreamResponse:
        received_at = time.monotonic()
        form = {k: str(v) for k, v in (await request.post()).items()}
        to, from_ = form.get("To", ""), form.get("From")
        service, body = form.get("MessagingServiceSid"), form.get("Body", "")
        gate = self._gate(request)
        if gate is not None:
            return await self._answer(request, gate, to)
        fault = self._take_fault(to)
        if fault is not None and fault.fault != "drop" and not fault.stored:
            return await self._answer(request, self._fault_response(request, fault, to, from_), to)
        problem = self._validate(to, from_, service, body, form)
        if problem is not None:
            error = self._error(request, problem, to=to, from_=from_)
            return await self._answer(request, error, to)
        message = ReceivedMessage(
            sid=_sid("SM"), to=to, from_=from_, messaging_service_sid=service, body=body,
            status_callback=form.get("StatusCallback"), form=form, received_at=received_at,
            created_at=datetime.now(UTC), answered=fault is None,
        )
        self.messages.append(message)
        if fault is not None and fault.fault != "drop":  # stored, and yet an error answer
            message.answered = False
            return await self._answer(request, self._fault_response(request, fault, to, from_), to)
        if fault is not None:  # "drop": accepted, but the client never hears back
            self.requests.append(Request(request.method, request.path, None, to))
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        created = web.json_response(self._resource(message), status=201)
        return await self._answer(request, created, to)

    def _fault_response(self, request: web.Request, fault: _Fault, to: str, from_: str | None
                        ) -> web.Response:
        assert isinstance(fault.fault, int)
        if fault.fault >= 1000:  # a Twilio error code
            response = self._error(request, fault.fault, to=to, from_=from_)
        else:  # an HTTP status
            code = _BY_STATUS.get(fault.fault, 20500 if fault.fault >= 500 else 20001)
            response = self._error(request, code, fault.fault, to=to, from_=from_)
        if fault.retry_after is not None:
            response.headers["Retry-After"] = f"{fault.retry_after:g}"
        return response

    def _validate(self, to: str, from_: str | None, service: str | None, body: str,
                  form: dict[str, str]) -> int | None:
        if not E164.match(to):
            return 21211
        if not from_ and not service:
            return 21603
        if from_ and from_ not in self.phone_numbers:
            return 21606
        if service and service not in self.messaging_service_sids:
            return 20404
        if not body and "MediaUrl" not in form:
            return 21602
        if len(body) > 1600:
            return 21617
        return None

    def _resource(self, m: ReceivedMessage) -> dict[str, Any]:
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{m.sid}"
        created = _rfc2822(m.created_at)
        return {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": m.body,
            "date_created": created, "date_sent": None, "date_updated": created,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": m.from_, "messaging_service_sid": m.messaging_service_sid,
            "num_media": "0", "num_segments": str(_segments(m.body)),
            "price": None, "price_unit": "USD", "sid": m.sid,
            "status": "accepted" if m.messaging_service_sid else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"}, "to": m.to, "uri": f"{uri}.json",
        }

    async def _list_messages(self, request: web.Request) -> web.Response:
        """Twilio's Messages list: newest first, `To`/`From`/`DateSent` filters, pages."""
        gate = self._gate(request)
        if gate is not None:
            return await self._answer(request, gate)
        if self._list_faults:
            status = self._list_faults.popleft()
            code = _BY_STATUS.get(status, 20500 if status >= 500 else 20001)
            return await self._answer(request, self._error(request, code, status))
        query = request.query
        found = [m for m in reversed(self.messages)
                 if query.get("To") in (None, m.to) and query.get("From") in (None, m.from_)]
        for key, keep in (("DateSent", lambda d, day: d == day),
                          ("DateSent>", lambda d, day: d >= day),
                          ("DateSent<", lambda d, day: d <= day)):
            if key in query:
                # Twilio filters on the day a message was *sent*: a message still queued has
                # no date_sent and is left out (this fake sends at once, like a quick Twilio).
                day = query[key][:10]
                found = [m for m in found if keep(m.created_at.date().isoformat(), day)]
        size = max(1, min(1000, int(query.get("PageSize", "50"))))
        page = int(query.get("Page", "0"))
        chunk = found[page * size:(page + 1) * size]
        uri = request.path
        more = (page + 1) * size < len(found)
        return await self._answer(request, web.json_response({
            "messages": [self._resource(m) for m in chunk], "page": page, "page_size": size,
            "first_page_uri": f"{uri}?PageSize={size}&Page=0", "uri": request.path_qs,
            "next_page_uri": f"{uri}?PageSize={size}&Page={page + 1}" if more else None,
            "previous_page_uri": None, "start": page * size, "end": page * size + len(chunk),
        }))

    async def _fetch_account(self, request: web.Request) -> web.Response:
        gate = self._gate(request)
        if gate is not None:
            return await self._answer(request, gate)
        uri = f"/2010-04-01/Accounts/{self.account_sid}"
        return await self._answer(request, web.json_response({
            "sid": self.account_sid, "owner_account_sid": self.account_sid,
            "friendly_name": "Fake clinic account", "status": "active", "type": "Full",
            "date_created": _rfc2822(datetime(2024, 1, 1, tzinfo=UTC)),
            "date_updated": _rfc2822(datetime(2024, 1, 1, tzinfo=UTC)), "uri": f"{uri}.json",
            "subresource_uris": {"messages": f"{uri}/Messages.json",
                                 "incoming_phone_numbers": f"{uri}/IncomingPhoneNumbers.json"},
        }))

    async def _list_numbers(self, request: web.Request) -> web.Response:
        gate = self._gate(request)
        if gate is not None:
            return await self._answer(request, gate)
        wanted = request.query.get("PhoneNumber")
        numbers = [n for n in self.phone_numbers if wanted is None or n == wanted]
        uri = f"/2010-04-01/Accounts/{self.account_sid}/IncomingPhoneNumbers.json"
        records = [{
            "sid": _sid("PN"), "account_sid": self.account_sid, "phone_number": n,
            "friendly_name": n, "status": "in-use",
            "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
        } for n in numbers]
        return await self._answer(request, web.json_response({
            "incoming_phone_numbers": records, "end": max(len(records) - 1, 0),
            "first_page_uri": uri, "next_page_uri": None, "page": 0, "page_size": 50,
            "previous_page_uri": None, "start": 0, "uri": uri,
        }))

    async def _fetch_service(self, request: web.Request) -> web.Response:
        gate = self._gate(request)
        if gate is not None:
            return await self._answer(request, gate)
        sid = request.match_info["sid"]
        if sid not in self.messaging_service_sids:
            return await self._answer(request, self._error(request, 20404))
        return await self._answer(request, web.json_response({
            "sid": sid, "account_sid": self.account_sid, "friendly_name": "Clinic campaigns",
            "url": f"https://messaging.twilio.com/v1/Services/{sid}",
            "links": {"phone_numbers": f"https://messaging.twilio.com/v1/Services/{sid}/PhoneNumbers"},
        }))

    # -- Twilio → the bot (webhooks) ------------------------------------------------------
    async def _post_signed(self, url: str, params: dict[str, str]) -> int:
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        async with aiohttp.ClientSession() as session, session.post(
            url, data=params, headers={"X-Twilio-Signature": signature}
        ) as response:
            return response.status

    async def send_status_callback(self, message: ReceivedMessage, status: str, *,
                                   error_code: int | None = None, url: str | None = None) -> int:
        """POST a signed delivery callback ("sent", "delivered", "failed", "undelivered")."""
        target = url or message.status_callback
        if not target:
            raise ValueError("the message has no StatusCallback and no url was given")
        params = {"AccountSid": self.account_sid, "MessageSid": message.sid, "SmsSid": message.sid,
                  "MessageStatus": status, "SmsStatus": status, "To": message.to,
                  "From": message.from_ or self.phone_numbers[0], "ApiVersion": "2010-04-01"}
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return await self._post_signed(target, params)

    async def send_inbound(self, url: str, *, from_: str, body: str, to: str | None = None) -> int:
        """POST a signed inbound SMS (a patient's reply, e.g. "STOP") to the bot's webhook."""
        sid = _sid("SM")
        params = {"AccountSid": self.account_sid, "MessageSid": sid, "SmsSid": sid,
                  "SmsMessageSid": sid, "From": from_, "To": to or self.phone_numbers[0],
                  "Body": body, "NumMedia": "0", "NumSegments": "1", "ApiVersion": "2010-04-01"}
        return await self._post_signed(url, params)
