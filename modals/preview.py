"""The preview: the email and SMS for a sample patient, SMS cost, reach, test sends (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from modals import ids
from modals.common import Block, Metadata, View, button, clip, context, escape, modal, plain
from modals.common import section as text_section
from services.delivery.sms_text import SmsAnalysis
from services.drafts import Reach


@dataclass
class PreviewData:
    subject: str
    preview_text: str | None
    email_body: str
    sms_body: str  # exactly what the sample patient's phone receives
    sms: SmsAnalysis
    reach: Mapping[str, Reach]
    audience: int
    sample: str  # who the sample patient is (shown only in the user's own modal)
    problems: list[str] = field(default_factory=list)
    sms_link: bool = False  # the SMS carries the attachment's link (a stand-in until created)
    test_patient: str = "a made-up patient"  # whose data test sends show
    tests_per_minute: int = 3


@dataclass(frozen=True)
class PhoneEntry:
    """The number typed for a test SMS; `e164`/`shown` once it is valid and awaits a yes."""

    typed: str
    e164: str | None = None
    shown: str | None = None


def _reach_line(channel: str, reach: Reach, audience: int) -> str:
    line = f"*{channel}:* {reach.reachable:,} of {audience:,} reachable"
    if reach.skipped:
        reasons = ", ".join(f"{escape(reason)} {count:,}" for reason, count in
                            sorted(reach.skipped.items(), key=lambda kv: -kv[1]))
        line += f"; skipped: {reasons}"
    return line


def _sms_blocks(data: PreviewData) -> list[Block]:
    sms = data.sms
    # Plain text, not mrkdwn: Slack shows it character for character, as the phone will.
    blocks: list[Block] = [
        text_section("*SMS*, exactly as it will be sent:"),
        {"type": "section",
         "text": {"type": "plain_text", "text": clip(data.sms_body, 3000) or " ",
                  "emoji": False}},
    ]
    cost = (f"{sms.segments} SMS segment{'s' if sms.segments != 1 else ''} per patient, "
            f"{sms.encoding}, {sms.characters} characters ({sms.per_segment} per segment)")
    if data.sms_link:
        cost += ("; the link in it will open the attachment once the campaign is created "
                 "(the campaign's own link is just as long)")
    blocks.append(context(cost))
    if sms.warning:
        blocks.append(text_section(f":warning: {escape(sms.warning)}"))
    return blocks


def _test_blocks(data: PreviewData, phone: PhoneEntry | None) -> list[Block]:
    blocks: list[Block] = []
    tests = []
    if "email" in data.reach:
        tests.append(button("Send test email to me", ids.TEST_EMAIL_ACTION))
    if "sms" in data.reach:
        element = {"type": "plain_text_input", "action_id": ids.VALUE_ACTION,
                   "placeholder": plain("+52 55 1234 5678")}
        if phone is not None and phone.typed:
            element["initial_value"] = phone.typed
        blocks.append({
            "type": "input", "block_id": ids.TEST_PHONE_BLOCK, "optional": True,
            "label": plain("Your phone, for a test SMS"), "element": element,
        })
        if phone is not None and phone.e164 and phone.shown:
            confirm_button = button(f"Send test SMS to {phone.shown}", ids.TEST_SMS_ACTION,
                                    value=phone.e164, style="primary")
            confirm_button["confirm"] = {
                "title": plain("Send a test SMS?", 100),
                "text": plain(f"A test SMS goes to {phone.shown} through the real SMS "
                              "provider. Is this your number?", 300),
                "confirm": plain("Send", 30), "deny": plain("Not yet", 30),
            }
            tests.append(confirm_button)
        else:
            tests.append(button("Send test SMS", ids.TEST_SMS_ACTION))
    blocks.append({"type": "actions", "block_id": ids.TEST_BLOCK, "elements": tests})
    blocks.append(context(
        f"Tests show a made-up patient, {escape(data.test_patient)}, and go only to you: the "
        "email address of your Slack profile, or a phone number you type and confirm. They "
        "go through the real senders, are not counted in the campaign, and are limited to "
        f"{data.tests_per_minute} a minute."))
    return blocks


def preview_view(metadata: Metadata, data: PreviewData, *, notice: str | None = None,
                 phone: PhoneEntry | None = None) -> View:
    blocks: list[Block] = [context(f"Rendered for a sample patient of the audience: "
                                   f"{escape(data.sample)}")]
    for problem in data.problems:
        blocks.append(text_section(f":warning: {escape(problem)}"))
    if "email" in data.reach:
        lines = [f"*Email subject:* {escape(data.subject)}"]
        if data.preview_text:
            lines.append(f"*Preview text:* {escape(data.preview_text)}")
        lines.append(escape(clip(data.email_body, 2500)))
        blocks.append(text_section("\n".join(lines)))
    if "sms" in data.reach:
        blocks += _sms_blocks(data)
    blocks.append(text_section("*Reachable now*\n" + "\n".join(
        _reach_line(channel, reach, data.audience) for channel, reach in data.reach.items())))
    blocks += _test_blocks(data, phone)
    if notice:
        blocks.append(text_section(escape(notice)))
    return modal(ids.PREVIEW_VIEW, "Preview", blocks, submit="Done", close="Back",
                 metadata=metadata.encode())
