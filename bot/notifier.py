"""The Notifier `campaign-bot run` uses when Slack is on: the live message and the rules.

- Each campaign's channel message is updated in place with `chat.update`, at most once per
  `interval` seconds per campaign: calls that arrive in between are coalesced into the next
  update (Slack allows about one update per second per channel; the client's rate-limit
  retry handler covers the rest). While sending it shows progress; once the campaign is over
  it is the performance snapshot, with the funnel chart uploaded once in its thread. Late
  delivery callbacks and opens refresh it the same way.
- CLI-created campaigns have no message; when SLACK_NOTIFY_CHANNEL is set one is posted there
  when they start.
- Notification rules (services/rules.py) are evaluated on campaign events and opt-outs; each
  firing is audited (`rule.fired`) in its own transaction.

Callers (the engine, webhooks, Slack handlers) are never held up or failed by Slack: the
work runs in background tasks and every error is logged, not raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.db import Database
from bot.settings import Settings
from modals.common import escape
from modals.snapshot import campaign_message, notice, scrub
from services import audit, chart, notices, rules, snapshot
from services.delivery.campaign_runs import CampaignEvent
from services.delivery.ledger import ENGINE_ACTOR
from services.models import Campaign
from services.rules import Rule

log = logging.getLogger(__name__)
FINAL_EVENTS = {"completed", "failed", "cancelled", "missed"}
ANNOUNCE_RETRIES = 20  # updates to wait for a message still being posted (notices.CLAIMED)


@dataclass
class _Live:
    """One campaign's message: when it was last updated, whether it needs another."""

    last: float = float("-inf")
    dirty: bool = False
    chart_due: bool = False
    retries: int = 0
    task: asyncio.Task[None] | None = None


