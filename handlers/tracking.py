"""`GET /t/o/<token>` (the open pixel) and `GET /t/c/<token>` (a tracked link).

Tokens are signed (delivery id) and (delivery id, link number); the redirect target is
looked up from the campaign's message, never read from the request, so a forged or
altered link gets 404 and can never send anyone to an arbitrary URL.
"""

from __future__ import annotations

import base64
import logging

from aiohttp import web

from bot.context import CONTEXT
from handlers.webhooks import after_commit
from services import tracking
from services.delivery.channels import CLICK_PURPOSE, OPEN_PURPOSE
from services.models import utcnow

log = logging.getLogger(__name__)

# A 1×1 transparent GIF (43 bytes).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
    "Referrer-Policy": "no-referrer",
}


async def opened(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    verified = context.signer.verify(OPEN_PURPOSE, request.match_info["token"], 1)
    if verified is None:
        raise web.HTTPNotFound(text="Not found.")
    async with context.db.transaction() as session:
        campaign_id = await tracking.record_open(session, delivery_id=verified[0], now=utcnow())
    if campaign_id is None:
        raise web.HTTPNotFound(text="Not found.")
    await after_commit(context.notifier.deliveries_changed({campaign_id}), "an email open")
    return web.Response(body=PIXEL, content_type="image/gif", headers=_NO_CACHE)


async def clicked(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    verified = context.signer.verify(CLICK_PURPOSE, request.match_info["token"], 2)
    if verified is None:
        raise web.HTTPNotFound(text="This link is not valid.")
    delivery_id, link_index = verified
    async with context.db.transaction() as session:
        target = await tracking.record_click(session, delivery_id=delivery_id,
                                             link_index=link_index, now=utcnow())
    if target is None:
        raise web.HTTPNotFound(text="This link is no longer available.")
    campaign_id, url = target
    await after_commit(context.notifier.deliveries_changed({campaign_id}), "an email click")
    raise web.HTTPFound(location=url, headers=_NO_CACHE)


def register(app: web.Application) -> None:
    # No HEAD: a link checker's HEAD is not a person opening or clicking.
    app.router.add_get("/t/o/{token}", opened, allow_head=False)
    app.router.add_get("/t/c/{token}", clicked, allow_head=False)
