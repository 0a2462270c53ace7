"""`/unsubscribe/<token>` over real HTTP, with the links the engine really put in emails."""

from __future__ import annotations

import asyncio
import base64
from email.message import EmailMessage

import aiohttp
from sqlalchemy import func, select

from bot.db import Database
from services.models import AuditEntry, ConsentEvent, DeliveryChannel, DeliveryStatus, Patient
from tests.campaign_fixtures import add_patients
from tests.handlers.bot_server import Bot, ledger, outbox, send_now


def unsubscribe_url(message: EmailMessage) -> str:
    return str(message["List-Unsubscribe"]).strip().strip("<>")


async def sent_emails(bot: Bot, count: int = 2) -> tuple[int, dict[str, EmailMessage]]:
    await add_patients(bot.db, count, email_opt_in=True)
    campaign_id = await send_now(bot.db, external_ids=[f"P{n:04d}" for n in range(1, count + 1)])
    await (await bot.engine()).drain()
    return campaign_id, {str(m["To"]): m for m in outbox(bot)}


async def opted_out(db: Database) -> dict[str, bool]:
    async with db.transaction() as session:
        rows = await session.execute(select(Patient.email, Patient.email_opted_out_at))
        return {str(address): at is not None for address, at in rows}


async def consent_events(db: Database) -> list[tuple[object, ...]]:
    async with db.transaction() as session:
        rows = await session.execute(
            select(ConsentEvent.patient_id, ConsentEvent.channel, ConsentEvent.action,
                   ConsentEvent.source, ConsentEvent.campaign_id).order_by(ConsentEvent.id))
        return [tuple(r) for r in rows]


async def test_get_shows_the_page_masks_the_address_and_changes_nothing(bot: Bot) -> None:
    _, mails = await sent_emails(bot)
    url = unsubscribe_url(mails["p0001@example.com"])
    assert url.startswith(bot.url("/unsubscribe/"))
    token = url.rsplit("/", 1)[1]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"p0001" not in raw and b"example" not in raw  # no readable patient data
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(url) as response:
                assert response.status == 200
                assert response.content_type == "text/html"
                assert response.headers["Cache-Control"] == "no-store"
                page = await response.text()
        async with http.head(url) as response:
            assert response.status == 200
    assert "Clínica Roma" in page
    assert "Unsubscribe p***@example.com" in page
    assert "p0001@example.com" not in page
    assert '<form method="post">' in page and '<button type="submit">' in page
    assert '<html lang="en">' in page and "<title>" in page
    assert await opted_out(bot.db) == {"p0001@example.com": False, "p0002@example.com": False}
    assert await consent_events(bot.db) == []
    assert bot.notifier.opt_outs == []


async def test_rfc_8058_one_click_post_unsubscribes_once(bot: Bot) -> None:
    campaign_id, mails = await sent_emails(bot)
    message = mails["p0002@example.com"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = unsubscribe_url(message)
    # The RFC 8058 §3.1 request, as a mail provider sends it: no cookies, no other fields.
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # a provider may send it twice; a person may click too
            async with http.post(
                url, data=b"List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ) as response:
                assert response.status == 200
                page = await response.text()
                assert not response.cookies
        async with http.get(url) as response:
            assert "already unsubscribed" in await response.text()
    assert "You are unsubscribed" in page and "p***@example.com" in page
    assert await opted_out(bot.db) == {"p0001@example.com": False, "p0002@example.com": True}
    rows = {r.address: r for r in await ledger(bot.db, campaign_id)}
    patient_id = rows["p0002@example.com"].patient_id
    assert await consent_events(bot.db) == [
        (patient_id, DeliveryChannel.email, "opt_out", "unsubscribe", campaign_id)]
    async with bot.db.transaction() as session:
        audited = await session.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "consent.optout", AuditEntry.campaign_id == campaign_id))
    assert audited == 1
    assert bot.notifier.opt_outs == [{"channel": "email", "patients": 1,
                                      "source": "unsubscribe"}]
    assert bot.notifier.changed == [{campaign_id}]

    # The next campaign skips the patient who unsubscribed.
    second = await send_now(bot.db, external_ids=["P0001", "P0002"])
    await (await bot.engine()).drain()
    reasons = {r.patient_id: (r.status, r.reason) for r in await ledger(bot.db, second)}
    assert reasons[patient_id] == (DeliveryStatus.skipped, "opted out")
    assert reasons[rows["p0001@example.com"].patient_id][0] == DeliveryStatus.sent


async def test_the_pages_button_unsubscribes_too(bot: Bot) -> None:
    _, mails = await sent_emails(bot, 1)
    async with aiohttp.ClientSession() as http, http.post(
        unsubscribe_url(mails["p0001@example.com"]), data={"confirm": "yes"}
    ) as response:
        assert response.status == 200
    assert await opted_out(bot.db) == {"p0001@example.com": True}


async def test_forged_tokens_get_404_and_change_nothing(bot: Bot) -> None:
    campaign_id, mails = await sent_emails(bot, 1)
    url = unsubscribe_url(mails["p0001@example.com"])
    token = url.rsplit("/", 1)[1]
    [row] = await ledger(bot.db, campaign_id)
    signer = bot.context.signer
    forged = [
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # altered
        signer.sign("open", row.id),  # signed, but for another purpose
        signer.sign("unsubscribe", row.id, 1),  # another shape
        signer.sign("unsubscribe", row.id + 1000),  # a delivery that does not exist
        str(row.id),
        "x",
    ]
    async with aiohttp.ClientSession() as http:
        for bad in forged:
            target = bot.url(f"/unsubscribe/{bad}")
            async with http.get(target) as response:
                assert response.status == 404, bad
            async with http.post(target, data=b"List-Unsubscribe=One-Click", headers={
                    "Content-Type": "application/x-www-form-urlencoded"}) as response:
                assert response.status == 404, bad
    assert await opted_out(bot.db) == {"p0001@example.com": False}
    assert await consent_events(bot.db) == []


async def test_simultaneous_posts_record_one_opt_out(bot: Bot) -> None:
    _, mails = await sent_emails(bot, 1)
    url = unsubscribe_url(mails["p0001@example.com"])

    async def one_click(http: aiohttp.ClientSession) -> int:
        async with http.post(url, data=b"List-Unsubscribe=One-Click", headers={
                "Content-Type": "application/x-www-form-urlencoded"}) as response:
            return response.status

    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(one_click(http) for _ in range(5)))
    assert statuses == [200] * 5
    assert len(await consent_events(bot.db)) == 1
    assert len(bot.notifier.opt_outs) == 1
