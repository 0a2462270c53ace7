"""What the composition root hands to handlers: settings and the database, made once."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bot.db import Database
from bot.settings import Settings
from services.tokens import TokenSigner


@dataclass
class AppContext:
    settings: Settings
    db: Database
    signer: TokenSigner


CONTEXT = web.AppKey("context", AppContext)
