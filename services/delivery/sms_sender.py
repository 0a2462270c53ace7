"""Sending one SMS through Twilio's REST API (the official client); sms_outbox.py writes them
to a file instead.

Each sender classifies what happened into a `SendResult` (outcomes.py); the delivery engine
does the claiming, rate limiting (rate_limit.py), retrying and bookkeeping.
"""

from __future__ import annotations

import base64
import logging
import re
import unicodedata
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from services.delivery.outcomes import ChannelGate, Outcome, SendResult
from services.delivery.sms_text import check_length

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.twilio.com"
STATUS_CALLBACK_PATH = "/twilio/status"
CREDENTIALS_REJECTED = (
    "Twilio rejected the credentials (20003): check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
)
# Errors that every further message on this channel would get too (not the recipient's fault).
_CHANNEL_WIDE = {
    20005: "Twilio says the account is not active ({code}): {message}",
    21212: "Twilio refused the sender ({code}): {message}; check TWILIO_FROM_NUMBER",
    21660: "Twilio refused the sender ({code}): {message}; check TWILIO_FROM_NUMBER",
}
_PHONE = re.compile(r"\+?\d[\d ().-]{5,}\d")
_SENT_BEFORE = re.compile(r"^Unable to \w+ record: ")
_CLOCK_SLACK = timedelta(minutes=1)
# What Twilio's smart encoding may have replaced in a body before storing it.
_SMART = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                        "\u2013": "-", "\u2014": "-", "\u2026": "...", "\u00a0": " "})

Check = tuple[bool, str]


class SmsSender(Protocol):
    """What the delivery engine needs from an SMS backend."""

    can_ask: bool  # whether `find_sent` can tell if an earlier hand-over reached the provider

    async def send(self, *, to: str, body: str) -> SendResult: ...
    async def find_sent(self, *, to: str, body: str, since: datetime) -> SendResult | None: ...
    async def check(self) -> list[Check]: ...
    async def close(self) -> None: ...


def status_callback_url(public_base_url: str | None) -> str | None:
    """`PUBLIC_BASE_URL/twilio/status`, or None when the bot has no public URL."""
    return public_base_url.rstrip("/") + STATUS_CALLBACK_PATH if public_base_url else None


def _scrub(message: str) -> str:
    """Twilio's words without phone numbers: reasons are counted and shown in Slack."""
    return _PHONE.sub("[number]", _SENT_BEFORE.sub("", message)).strip()


def _comparable(body: str) -> str:
    """A body as Twilio may store it (smart encoding), for matching ours against its list."""
    return " ".join(unicodedata.normalize("NFKC", body).translate(_SMART).split())


