""""Send test to me": only to the user's own address or a number they confirm, a made-up
patient, a few a minute; and no template is rendered on the event loop."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from modals import ids
from services import personalisation
from tests.campaign_fixtures import add_patients, pdf_bytes
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_requests import SlackRequests, fill_state
from tests.slack.conftest import WRITER, Stand
from tests.slack.helpers import form_values, open_modal, texts, until, wait_for_update


async def _preview(stand: Stand, channel: str = "EMAIL_SMS") -> dict[str, Any]:
    slack, sr = stand.slack, stand.sr
    await add_patients(stand.db, 2, email_opt_in=True, sms_opt_in=True, phone="+525512345678")
    view = await open_modal(slack, sr)
    await sr.view_submission(view, {"segment_select": "all"})
    form = slack.views[view["id"]]
    state = fill_state(form, form_values(**{"channel/value": channel}), slack=slack)
    await sr.click({**form, "state": {"values": state}}, ids.PREVIEW_ACTION)
    return await until(lambda: next((v for v in slack.views.values()
                                     if v["callback_id"] == ids.PREVIEW_VIEW), None))


async def _click(slack: FakeSlack, sr: SlackRequests, view: dict[str, Any], action: str,
                 phone: str | None = None) -> dict[str, Any]:
    if phone is not None:
        view = {**view, "state": {"values": {ids.TEST_PHONE_BLOCK: {ids.VALUE_ACTION: {
            "type": "plain_text_input", "value": phone}}}}}
    await sr.click(view, action)
    return await wait_for_update(slack, view)


def _emails(stand: Stand) -> list[Path]:
    return sorted(stand.outbox.glob("*.eml")) if stand.outbox.exists() else []


def _texts_sent(stand: Stand) -> list[dict[str, Any]]:
    path = stand.outbox / "sms.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_at_most_three_tests_a_minute_per_user(stand: Stand) -> None:
    slack, sr = stand.slack, stand.sr
    preview = await _preview(stand)
    for _ in range(2):
        preview = await _click(slack, sr, preview, ids.TEST_EMAIL_ACTION)
        assert "Test email sent" in texts(preview)
    preview = await _click(slack, sr, preview, ids.TEST_SMS_ACTION, "+52 55 9876 5432")
    preview = await _click(slack, sr, preview, ids.TEST_SMS_ACTION, "+52 55 9876 5432")
    assert "Test SMS sent" in texts(preview)

    preview = await _click(slack, sr, preview, ids.TEST_EMAIL_ACTION)
    shown = texts(preview)
    assert "You have sent 3 tests in the last minute" in shown and "Try again in" in shown
    assert len(_emails(stand)) == 2 and len(_texts_sent(stand)) == 1  # the 4th was not sent


async def test_a_changed_number_is_confirmed_again(stand: Stand) -> None:
    slack, sr = stand.slack, stand.sr
    preview = await _preview(stand, "SMS")
    asking = await _click(slack, sr, preview, ids.TEST_SMS_ACTION, "+52 55 9876 5432")
    # The user edits the number, then presses the button that named the first one.
    asking = await _click(slack, sr, asking, ids.TEST_SMS_ACTION, "+52 55 1111 2222")
    assert "Check the number" in texts(asking)
    block = next(b for b in asking["blocks"] if b.get("block_id") == ids.TEST_BLOCK)
    assert block["elements"][-1]["value"] == "+525511112222"
    assert _texts_sent(stand) == []

    refused = await _click(slack, sr, asking, ids.TEST_SMS_ACTION, "not a number")
    assert "country code" in texts(refused) and _texts_sent(stand) == []


async def test_no_email_in_the_slack_profile_sends_nothing(stand: Stand) -> None:
    slack, sr = stand.slack, stand.sr
    slack.add_user(WRITER, real_name="Test User", tz="America/Mexico_City")  # no email
    preview = await _preview(stand, "EMAIL")
    preview = await _click(slack, sr, preview, ids.TEST_EMAIL_ACTION)
    assert "no email address" in texts(preview)
    assert _emails(stand) == []
    [call] = slack.calls_to("users.info")[-1:]
    assert call.params["user"] == WRITER  # asked about the user who pressed the button


async def test_templates_are_never_rendered_on_the_event_loop(
    stand: Stand, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    off_loop: list[str] = []
    for name in ("render_text", "render_html"):
        original = getattr(personalisation, name)

        def spy(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            (on_loop if threading.get_ident() == loop_thread else off_loop).append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(personalisation, name, spy)
    slack, sr = stand.slack, stand.sr
    slack.add_file("F0FLYER", "flyer.pdf", pdf_bytes(), "application/pdf")
    preview = await _preview(stand)
    preview = await _click(slack, sr, preview, ids.TEST_EMAIL_ACTION)
    assert "Test email sent" in texts(preview)
    await sr.view_submission(preview)  # Done: back to the form
    form = next(v for v in slack.views.values() if v["callback_id"] == ids.FORM_VIEW)
    answer = await sr.view_submission(form, form_values(**{
        "channel/value": "EMAIL_SMS", "attachment/value": ["F0FLYER"]}))
    assert answer.body["response_action"] == "update", answer.body
    answer = await sr.view_submission(slack.views[form["id"]])  # Send
    assert answer.body["response_action"] == "update"
    assert "is being sent now" in texts(slack.views[form["id"]])
    assert on_loop == []
    assert off_loop  # the spies did see the renders: preview, test send, validation
