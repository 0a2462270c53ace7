"""What the user sees when something is wrong: field errors, refusals, bad requests."""

from __future__ import annotations

import asyncio

import pytest

from modals import ids
from tests.campaign_fixtures import add_patients, grant_level, table_counts
from tests.slack.conftest import CHANNEL, READER, WRITER, Stand
from tests.slack.helpers import campaigns_in, choose_when, form_values, open_modal, texts, until


async def _form(stand: Stand) -> dict:
    await add_patients(stand.db, 3)
    view = await open_modal(stand.slack, stand.sr)
    await stand.sr.view_submission(view, {"segment_select": "all"})
    return stand.slack.views[view["id"]]


async def test_every_form_error_is_shown_at_once_next_to_its_field(stand: Stand) -> None:
    form = await choose_when(stand.sr, stand.slack, await _form(stand), "schedule")
    stand.slack.add_file("F0TEXT", "results.pdf", b"just some text, not a PDF", "application/pdf")
    answer = await stand.sr.view_submission(form, form_values(**{
        "subject/value": "Hi",
        "message/value": "Too short",
        "when/value": "schedule",
        "send_at/value": 1_000_000_000,  # 2001: in the past
        "tags/value": ",".join(f"tag{n}" for n in range(12)),
        "attachment/value": ["F0TEXT"],
    }))
    assert answer.body["response_action"] == "errors"
    errors = answer.body["errors"]
    assert set(errors) == {ids.SUBJECT_BLOCK, ids.MESSAGE_BLOCK, ids.SEND_AT_BLOCK,
                           ids.TAGS_BLOCK, ids.ATTACHMENT_BLOCK}
    assert "5 characters" in errors[ids.SUBJECT_BLOCK]
    assert "20 characters" in errors[ids.MESSAGE_BLOCK]
    assert "past" in errors[ids.SEND_AT_BLOCK]
    assert "PDF, PNG or JPEG" in errors[ids.ATTACHMENT_BLOCK]
    assert stand.slack.downloads == [("F0TEXT", True)]  # fetched with the bot token
    assert await campaigns_in(stand.db) == []


async def test_schedule_without_a_date_is_refused_on_when(stand: Stand) -> None:
    form = await choose_when(stand.sr, stand.slack, await _form(stand), "schedule")
    stand.sr.strict = False  # Slack's client would not submit it; a replayed payload could
    answer = await stand.sr.view_submission(form, form_values(**{"when/value": "schedule"}))
    assert answer.body["errors"].keys() == {ids.WHEN_BLOCK}


async def test_an_empty_or_too_big_audience_is_refused_with_the_count(stand: Stand) -> None:
    await add_patients(stand.db, 3)
    view = await open_modal(stand.slack, stand.sr)
    answer = await stand.sr.view_submission(view, {"segment_select": "recent-study-30d"})
    assert answer.body["response_action"] == "errors"
    assert "no patients" in answer.body["errors"][ids.SEGMENT_BLOCK]
    answer = await stand.sr.view_submission(view, {})
    assert "Customize selection" in answer.body["errors"][ids.SEGMENT_BLOCK]

    stand.settings.max_audience = 2
    answer = await stand.sr.view_submission(view, {"segment_select": "all"})
    assert "more than 2" in answer.body["errors"][ids.SEGMENT_BLOCK]
    await stand.sr.click(view, ids.CUSTOMIZE_ACTION)
    table = await until(lambda: stand.slack.views[view["id"]]["callback_id"] == ids.TABLE_VIEW
                        and stand.slack.views[view["id"]])
    answer = await stand.sr.view_submission(table)
    assert "No patients selected" in answer.body["errors"][ids.SEARCH_BLOCK]


async def test_a_read_only_user_is_refused_everywhere_and_nothing_is_created(
    stand: Stand,
) -> None:
    slack = stand.slack
    async with stand.as_user(READER) as reader:
        answer = await reader.slash_command()
        assert answer.status == 200
        [refusal] = await until(lambda: slack.ephemerals(READER))
        assert "write access" in refusal["text"]
        assert not slack.calls_to("views.open")

    form = await _form(stand)
    await stand.sr.view_submission(form, form_values())
    confirm = slack.views[form["id"]]
    before = await table_counts(stand.db)
    async with stand.as_user(READER) as reader:
        answer = await reader.view_submission(confirm)
    assert answer.status == 200 and answer.body["response_action"] == "update"
    assert "write access" in texts(answer.body["view"])
    assert await table_counts(stand.db) == before
    assert await campaigns_in(stand.db) == []