class SlackNotifier:
    def __init__(
        self, *, db: Database, settings: Settings, rule_list: list[Rule] | None = None,
        client: AsyncWebClient | None = None, interval: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.settings = settings
        self.rules = rules.default_rules() if rule_list is None else rule_list
        self.client = client
        self.interval = interval
        self.clock = clock
        self._live: dict[int, _Live] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def attach(self, client: AsyncWebClient) -> None:
        """The Bolt app's Web API client (made after the notifier, which the app needs)."""
        self.client = client

    # --- the Notifier protocol -------------------------------------------------------------

    async def campaign_event(self, event: CampaignEvent) -> None:
        self._spawn(self._on_campaign_event(event))

    async def deliveries_changed(self, campaign_ids: set[int]) -> None:
        for campaign_id in campaign_ids:
            self._refresh(campaign_id)

    async def opted_out(self, *, channel: str, patients: int, source: str) -> None:
        values = {"event": "opt_out", "channel": channel, "source": source,
                  "patients": patients}
        self._spawn(self._fire("opt_out", values, {"patients": patients}, None, None))

    # --- lifecycle -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait for every update, upload and rule firing under way (tests, shutdown)."""
        while True:
            pending = [*self._tasks, *(s.task for s in self._live.values() if s.task)]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self, *, grace_seconds: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self.flush(), grace_seconds)
        except TimeoutError:
            log.warning("Slack notifications still pending at shutdown were dropped")

    # --- campaign events ---------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._logged(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            log.exception("Slack notification failed")

    async def _on_campaign_event(self, event: CampaignEvent) -> None:
        async with self.db.sessions() as session:
            campaign = await session.get(Campaign, event.campaign_id)
            if campaign is None:
                return
            snap = await snapshot.take(session, event.campaign_id)
            started = campaign.started_at is not None
        if event.event == "started":
            await self._ensure_message(event.campaign_id)
        if event.event in ("started", *FINAL_EVENTS) and (started or event.event == "missed"):
            self._refresh(event.campaign_id, chart=event.event in FINAL_EVENTS and started)
        values: dict[str, Any] = {
            **snap.numbers(), "campaign_id": snap.campaign_id, "subject": escape(snap.subject),
            "status": snap.status, "event": event.event,
            "reason": escape(scrub(event.reason or snap.status_reason or "")),
            "channel": snap.channel,
        }
        await self._fire(event.event, values, snap.numbers(), event.campaign_id,
                         campaign.slack_channel_id)

    async def _ensure_message(self, campaign_id: int) -> None:
        """A campaign created from the command line gets its message in SLACK_NOTIFY_CHANNEL."""
        channel = self.settings.slack_notify_channel
        if not channel or self.client is None:
            return
        async with self.db.transaction() as session:
            if not await notices.claim_announcement(session, campaign_id):
                return  # posted (or being posted) already
            snap = await snapshot.take(session, campaign_id)
        text, blocks = campaign_message(snap)
        posted: dict[str, Any] = {}
        try:
            posted = dict((await self.client.chat_postMessage(channel=channel, text=text,
                                                              blocks=blocks)).data)
        except SlackApiError as exc:
            log.warning("campaign %s: could not post its message in %s: %s", campaign_id,
                        channel, exc.response.get("error"))
        async with self.db.transaction() as session:
            await notices.record_announcement(session, campaign_id,
                                              channel_id=posted.get("channel"),
                                              message_ts=posted.get("ts"))
        self._get(campaign_id).last = self.clock()

    # --- the live message ------------------------------------------------------------------

    def _get(self, campaign_id: int) -> _Live:
        live = self._live.get(campaign_id)
        if live is None:
            if len(self._live) > 500:  # forget idle campaigns whose throttle has passed
                now = self.clock()
                for key in [k for k, s in self._live.items()
                            if s.task is None and now - s.last > self.interval]:
                    del self._live[key]
            live = self._live[campaign_id] = _Live()
        return live

    def _refresh(self, campaign_id: int, *, chart: bool = False) -> None:
        """Update the message soon: now if the last update is `interval` old, else then."""
        live = self._get(campaign_id)
        live.dirty = True
        live.chart_due = live.chart_due or chart
        if live.task is None:
            live.task = asyncio.create_task(self._updates(campaign_id, live))

    async def _updates(self, campaign_id: int, live: _Live) -> None:
        try:
            while live.dirty:
                wait = live.last + self.interval - self.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                live.dirty = False
                try:
                    await self._update(campaign_id, live)
                except Exception:
                    log.exception("campaign %s: updating its message failed", campaign_id)
                live.last = self.clock()
        finally:
            live.task = None

    async def _update(self, campaign_id: int, live: _Live) -> None:
        if self.client is None:
            return
        async with self.db.sessions() as session:
            campaign = await session.get(Campaign, campaign_id)
            if campaign is None:
                return
            place = notices.posted_at(campaign)
            being_posted = campaign.slack_message_ts == notices.CLAIMED
            snap = await snapshot.take(session, campaign_id)
        if place is None:
            if being_posted and live.retries < ANNOUNCE_RETRIES:  # announce() is under way
                live.retries += 1
                live.dirty = True
            return
        text, blocks = campaign_message(snap)
        try:
            await self.client.chat_update(channel=place[0], ts=place[1], text=text,
                                          blocks=blocks)
        except SlackApiError as exc:
            log.warning("campaign %s: chat.update failed: %s", campaign_id,
                        exc.response.get("error"))
            return
        if live.chart_due and snap.finished and snap.deliveries:
            live.chart_due = False
            await self._upload_chart(snap, place)

    async def _upload_chart(self, snap: snapshot.Snapshot, place: tuple[str, str]) -> None:
        png = await chart.render(snap)
        assert self.client is not None
        try:
            await self.client.files_upload_v2(
                channel=place[0], thread_ts=place[1], content=png,
                filename=f"campaign-{snap.campaign_id}-funnel.png",
                title=f"Campaign #{snap.campaign_id}: delivery funnel",
                initial_comment=f"Delivery funnel of campaign #{snap.campaign_id}",
            )
        except SlackApiError as exc:
            log.warning("campaign %s: chart upload failed: %s", snap.campaign_id,
                        exc.response.get("error"))

    # --- notification rules -----------------------------------------------------------------

    def _target(self, rule: Rule, campaign_channel: str | None) -> str | None:
        if rule.notify == rules.CAMPAIGN_CHANNEL:
            return campaign_channel or self.settings.slack_notify_channel
        if rule.notify == rules.NOTIFY_CHANNEL:
            return self.settings.slack_notify_channel
        return rule.notify

    async def _fire(
        self, event: str, values: dict[str, Any], numbers: dict[str, float],
        campaign_id: int | None, campaign_channel: str | None,
    ) -> None:
        for rule in rules.matching(self.rules, event, numbers):
            target = self._target(rule, campaign_channel)
            text, blocks = notice(rule.render(values))
            posted = False
            if target and self.client is not None:
                try:
                    await self.client.chat_postMessage(channel=target, text=text, blocks=blocks)
                    posted = True
                except SlackApiError as exc:
                    log.warning("rule %s: posting to %s failed: %s", rule.describe(), target,
                                exc.response.get("error"))
            elif not target:
                log.warning("rule %s: nowhere to post (set SLACK_NOTIFY_CHANNEL)",
                            rule.describe())
            async with self.db.transaction() as session:
                await audit.record(session, ENGINE_ACTOR, "rule.fired", campaign_id=campaign_id,
                                   event=event, rule=rule.describe(), notify=rule.notify,
                                   channel=target, posted=posted)
