"""What the composition root hands to handlers: settings and the database, made once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from bot.db import Database
from bot.settings import Settings
from services.delivery.campaign_runs import CampaignEvent
from services.tokens import TokenSigner


class Notifier(Protocol):
    """Who hears about what happened (the channel's live message, notification rules).

    Webhooks and the engine call it after their transaction has committed; it never raises
    into them (a Slack outage must not lose a STOP or a delivery receipt).
    """

    async def campaign_event(self, event: CampaignEvent) -> None: ...

    async def deliveries_changed(self, campaign_ids: set[int]) -> None: ...

    async def opted_out(self, *, channel: str, patients: int, source: str) -> None: ...


class SilentNotifier:
    """The notifier when nobody listens (no Slack): does nothing."""

    async def campaign_event(self, event: CampaignEvent) -> None:
        return None

    async def deliveries_changed(self, campaign_ids: set[int]) -> None:
        return None

    async def opted_out(self, *, channel: str, patients: int, source: str) -> None:
        return None


@dataclass
class AppContext:
    settings: Settings
    db: Database
    signer: TokenSigner
    notifier: Notifier = field(default_factory=SilentNotifier)


CONTEXT = web.AppKey("context", AppContext)
