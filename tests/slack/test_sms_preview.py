"""The SMS the preview shows, and the length checked at creation, are what is sent: the
same composer, with the attachment link sending appends."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.db import Database
from bot.senders import build_engine
from modals import ids
from tests.campaign_fixtures import add_patients, pdf_bytes
from tests.delivery.test_engine import drain
from tests.fakes.slack_requests import fill_state
from tests.slack.conftest import Stand, make_stand
from tests.slack.helpers import campaigns_in, form_values, open_modal, until

BASE = "https://campaigns.clinic.example"
# 110 GSM-7 characters: one segment with the opt-out line, two once the link is added.
MESSAGE = ("Hello {{ first_name }}, your yearly check-up is due. Book online or call us; "
           "the flyer has our new hours.")
MEDIA_TOKEN = re.compile(re.escape(BASE) + r"/media/([A-Za-z0-9_-]+)")


@pytest.fixture
async def public(db: Database, tmp_path: Path) -> AsyncIterator[Stand]:
    """SMS carry the attachment's link only when PUBLIC_BASE_URL is set."""
    async with make_stand(db, tmp_path, public_base_url=BASE, quiet_hours="off",
                          sms_rate=50) as made:
        yield made


async def _form(stand: Stand) -> dict[str, Any]:
    view = await open_modal(stand.slack, stand.sr)
    await stand.sr.view_submission(view, {"segment_select": "all"})
    return stand.slack.views[view["id"]]


async def _preview(stand: Stand, form: dict[str, Any], typed: dict[str, Any]) -> dict[str, Any]:
    before = set(stand.slack.views)
    state = fill_state(form, form_values(**typed), slack=stand.slack)
    await stand.sr.click({**form, "state": {"values": state}}, ids.PREVIEW_ACTION)
    return await until(lambda: next((v for k, v in stand.slack.views.items()
                                     if k not in before and v["callback_id"] == ids.PREVIEW_VIEW),
                                    None))


def _shown_sms(preview: dict[str, Any]) -> str:
    """The SMS as the preview shows it (a plain-text block: no escaping to undo)."""
    blocks = preview["blocks"]
    at = next(i for i, b in enumerate(blocks)
              if b["type"] == "section" and b["text"]["text"].startswith("*SMS*"))
    shown = blocks[at + 1]["text"]
    assert shown["type"] == "plain_text"
    return str(shown["text"])


def _segments(preview: dict[str, Any]) -> int:
    """How many SMS segments the preview says each patient gets."""
    said = next(e["text"] for b in preview["blocks"] if b["type"] == "context"
                for e in b["elements"] if "SMS segment" in e["text"])
    found = re.match(r"(\d+) SMS segments?\b", said)
    assert found, said
    return int(found.group(1))


async def test_the_preview_counts_the_attachment_link_and_shows_what_is_sent(
    public: Stand,
) -> None:
    stand = public
    await add_patients(stand.db, 1, sms_opt_in=True, phone="+525512345678")
    stand.slack.add_file("F0FLYER", "flyer.pdf", pdf_bytes(), "application/pdf")
    form = await _form(stand)
    typed = {"channel/value": "SMS", "message/value": MESSAGE}

    alone = await _preview(stand, form, typed)
    assert _segments(alone) == 1
    await stand.sr.view_submission(alone)  # Done

    typed["attachment/value"] = ["F0FLYER"]
    preview = await _preview(stand, form, typed)
    assert _segments(preview) == 2
    assert "/media/" not in _shown_sms(alone)
    shown = _shown_sms(preview)
    assert MEDIA_TOKEN.search(shown) and shown.endswith("Reply STOP to opt out")
    await stand.sr.view_submission(preview)  # Done: back to the form

    answer = await stand.sr.view_submission(form, form_values(**typed))
    assert answer.body["response_action"] == "update", answer.body
    await stand.sr.view_submission(stand.slack.views[form["id"]])  # Send
    [campaign] = await campaigns_in(stand.db)
    engine = await build_engine(stand.settings, stand.db)
    try:
        await drain(engine)
    finally:
        for driver in engine.drivers:
            await driver.close()
    [sent] = [json.loads(line) for line in (stand.outbox / "sms.jsonl").read_text().splitlines()]
    assert sent["to"] == "+525512345678"
    # The same text, but for the campaign's own link, which is exactly as long.
    shown_token, sent_token = MEDIA_TOKEN.search(shown), MEDIA_TOKEN.search(sent["body"])
    assert shown_token and sent_token
    assert len(shown_token.group(1)) == len(sent_token.group(1))
    assert MEDIA_TOKEN.sub("LINK", sent["body"]) == MEDIA_TOKEN.sub("LINK", shown)
    assert f"/media/{sent_token.group(1)}" in sent["body"] and campaign.id


async def test_the_length_checked_at_creation_counts_the_link(public: Stand) -> None:
    stand = public
    await add_patients(stand.db, 1, sms_opt_in=True, phone="+525512345678")
    stand.slack.add_file("F0FLYER", "flyer.pdf", pdf_bytes(), "application/pdf")
    form = await _form(stand)
    # 1,560 characters: with the opt-out line it fits Twilio's 1,600; with the link it does not.
    long_message = ("Check-up time. " * 104)[:1560]
    typed = {"channel/value": "SMS", "message/value": long_message}
    answer = await stand.sr.view_submission(form, form_values(
        **typed, **{"attachment/value": ["F0FLYER"]}))
    assert answer.body["response_action"] == "errors"
    assert "1,600" in answer.body["errors"][ids.MESSAGE_BLOCK]

    answer = await stand.sr.view_submission(form, form_values(**typed))
    assert answer.body["response_action"] == "update", answer.body
