"""The whole /campaign flow over real HTTP: segment and lazy-table audiences, to a campaign."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from modals import ids
from services.models import CampaignAttachment, CampaignStatus
from tests.campaign_fixtures import add_patients, pdf_bytes
from tests.slack.conftest import CHANNEL, WRITER, Stand
from tests.slack.helpers import (
    campaigns_in,
    choose_when,
    form_values,
    in_an_hour,
    open_modal,
    texts,
    until,
    wait_for_update,
)

FORM_LABELS = ("Subject", "Preview text", "Message", "Sending channel", "When", "Tags",
               "Attachment")


def labels(view: dict) -> list[str]:
    return [b["label"]["text"] for b in view["blocks"] if b["type"] == "input"]


async def test_segment_audience_ends_in_a_scheduled_campaign_announced_in_the_channel(
    stand: Stand,
) -> None:
    slack, sr = stand.slack, stand.sr
    await add_patients(stand.db, 3)
    view = await open_modal(slack, sr)
    assert labels(view) == ["Smart segment"]
    assert "Customize selection" in texts(view)
    assert "All patients (3)" in texts(view)
    assert "500" in texts(view)

    answer = await sr.view_submission(view, {"segment_select": "all"})
    assert answer.body["response_action"] == "update"
    form = slack.views[view["id"]]
    assert form["callback_id"] == ids.FORM_VIEW
    for label in FORM_LABELS:
        assert label in labels(form)
    assert "Date and time" not in labels(form)  # until Schedule is chosen
    assert "America/Mexico_City" in texts(form)  # the user's own time zone, from users.info

    form = await choose_when(sr, slack, form, "schedule",
                             **{"subject/value": "Your yearly check-up"})
    assert "Date and time" in labels(form)
    assert _initial(form, ids.SUBJECT_BLOCK) == "Your yearly check-up"  # kept while redrawn
    send_at = in_an_hour()
    slack.add_file("F0FLYER", "flyer.pdf", pdf_bytes(), "application/pdf")
    answer = await sr.view_submission(form, form_values(**{
        "when/value": "schedule", "send_at/value": send_at, "tags/value": "Checkup, Spring",
        "preview_text/value": "A minute of your time", "attachment/value": ["F0FLYER"],
    }))
    assert answer.body["response_action"] == "update", answer.body
    confirm = slack.views[view["id"]]
    assert confirm["callback_id"] == ids.CONFIRM_VIEW
    assert confirm["submit"]["text"] == "Schedule"
    assert "flyer.pdf" in texts(confirm)

    answer = await sr.view_submission(confirm)
    assert answer.body["response_action"] == "update"
    assert "is scheduled" in texts(slack.views[view["id"]])

    [campaign] = await campaigns_in(stand.db)
    assert campaign.status is CampaignStatus.scheduled
    assert campaign.audience_size == 3 and campaign.segment_slug == "all"
    assert campaign.send_at == datetime.fromtimestamp(send_at, UTC)
    assert campaign.tags == ["checkup", "spring"]
    assert campaign.created_by == WRITER and campaign.slack_channel_id == CHANNEL
    assert stand.pokes
    async with stand.db.sessions() as session:
        attachment = await session.get(CampaignAttachment, campaign.id)
        assert attachment is not None and attachment.content == pdf_bytes()

    [message] = await until(lambda: slack.messages(CHANNEL))
    shown = texts(message)
    assert f"Campaign #{campaign.id}" in shown and "3 patients" in shown
    assert "email" in shown and f"<@{WRITER}>" in shown
    assert "AnaP0001" not in shown and "@example.com" not in shown  # counts only
    actions = [e["action_id"] for b in message["blocks"] if b["type"] == "actions"
               for e in b["elements"]]
    assert actions == [ids.CANCEL_ACTION, ids.STATS_ACTION]
    [campaign] = await _with_ts(stand)
    assert campaign.slack_message_ts == message["ts"]


async def _with_ts(stand: Stand) -> list:
    for _ in range(200):
        found = await campaigns_in(stand.db)
        if found and found[0].slack_message_ts not in (None, "posting"):
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("the message's ts was not stored")


async def test_lazy_table_search_pages_and_select_all_end_in_a_send_now_campaign(
    stand: Stand,
) -> None:
    slack, sr = stand.slack, stand.sr
    await add_patients(stand.db, 25)
    view = await open_modal(slack, sr)
    await sr.click(view, ids.CUSTOMIZE_ACTION)
    table = await wait_for_update(slack, view)
    assert table["callback_id"] == ids.TABLE_VIEW
    assert labels(table) == ["Search"]
    page1 = [o["value"] for o in _options(table)]
    assert len(page1) == 10
    assert "0 selected* (of 500)" in texts(table)
    assert "AnaP0001" in texts(table)  # names appear inside the authorised user's modal

    await sr.click(table, ids.PATIENTS_ACTION, selected=page1[:2])
    table = await wait_for_update(slack, table)
    assert "2 selected* (of 500)" in texts(table)

    await sr.click(table, ids.NEXT_ACTION)
    table = await wait_for_update(slack, table)
    page2 = [o["value"] for o in _options(table)]
    assert set(page2).isdisjoint(page1) and len(page2) == 10

    await sr.click(table, ids.SELECT_PAGE_ACTION)
    table = await wait_for_update(slack, table)
    assert "12 selected" in texts(table)
    assert len(table["blocks"][2]["elements"][0]["initial_options"]) == 10

    await sr.click(table, ids.PREVIOUS_ACTION)
    table = await wait_for_update(slack, table)
    assert [o["value"] for o in _options(table)] == page1
    checked = [o["value"] for o in table["blocks"][2]["elements"][0]["initial_options"]]
    assert checked == page1[:2]

    await sr.click(table, ids.SEARCH_ACTION, selected="anap0025")
    table = await wait_for_update(slack, table)
    found = _options(table)
    assert [o["text"]["text"].split(" ·")[0] for o in found] == ["AnaP0025 García"]
    await sr.click(table, ids.PATIENTS_ACTION, selected=[found[0]["value"]])
    table = await wait_for_update(slack, table)
    assert "13 selected" in texts(table)

    answer = await sr.view_submission(table)
    assert answer.body["response_action"] == "update"
    form = slack.views[view["id"]]
    assert "custom selection, 13 patients" in texts(form)
    await sr.view_submission(form, form_values(**{"channel/value": "EMAIL_SMS"}))
    confirm = slack.views[view["id"]]
    assert confirm["submit"]["text"] == "Send"
    await sr.view_submission(confirm)

    [campaign] = await campaigns_in(stand.db)
    assert campaign.send_now and campaign.audience_size == 13
    assert campaign.segment_slug is None
    [message] = await until(lambda: slack.messages(CHANNEL))
    assert "13 patients" in texts(message) and "sending now" in texts(message)


def _initial(view: dict, block_id: str) -> str | None:
    block = next(b for b in view["blocks"] if b.get("block_id") == block_id)
    return block["element"].get("initial_value")


def _options(view: dict) -> list[dict]:
    for block in view["blocks"]:
        if block.get("block_id") == ids.PATIENTS_BLOCK:
            return block["elements"][0]["options"]
    return []


async def test_two_quick_ticks_on_one_page_both_count(stand: Stand) -> None:
    slack, sr = stand.slack, stand.sr
    await add_patients(stand.db, 5)
    view = await open_modal(slack, sr)
    await sr.click(view, ids.CUSTOMIZE_ACTION)
    table = await wait_for_update(slack, view)
    first, second = [o["value"] for o in _options(table)][:2]
    # Both clicks come from the page as first drawn, as when a user ticks two boxes
    # quickly; they may arrive in either order.
    await asyncio.gather(sr.click(table, ids.PATIENTS_ACTION, selected=[first, second]),
                         sr.click(table, ids.PATIENTS_ACTION, selected=[first]))
    await until(lambda: slack.views[view["id"]]["hash"] != table["hash"])
    await asyncio.sleep(0.3)
    answer = await sr.view_submission(slack.views[view["id"]])
    assert answer.body["response_action"] == "update"
    assert "custom selection, 2 patients" in texts(slack.views[view["id"]])
