"""The HTTP side of `campaign-bot run`: one port (`PORT`) for Slack, webhooks and /healthz."""

from __future__ import annotations

from aiohttp import web

from bot.context import CONTEXT, AppContext
from handlers import health, media


def build_web_app(context: AppContext) -> web.Application:
    app = web.Application(client_max_size=2 * 1024 * 1024)
    app[CONTEXT] = context
    health.register(app)
    media.register(app)
    return app


async def start(app: web.Application, *, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host=host, port=port)
    await site.start()
    return runner
