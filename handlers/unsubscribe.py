"""`/unsubscribe/<token>`: GET shows a page and changes nothing; POST unsubscribes.

POST takes RFC 8058 one-click (`List-Unsubscribe=One-Click`, sent by mail providers with
no cookies) and the page's own button alike: no session, no CSRF token, since the only
thing a forged POST could do is what the link's owner asked for. A token that does not
verify gets 404. Client addresses and user agents are not recorded.
"""

from __future__ import annotations

from aiohttp import web
from markupsafe import Markup, escape

from bot.context import CONTEXT
from handlers.webhooks import after_commit, read_body
from services import unsubscribe as unsubscribing
from services.delivery.channels import UNSUBSCRIBE_PURPOSE
from services.models import DeliveryChannel, utcnow

MAX_BODY = 16 * 1024
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'",
}
_STYLE = (
    "body{font-family:Arial,Helvetica,sans-serif;font-size:18px;line-height:1.5;color:#222;"
    "margin:0;padding:32px 16px;background:#fff}main{max-width:520px;margin:0 auto}"
    "h1{font-size:24px}button{font-size:18px;padding:12px 24px;border:2px solid #1a4d8f;"
    "border-radius:6px;background:#1a4d8f;color:#fff;cursor:pointer}"
    "button:focus{outline:3px solid #f5a623;outline-offset:2px}"
)


def _page(clinic: str, heading: str, body: Markup | str, status: int = 200) -> web.Response:
    html = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(heading)} · {escape(clinic)}</title>\n<style>{_STYLE}</style>\n"
        f"</head>\n<body>\n<main>\n<p>{escape(clinic)}</p>\n<h1>{escape(heading)}</h1>\n"
        f"{body}\n</main>\n</body>\n</html>\n"
    )
    return web.Response(text=html, content_type="text/html", status=status, headers=_HEADERS)


def _delivery_id(request: web.Request) -> int:
    verified = request.app[CONTEXT].signer.verify(
        UNSUBSCRIBE_PURPOSE, request.match_info["token"], 1)
    if verified is None:
        raise web.HTTPNotFound(text="This unsubscribe link is not valid.")
    return verified[0]


def _gone() -> web.HTTPNotFound:
    return web.HTTPNotFound(text="This unsubscribe link is no longer valid.")


async def show(request: web.Request) -> web.Response:
    """The page a person sees: whose address, and one button. Nothing changes here."""
    context = request.app[CONTEXT]
    delivery_id = _delivery_id(request)
    async with context.db.read() as session:
        target = await unsubscribing.target_of(session, delivery_id=delivery_id)
    if target is None:
        raise _gone()
    clinic = context.settings.clinic_name
    heading = f"Unsubscribe {target.masked_address}"
    if target.already_unsubscribed:
        return _page(clinic, heading, Markup(
            f"<p>{escape(target.masked_address)} is already unsubscribed from "
            f"{escape(clinic)}'s marketing messages.</p>"))
    what = _what(target.channel)
    return _page(clinic, heading, Markup(
        f"<p>Stop receiving marketing {what} from {escape(clinic)} at "
        f"{escape(target.masked_address)}?</p>\n"
        '<form method="post">\n<input type="hidden" name="confirm" value="yes">\n'
        '<button type="submit">Unsubscribe</button>\n</form>'))


async def confirm(request: web.Request) -> web.Response:
    """Unsubscribe (the page's button, or RFC 8058 one-click): 200 every time it is valid."""
    context = request.app[CONTEXT]
    delivery_id = _delivery_id(request)
    # Whatever the body says, a valid token's POST means unsubscribe; a one-click body is a
    # few bytes, so anything large is refused (413) rather than read into memory.
    await read_body(request, MAX_BODY)
    async with context.db.transaction() as session:
        result = await unsubscribing.unsubscribe(session, delivery_id=delivery_id, now=utcnow())
    if result is None:
        raise _gone()
    target, changed = result
    if changed:
        await after_commit(context.notifier.opted_out(
            channel=target.channel.value, patients=1, source=unsubscribing.SOURCE),
            "an unsubscribe")
        await after_commit(context.notifier.deliveries_changed({target.campaign_id}),
                           "an unsubscribe")
    clinic = context.settings.clinic_name
    return _page(clinic, "You are unsubscribed", Markup(
        f"<p>{escape(target.masked_address)} will not receive marketing "
        f"{_what(target.channel)} from {escape(clinic)} any more.</p>"))


def _what(channel: DeliveryChannel) -> str:
    return "emails" if channel is DeliveryChannel.email else "text messages"


def register(app: web.Application) -> None:
    app.router.add_get("/unsubscribe/{token}", show)
    app.router.add_post("/unsubscribe/{token}", confirm)
