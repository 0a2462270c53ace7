"""Campaigns after creation: the channel message's buttons, list, stats, help, access, Home."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from bot.db import Database
from modals import ids
from services import campaigns
from services.models import AccessGrant, Campaign, CampaignStatus, utcnow
from tests.campaign_fixtures import LIMITS, OPERATOR, add_patients, form
from tests.slack.conftest import ADMIN, CHANNEL, READER, WRITER, Stand
from tests.slack.helpers import (
    campaigns_in,
    choose_when,
    form_values,
    in_an_hour,
    open_modal,
    texts,
    until,
)


async def _scheduled_via_slack(stand: Stand) -> tuple[Campaign, dict]:
    await add_patients(stand.db, 2)
    view = await open_modal(stand.slack, stand.sr)
    await stand.sr.view_submission(view, {"segment_select": "all"})
    form = await choose_when(stand.sr, stand.slack, stand.slack.views[view["id"]], "schedule")
    await stand.sr.view_submission(form, form_values(**{
        "when/value": "schedule", "send_at/value": in_an_hour()}))
    await stand.sr.view_submission(stand.slack.views[view["id"]])
    [message] = await until(lambda: stand.slack.messages(CHANNEL))
    await until(lambda: "ts" in message)
    for _ in range(100):
        [campaign] = await campaigns_in(stand.db)
        if campaign.slack_message_ts == message["ts"]:
            break
        await asyncio.sleep(0.02)
    return campaign, message


async def _campaign(db: Database, **overrides: object) -> Campaign:
    await add_patients(db, 2)
    async with db.transaction() as session:
        return await campaigns.create(session=session, actor=OPERATOR, limits=LIMITS,
                                      campaign_in=form(**{"send_at": utcnow() + timedelta(days=1),
                                                           **overrides}))


async def test_cancel_from_the_channel_message(stand: Stand) -> None:
    campaign, message = await _scheduled_via_slack(stand)
    async with stand.as_user(READER) as reader:  # a reader may not cancel
        await reader.click(message, ids.CANCEL_ACTION)
        [refusal] = await until(lambda: stand.slack.ephemerals(READER))
        assert "write access" in refusal["text"]
    assert (await campaigns_in(stand.db))[0].status is CampaignStatus.scheduled

    await stand.sr.click(message, ids.CANCEL_ACTION)
    await until(lambda: any("cancelled" in e["text"] for e in stand.slack.ephemerals(WRITER)))
    [campaign] = await campaigns_in(stand.db)
    assert campaign.status is CampaignStatus.cancelled
    [message] = stand.slack.messages(CHANNEL)
    assert "cancelled" in texts(message)
    buttons = [e["action_id"] for b in message["blocks"] if b["type"] == "actions"
               for e in b["elements"]]
    assert buttons == [ids.STATS_ACTION]


async def test_list_stats_and_help(stand: Stand) -> None:
    campaign = await _campaign(stand.db)
    await stand.sr.slash_command(text="list")
    [listing] = await until(lambda: stand.slack.ephemerals(WRITER))
    assert f"#{campaign.id}" in texts(listing) and "Scheduled" in texts(listing)
    buttons = {e["action_id"] for b in listing["blocks"] if b["type"] == "actions"
               for e in b["elements"]}
    assert buttons == {ids.CANCEL_ACTION, ids.SEND_NOW_ACTION, ids.STATS_ACTION}

    listing = {**listing, "ts": listing["ts"], "is_ephemeral": True}
    await stand.sr.click(listing, ids.SEND_NOW_ACTION)
    await until(lambda: any("sent now" in e["text"] for e in stand.slack.ephemerals(WRITER)))
    assert (await campaigns_in(stand.db))[0].send_now
    assert stand.pokes

    await stand.sr.slash_command(text=f"stats {campaign.id}")
    [snapshot] = await until(lambda: stand.slack.messages(CHANNEL))
    assert f"Campaign #{campaign.id}" in texts(snapshot) and "2 patients" in texts(snapshot)

    await stand.sr.slash_command(text="help")
    await until(lambda: any("/campaign list" in e["text"] for e in stand.slack.ephemerals(WRITER)))
    await stand.sr.slash_command(text="frobnicate")
    await until(lambda: any("I don't know `/campaign frobnicate`" in e["text"]
                            for e in stand.slack.ephemerals(WRITER)))
    await stand.sr.slash_command(text="stats nope")
    await until(lambda: any("campaign id" in e["text"] for e in stand.slack.ephemerals(WRITER)))


async def test_access_grant_and_revoke_by_admins_only(stand: Stand) -> None:
    stand.slack.add_user("U0NEW", real_name="New")
    async with stand.as_user(ADMIN) as admin:
        await admin.slash_command(text="access grant <@U0NEW|new> write")
        await until(lambda: any("now has write" in e["text"]
                                for e in stand.slack.ephemerals(ADMIN)))
    async with stand.db.sessions() as session:
        grant = await session.get(AccessGrant, "U0NEW")
        assert grant is not None and grant.level == "write"

    await stand.sr.slash_command(text="access revoke <@U0NEW> write")  # a writer: refused
    await until(lambda: any("admin access" in e["text"] for e in stand.slack.ephemerals(WRITER)))

    async with stand.as_user(ADMIN) as admin:
        await admin.slash_command(text="access revoke <@U0NEW> read")
        await until(lambda: any("no longer has any access" in e["text"]
                                for e in stand.slack.ephemerals(ADMIN)))
    async with stand.db.sessions() as session:
        assert (await session.execute(select(AccessGrant).where(
            AccessGrant.slack_user_id == "U0NEW"))).first() is None


async def test_app_home_shows_the_users_campaigns(stand: Stand) -> None:
    campaign, _ = await _scheduled_via_slack(stand)
    await stand.sr.app_home_opened()
    home = await until(lambda: stand.slack.home(WRITER))
    assert f"#{campaign.id}" in texts(home) and "scheduled" in texts(home)
    async with stand.db.transaction() as session:
        await campaigns.cancel(session=session, actor=OPERATOR, campaign_id=campaign.id)
    await stand.sr.app_home_opened()
    home = await until(lambda: "cancelled" in texts(stand.slack.home(WRITER))
                       and stand.slack.home(WRITER))
    assert "email: nothing sent yet" in texts(home)  # the headline numbers
    stand.slack.add_user("U0NOBODY", real_name="Nobody")
    await stand.sr.app_home_opened("U0NOBODY")
    home = await until(lambda: stand.slack.home("U0NOBODY"))
    assert "no campaign-bot access" in texts(home)
