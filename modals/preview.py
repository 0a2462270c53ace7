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
    sms_body: str
    sms: SmsAnalysis
    reach: Mapping[str, Reach]
    audience: int
    sample: str  # who the sample patient is (shown only in the user's own modal)
    problems: list[str] = field(default_factory=list)


def _reach_line(channel: str, reach: Reach, audience: int) -> str:
    line = f"*{channel}:* {reach.reachable:,} of {audience:,} reachable"
    if reach.skipped:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in
                            sorted(reach.skipped.items(), key=lambda kv: -kv[1]))
        line += f"; skipped: {reasons}"
    return line


def preview_view(metadata: Metadata, data: PreviewData, *, notice: str | None = None) -> View:
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
        sms = data.sms
        blocks.append(text_section(f"*SMS:*\n```{escape(clip(data.sms_body, 2500))}```"))
        cost = (f"{sms.segments} SMS segment{'s' if sms.segments != 1 else ''}, "
                f"{sms.encoding}, {sms.characters} characters ({sms.per_segment} per segment)")
        blocks.append(context(cost))
        if sms.warning:
            blocks.append(text_section(f":warning: {escape(sms.warning)}"))
    blocks.append(text_section("*Reachable now*\n" + "\n".join(
        _reach_line(channel, reach, data.audience) for channel, reach in data.reach.items())))
    tests = []
    if "email" in data.reach:
        tests.append(button("Send test email to me", ids.TEST_EMAIL_ACTION))
    if "sms" in data.reach:
        blocks.append({
            "type": "input", "block_id": ids.TEST_PHONE_BLOCK, "optional": True,
            "label": plain("Phone for a test SMS"),
            "element": {"type": "plain_text_input", "action_id": ids.VALUE_ACTION,
                        "placeholder": plain("+52 55 1234 5678")},
        })
        tests.append(button("Send test SMS", ids.TEST_SMS_ACTION))
    blocks.append({"type": "actions", "block_id": ids.TEST_BLOCK, "elements": tests})
    blocks.append(context("Test messages go through the real senders and are not counted in "
                          "the campaign."))
    if notice:
        blocks.append(text_section(escape(notice)))
    return modal(ids.PREVIEW_VIEW, "Preview", blocks, submit="Done", close="Back",
                 metadata=metadata.encode())
