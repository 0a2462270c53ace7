"""What the composition root hands to handlers: settings and the database, made once."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bot.db import Database
from bot.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    db: Database


CONTEXT = web.AppKey("context", AppContext)