async def test_a_double_submission_creates_one_campaign_and_one_message(stand: Stand) -> None:
    form = await _form(stand)
    await stand.sr.view_submission(form, form_values())
    confirm = dict(stand.slack.views[form["id"]])
    stand.sr.strict = False
    answers = await asyncio.gather(*(stand.sr.view_submission(confirm) for _ in range(3)))
    assert all(a.body["response_action"] == "update" for a in answers)
    await until(lambda: stand.slack.messages(CHANNEL))
    await asyncio.sleep(0.3)
    assert len(await campaigns_in(stand.db)) == 1
    assert len(stand.slack.messages(CHANNEL)) == 1


async def test_bot_not_in_the_channel_tells_the_user_and_sends_a_dm(stand: Stand) -> None:
    slack = stand.slack
    await add_patients(stand.db, 2)
    async with stand.as_user(WRITER) as writer:
        writer.channel_id = "C0ELSEWHERE"
        view = await open_modal(slack, writer)
        await writer.view_submission(view, {"segment_select": "all"})
        await writer.view_submission(slack.views[view["id"]], form_values())
        await writer.view_submission(slack.views[view["id"]])
    [dm] = await until(lambda: slack.messages(WRITER))
    assert "/invite @campaign-bot" in texts(dm)
    assert "2 patients" in texts(dm)
    assert slack.messages("C0ELSEWHERE") == []
    for _ in range(100):
        [campaign] = await campaigns_in(stand.db)
        if campaign.slack_message_ts not in (None, "posting"):
            break
        await asyncio.sleep(0.02)
    assert campaign.slack_message_ts == dm["ts"] and campaign.slack_channel_id == dm["channel"]


async def test_a_bad_or_stale_signature_gets_401_and_nothing_happens(stand: Stand) -> None:
    for tamper in ("bad_signature", "stale_timestamp", "missing_signature"):
        answer = await stand.sr.slash_command(tamper=tamper)
        assert answer.status == 401, tamper
    await asyncio.sleep(0.2)
    assert not stand.slack.calls_to("views.open")
    assert not stand.slack.ephemerals(WRITER)


async def test_malformed_payloads_get_4xx_and_leave_no_trace(stand: Stand) -> None:
    before = await table_counts(stand.db)
    for kind in ("not_json", "missing_type", "no_payload", "payload_not_object", "empty"):
        answer = await stand.sr.malformed(kind)
        assert 400 <= answer.status < 500, (kind, answer)
    await asyncio.sleep(0.2)
    assert [c.method for c in stand.slack.calls if c.method != "auth.test"] == []
    assert await table_counts(stand.db) == before


async def test_an_unexpected_error_shows_a_reference_that_is_in_the_log(
    stand: Stand, caplog: pytest.LogCaptureFixture,
) -> None:
    message = {"ts": "1.000001", "channel": CHANNEL, "blocks": [{
        "type": "actions", "block_id": "b",
        "elements": [{"type": "button", "action_id": ids.STATS_ACTION, "value": "not-an-id",
                      "text": {"type": "plain_text", "text": "Stats"}}]}]}
    await stand.sr.click(message, ids.STATS_ACTION)
    [shown] = await until(lambda: stand.slack.ephemerals(WRITER))
    reference = shown["text"].split("reference `")[1].split("`")[0]
    assert len(reference) == 8
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_draft_is_only_its_owners_and_expires(stand: Stand) -> None:
    form = await _form(stand)
    await stand.sr.view_submission(form, form_values())
    confirm = stand.slack.views[form["id"]]
    await grant_level(stand.db, "U0OTHER", "write")
    stand.slack.add_user("U0OTHER", real_name="Other Writer")
    async with stand.as_user("U0OTHER") as other:
        answer = await other.view_submission(confirm)
    assert "belongs to someone else" in texts(answer.body["view"])
    assert await campaigns_in(stand.db) == []

    forged = {**confirm, "private_metadata": '{"draft":"00000000-0000-4000-8000-000000000000"}'}
    answer = await stand.sr.view_submission(forged)
    assert "expired" in texts(answer.body["view"])
    answer = await stand.sr.view_submission({**confirm, "private_metadata": "not json"})
    assert "expired" in texts(answer.body["view"])
    assert await campaigns_in(stand.db) == []


async def test_a_rate_limited_web_api_call_is_retried(stand: Stand) -> None:
    form = await _form(stand)
    await stand.sr.view_submission(form, form_values())
    stand.slack.rate_limit("chat.postMessage", n=1, retry_after=1)
    await stand.sr.view_submission(stand.slack.views[form["id"]])
    [message] = await until(lambda: stand.slack.messages(CHANNEL))
    assert "3 patients" in texts(message)
    statuses = [c.status for c in stand.slack.calls_to("chat.postMessage")]
    assert statuses == [429, 200]