def _retry_after(response: Response | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), if there is one."""
    value = response.headers.get("Retry-After") if response and response.headers else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


# The twilio exceptions drop the response headers; the transport keeps the last response of
# the current task here so `send` can read Retry-After and Location. Per task, so it is safe
# with many workers sharing one sender.
_last_response: ContextVar[Response | None] = ContextVar("twilio_last_response", default=None)


class _TwilioTransport(AsyncTwilioHttpClient):
    """The twilio client's aiohttp transport, with real timeouts and never a retry.

    The stock AsyncTwilioHttpClient passes `timeout=None` to aiohttp for every call (which turns
    aiohttp's own timeouts off) and retries through aiohttp_retry when max_retries is set. A POST
    must go out exactly once, and a connect timeout must be told apart from a read timeout.
    """

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        super().__init__(pool_connections=False, max_retries=None)
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            # Idle connections are dropped well before typical server idle timeouts (60 s), so a
            # POST rarely meets a connection the server already closed (that reads as UNKNOWN).
            connector = aiohttp.TCPConnector(keepalive_timeout=10)
            self.session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self.session

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the twilio interface; ours are fixed
        allow_redirects: bool = False,
    ) -> Response:
        """One HTTP request, no retries; the response is also kept for the calling task."""
        headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        log.debug("Twilio API %s %s", method, url)
        async with self._session().request(
            method.upper(), url, params=params, data=data, headers=headers,
            allow_redirects=allow_redirects,
        ) as http:
            response = Response(http.status, await http.text(), http.headers)
        _last_response.set(response)
        return response

    async def close(self) -> None:
        """Close the connection pool."""
        if self.session is not None:
            await self.session.close()


class TwilioSmsSender:
    """Sends through Twilio's Messages API with the official client (async, over aiohttp).

    After an answer that leaves it open whether Twilio took a message (a 5xx, a timeout, a
    dropped connection, a crash), `find_sent` asks Twilio's Messages list before any re-send.

    `api_url` (TWILIO_API_URL) replaces the base URL of the two Twilio domains used, `api` and
    `messaging`, so a stand-in must serve both path shapes (/2010-04-01/… and /v1/Services/…).
    """

    can_ask = True

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_url: str = DEFAULT_API_URL,
        public_base_url: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
    ) -> None:
        if bool(from_number) == bool(messaging_service_sid):
            raise ValueError("give exactly one of from_number and messaging_service_sid")
        self.account_sid = account_sid
        self._gate = ChannelGate()
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.api_url = api_url.rstrip("/")
        self.status_callback = status_callback_url(public_base_url)
        self._transport = _TwilioTransport(
            connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self._client = Client(account_sid, auth_token, http_client=self._transport)
        # Where requests go is TWILIO_API_URL's job alone: no TWILIO_EDGE/TWILIO_REGION from
        # the environment rewriting host names behind the settings' back.
        self._client.edge = self._client.region = None
        if self.api_url != DEFAULT_API_URL:
            # Domain.base_url is what every resource URL is built from (Domain.absolute_url).
            self._client.api.base_url = self.api_url
            self._client.messaging.base_url = self.api_url

    async def send(self, *, to: str, body: str) -> SendResult:
        """Hand one SMS to Twilio; classify what happened (see outcomes.py)."""
        refused = self._gate.refusal()
        if refused is not None:  # the credentials were just refused: don't ask again per SMS
            return refused
        return self._gate.note(await self._send(to=to, body=body))

    async def _send(self, *, to: str, body: str) -> SendResult:
        too_long = check_length(body)
        if too_long:
            return SendResult(Outcome.FAILED, reason=too_long, error_code="21617")
        options: dict[str, Any] = (
            {"from_": self.from_number}
            if self.from_number
            else {"messaging_service_sid": self.messaging_service_sid}
        )
        if self.status_callback:
            options["status_callback"] = self.status_callback
        _last_response.set(None)
        try:
            message = await self._client.messages.create_async(to=to, body=body, **options)
        except TwilioRestException as exc:
            return self._classify(exc.status, exc.code, exc.msg)
        except TwilioServiceException as exc:
            return self._classify(exc.status, exc.code, exc.detail or exc.title)
        except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS: the request never left
            return SendResult(Outcome.RETRY, reason=f"could not connect to Twilio: {exc}",
                              unreachable=True)
        except aiohttp.ConnectionTimeoutError:
            return SendResult(Outcome.RETRY, reason="timed out connecting to Twilio",
                              unreachable=True)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Read timeout, connection dropped, unreadable 2xx: Twilio may have taken it.
            log.warning("SMS outcome unknown: %s: %s", type(exc).__name__, exc)
            detail = str(exc) or type(exc).__name__
            return SendResult(
                Outcome.UNKNOWN,
                reason=f"no answer from Twilio after the message was handed over ({detail}); "
                "it may have been sent",
            )
        if not message.sid:
            return SendResult(Outcome.UNKNOWN, reason="Twilio accepted the request without a SID")
        return SendResult.sent(message.sid)

    async def find_sent(self, *, to: str, body: str, since: datetime) -> SendResult | None:
        """Whether Twilio holds this message, sent to `to` at `since` or later: SENT with its
        SID if it does, None if it certainly does not, UNKNOWN when Twilio cannot be asked.

        The list is filtered by `To` (and `From`), newest first; a message matches on its body
        (compared after the normalisation Twilio's smart encoding may apply) and on being
        created no earlier than a minute before `since` (clocks differ). No date filter is
        sent: Twilio's `DateSent` leaves out messages still queued, which are the ones asked
        about.
        """
        options: dict[str, Any] = {"to": to, "limit": 50, "page_size": 50}
        if self.from_number:
            options["from_"] = self.from_number
        try:
            messages = await self._client.messages.list_async(**options)
        except (TwilioRestException, TwilioServiceException) as exc:
            if exc.status == 401:
                return SendResult(Outcome.CHANNEL_DOWN, reason=CREDENTIALS_REJECTED,
                                  error_code="20003")
            return SendResult(Outcome.UNKNOWN, reason=(
                f"could not ask Twilio whether the message was sent (it answered {exc.status})"))
        except TwilioException as exc:  # a page the client could not read ("Unable to fetch")
            return SendResult(Outcome.UNKNOWN, reason=(
                f"could not ask Twilio whether the message was sent ({_scrub(str(exc))[:120]})"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return SendResult(Outcome.UNKNOWN, reason=(
                f"could not ask Twilio whether the message was sent ({type(exc).__name__})"))
        wanted = _comparable(body)
        earliest = since - _CLOCK_SLACK
        for message in messages:
            created = message.date_created
            if created is not None and created < earliest:
                continue
            if _comparable(message.body or "") == wanted:
                log.info("SMS %s found at Twilio after an unclear answer: not sent again",
                         message.sid)
                return SendResult.sent(str(message.sid))
        return None

    def _classify(self, status: int, code: int | None, message: str) -> SendResult:
        """Map Twilio's HTTP status and error code to an outcome."""
        reason, code_text = _scrub(message), str(code) if code else None
        response = _last_response.get()
        if status == 401 or code == 20003:
            return SendResult(Outcome.CHANNEL_DOWN, reason=CREDENTIALS_REJECTED, error_code="20003")
        if status == 429 or code == 20429:
            return SendResult(
                Outcome.RETRY, reason=f"Twilio is rate limiting ({code}): {reason}",
                error_code=code_text, retry_after=_retry_after(response),
            )
        if code in _CHANNEL_WIDE:
            text = _CHANNEL_WIDE[code].format(code=code, message=reason)
            return SendResult(Outcome.CHANNEL_DOWN, reason=text, error_code=code_text)
        if 300 <= status < 400 or status == 404:
            where = response.headers.get("Location") if response and response.headers else None
            text = (
                f"Twilio answered {status} at {self.api_url}"
                + (f" (redirect to {where})" if where else f" ({code}): {reason}")
                + "; check TWILIO_API_URL, TWILIO_ACCOUNT_SID and TWILIO_MESSAGING_SERVICE_SID"
            )
            return SendResult(Outcome.CHANNEL_DOWN, reason=text, error_code=code_text)
        if 400 <= status < 500:
            return SendResult(
                Outcome.FAILED, reason=reason, error_code=code_text, opted_out=code == 21610
            )
        log.warning("SMS outcome unknown: Twilio answered %s (%s)", status, code)
        return SendResult(
            Outcome.UNKNOWN, error_code=code_text,
            reason=f"Twilio answered {status} ({code}) after receiving the message: {reason}; "
            "it may have been sent",
        )

    async def check(self) -> list[Check]:
        """For `campaign-bot check`: credentials, then the sender, without sending anything."""
        try:
            account = await self._client.api.v2010.accounts(self.account_sid).fetch_async()
        except (TwilioRestException, TwilioServiceException) as exc:
            if exc.status == 401:
                return [(False, CREDENTIALS_REJECTED)]
            return [(False, f"Twilio: fetching the account failed ({exc.status}, {exc.code})")]
        except (aiohttp.ClientError, TimeoutError) as exc:
            return [(False, f"Twilio: cannot reach {self.api_url} ({type(exc).__name__}: {exc})")]
        lines: list[Check] = [
            (
                account.status == "active",
                f"Twilio: credentials accepted for {account.friendly_name!r} "
                f"({self.account_sid}), status {account.status}",
            )
        ]
        try:
            lines.append(await self._check_sender())
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            lines.append((False, f"Twilio: checking the sender failed ({type(exc).__name__})"))
        if self.status_callback:
            lines.append((True, f"Twilio: delivery callbacks go to {self.status_callback}"))
        else:
            lines.append((True, "Twilio: PUBLIC_BASE_URL is not set, so no delivery callbacks: "
                                "SMS stay 'sent' and never become 'delivered'"))
        return lines

    async def _check_sender(self) -> Check:
        account = self._client.api.v2010.accounts(self.account_sid)
        if self.messaging_service_sid:
            sid = self.messaging_service_sid
            try:
                service = await self._client.messaging.v1.services(sid).fetch_async()
            except TwilioRestException as exc:
                if exc.status == 404:
                    return (False, f"TWILIO_MESSAGING_SERVICE_SID {sid} does not exist in this "
                                   "account; copy it from Messaging › Services")
                raise
            return (True, f"Twilio: messaging service {sid} ({service.friendly_name!r}) exists")
        number = self.from_number
        numbers = await account.incoming_phone_numbers.list_async(phone_number=number, limit=20)
        found = [n for n in numbers if n.phone_number == number]
        if not found:
            return (False, f"TWILIO_FROM_NUMBER {number} is not a phone number of this account; "
                           "pick one from Phone Numbers › Active numbers")
        if not (found[0].capabilities or {}).get("sms"):
            return (False, f"TWILIO_FROM_NUMBER {number} cannot send SMS; pick an SMS-capable "
                           "number")
        return (True, f"Twilio: {number} is an SMS-capable number of the account")

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._transport.close()

    async def __aenter__(self) -> TwilioSmsSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
