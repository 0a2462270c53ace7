"""Preview before submitting, and "Send test to me" through the real (file) senders."""

from __future__ import annotations

import json
from email import message_from_bytes, policy

from sqlalchemy import func, select

from modals import ids
from services.models import AuditEntry, Delivery
from tests.campaign_fixtures import add_patients
from tests.slack.conftest import WRITER, Stand
from tests.slack.helpers import open_modal, texts, until

ACCENTED = "Hola {{ first_name }}, información sobre su chequeo anual en la clínica."


async def test_preview_shows_email_sms_cost_reach_and_sends_tests(stand: Stand) -> None:
    slack, sr = stand.slack, stand.sr
    await add_patients(stand.db, 3, email_opt_in=True, sms_opt_in=True, phone="+525512345678")
    await add_patients(stand.db, 2, prefix="Q")  # no consent on either channel
    view = await open_modal(slack, sr)
    await sr.view_submission(view, {"segment_select": "all"})
    form = slack.views[view["id"]]
    filled = {**form, "state": {"values": {
        ids.SUBJECT_BLOCK: {"value": {"type": "plain_text_input",
                                      "value": "Check-up, {{ full_name }}"}},
        ids.MESSAGE_BLOCK: {"value": {"type": "plain_text_input", "value": ACCENTED}},
        ids.CHANNEL_BLOCK: {"value": {"type": "static_select",
                                      "selected_option": {"value": "EMAIL_SMS"}}},
        ids.WHEN_BLOCK: {"value": {"type": "radio_buttons", "selected_option": {"value": "now"}}},
    }}}
    await sr.click(filled, ids.PREVIEW_ACTION)
    preview = await until(lambda: next((v for v in slack.views.values()
                                        if v["callback_id"] == ids.PREVIEW_VIEW), None))
    shown = texts(preview)
    # Rendered for a sample patient who can be reached (in the user's own modal only).
    assert "Check-up, AnaP0001 García" in shown
    assert "Reply STOP to opt out" in shown
    assert "UCS-2" in shown and "'ó'" in shown  # the accented characters' cost is explained
    assert "*email:* 3 of 5 reachable; skipped: no consent 2" in shown
    assert "*sms:* 3 of 5 reachable; skipped: no consent 2" in shown
    assert "Ana Ejemplo" in shown  # says whose made-up data the tests show

    await sr.click(preview, ids.TEST_EMAIL_ACTION)
    preview = await until(lambda: "Test email sent" in texts(slack.views[preview["id"]])
                          and slack.views[preview["id"]])
    [eml] = list(stand.outbox.glob("*.eml"))
    raw = eml.read_bytes()
    mail = message_from_bytes(raw, policy=policy.default)
    assert mail["To"] == "tester@clinic.example"  # the user's own Slack profile address
    assert mail["Subject"] == "[TEST] Check-up, Ana Ejemplo"
    assert "Hola Ana, informaci" in mail.get_body(("plain",)).get_content()
    for real in (b"AnaP000", b"Garc", b"@example.com", b"5512345678"):
        assert real not in raw, real  # no real patient's data in a test

    # A typed number is confirmed before anything is sent to it.
    with_phone = {**preview, "state": {"values": {ids.TEST_PHONE_BLOCK: {ids.VALUE_ACTION: {
        "type": "plain_text_input", "value": "+52 55 9876 5432"}}}}}
    await sr.click(with_phone, ids.TEST_SMS_ACTION)
    asking = await until(lambda: "Check the number" in texts(slack.views[preview["id"]])
                         and slack.views[preview["id"]])
    assert not (stand.outbox / "sms.jsonl").exists()
    block = next(b for b in asking["blocks"] if b.get("block_id") == ids.TEST_BLOCK)
    [sms_button] = [e for e in block["elements"] if e["action_id"] == ids.TEST_SMS_ACTION]
    assert sms_button["value"] == "+525598765432"
    assert "+52 55 9876 5432" in sms_button["confirm"]["text"]["text"]
    confirmed = {**asking, "state": with_phone["state"]}
    await sr.click(confirmed, ids.TEST_SMS_ACTION)
    await until(lambda: "Test SMS sent" in texts(slack.views[preview["id"]]))
    [sms] = [json.loads(line) for line in (stand.outbox / "sms.jsonl").read_text().splitlines()]
    assert sms["to"] == "+525598765432" and sms["body"].startswith("Hola Ana, información")
    assert "AnaP000" not in sms["body"]

    async with stand.db.sessions() as session:  # tests are not part of any campaign
        assert await session.scalar(select(func.count()).select_from(Delivery)) == 0
        audited = (await session.execute(select(AuditEntry).where(
            AuditEntry.action == "campaign.test_sent").order_by(AuditEntry.id))).scalars().all()
    assert [(e.actor, e.details["channel"], e.details["to"]) for e in audited] == [
        (WRITER, "email", "tester@clinic.example"), (WRITER, "sms", "+525598765432")]
