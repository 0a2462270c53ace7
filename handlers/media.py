"""`GET /media/<token>`: a campaign's attachment, for the signed link an SMS carries."""

from __future__ import annotations

from aiohttp import web

from bot.context import CONTEXT
from services.delivery.channels import ATTACHMENT_PURPOSE
from services.models import CampaignAttachment


async def media(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    verified = context.signer.verify(ATTACHMENT_PURPOSE, request.match_info["token"], 1)
    if verified is None:
        raise web.HTTPNotFound(text="This link is not valid.")
    async with context.db.sessions() as session:
        attachment = await session.get(CampaignAttachment, verified[0])
    if attachment is None:
        raise web.HTTPNotFound(text="This file is no longer available.")
    return web.Response(
        body=attachment.content,
        content_type=attachment.content_type,
        headers={
            "Content-Disposition": f'inline; filename="{_safe(attachment.filename)}"',
            "Cache-Control": "private, max-age=3600",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _safe(filename: str) -> str:
    return "".join(c for c in filename if c.isprintable() and c not in '"\\') or "attachment"


def register(app: web.Application) -> None:
    app.router.add_get("/media/{token}", media)
