"""The one Slack error handler: typed errors become messages a user can act on."""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from handlers.slack_support import tell
from modals.audience import message_view
from modals.common import escape
from services.errors import IllegalTransition, NotFound, PermissionDenied, ValidationFailed

log = logging.getLogger(__name__)


def user_message(error: Exception) -> tuple[str, str | None]:
    """(message, reference id or None) for an error raised by a listener."""
    if isinstance(error, PermissionDenied):
        if error.needed == "owner":
            return ("This campaign draft belongs to someone else; "
                    "start your own with `/campaign`.", None)
        return (f":lock: You need {error.needed} access to {error.action}. "
                "Ask a campaign-bot admin (`/campaign access grant`).", None)
    if isinstance(error, NotFound):
        if error.what == "campaign draft":
            return ("This campaign form has expired or was already used. "
                    "Start again with `/campaign`.", None)
        return f"{error.what.capitalize()} {escape(error.key)} was not found. Check the id "\
               "with `/campaign list`.", None
    if isinstance(error, IllegalTransition):
        return f"{escape(error)}. See `/campaign list` for its current state.", None
    if isinstance(error, ValidationFailed):
        # Reasons quote what the user typed (a tag, a user id): inert, like any user text.
        lines = "\n".join(f"• {field}: {escape(reason)}"
                          for field, reason in error.errors.items())
        return f"That did not work:\n{lines}", None
    reference = secrets.token_hex(4)
    return (f":warning: Something went wrong on our side (reference `{reference}`). "
            "Try again; if it keeps happening, give the reference to your IT admin.", reference)


def _channel_of(body: dict[str, Any]) -> str | None:
    channel = body.get("channel_id") or (body.get("channel") or {}).get("id")
    return channel if isinstance(channel, str) else None


def _user_of(body: dict[str, Any]) -> str | None:
    user = body.get("user_id") or (body.get("user") or {}).get("id")
    return user if isinstance(user, str) else None


async def on_error(
    error: Exception, body: dict[str, Any], client: AsyncWebClient,
    response: BoltResponse | None,
) -> BoltResponse | None:
    text, reference = user_message(error)
    if reference is not None:
        log.error("unexpected error (reference %s) handling %s", reference,
                  body.get("type") or body.get("command"), exc_info=error)
    else:
        log.info("refused: %s", error)
    if response is not None and body.get("type") == "view_submission":
        # Not acknowledged yet: answer in the modal itself.
        view = message_view("Not done", text)
        payload = {"response_action": "update", "view": view}
        return BoltResponse(status=200, body=json.dumps(payload),
                            headers={"content-type": ["application/json"]})
    user = _user_of(body)
    if user is not None:
        await tell(client, user, text, channel=_channel_of(body))
    if response is not None:  # never acknowledged: say so, but with the message sent
        return BoltResponse(status=200, body="")
    return None


def register(app: AsyncApp) -> None:
    app.error(on_error)


Listener = Callable[..., Awaitable[None]]


def acknowledged(listener: Listener) -> Listener:
    """Ack first, then run `listener`; its errors go to `on_error` like any other.

    Bolt forgets an ack when the listener fails within its 10 ms polling of the ack (the
    request then times out as unhandled), so work after the ack reports its own errors.
    The listener must take `ack`, `body` and `client`.
    """

    @functools.wraps(listener)
    async def run(**kwargs: Any) -> None:
        await kwargs["ack"]()
        try:
            await listener(**kwargs)
        except Exception as exc:
            await on_error(exc, kwargs["body"], kwargs["client"], None)

    return run
