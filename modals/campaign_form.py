"""The campaign form, its parser, the confirmation and the success views (pure)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from modals import ids
from modals.common import Block, Metadata, View, button, context, escape, modal, option, plain
from modals.common import section as text_section

TITLE = "New campaign"
CHANNELS = (("EMAIL", "Email"), ("SMS", "SMS"), ("EMAIL_SMS", "Email and SMS"))
WHEN = ((ids.WHEN_NOW, "Send now"), (ids.WHEN_SCHEDULE, "Schedule"))
FILE_TYPES = ["pdf", "png", "jpg", "jpeg"]
# The service's field → the block its error is shown next to.
FIELD_BLOCKS = {
    "subject": ids.SUBJECT_BLOCK,
    "preview_text": ids.PREVIEW_TEXT_BLOCK,
    "message": ids.MESSAGE_BLOCK,
    "channel": ids.CHANNEL_BLOCK,
    "tags": ids.TAGS_BLOCK,
    "attachment": ids.ATTACHMENT_BLOCK,
}


@dataclass
class FormValues:
    """What the user typed in the form (not yet validated)."""

    subject: str = ""
    preview_text: str = ""
    message: str = ""
    channel: str = ""
    when: str = ""
    send_at: int | None = None  # unix seconds from the datetimepicker
    tags: str = ""
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def send_now(self) -> bool:
        return self.when == ids.WHEN_NOW

    def send_at_datetime(self) -> datetime | None:
        if self.when != ids.WHEN_SCHEDULE or self.send_at is None:
            return None
        return datetime.fromtimestamp(self.send_at, UTC)

    def to_data(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [{k: f.get(k) for k in ("id", "name")} for f in self.files]
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> FormValues:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _value(state: dict[str, Any], block: str) -> dict[str, Any]:
    found = state.get("values", {}).get(block, {}).get(ids.VALUE_ACTION, {})
    return found if isinstance(found, dict) else {}


def _selected(state: dict[str, Any], block: str) -> str:
    chosen = _value(state, block).get("selected_option") or {}
    return str(chosen.get("value") or "") if isinstance(chosen, dict) else ""


def parse_form(state: dict[str, Any]) -> FormValues:
    """The form's values from a view's `state` (missing fields are empty)."""
    picked = _value(state, ids.SEND_AT_BLOCK).get("selected_date_time")
    files = _value(state, ids.ATTACHMENT_BLOCK).get("files") or []
    return FormValues(
        subject=str(_value(state, ids.SUBJECT_BLOCK).get("value") or ""),
        preview_text=str(_value(state, ids.PREVIEW_TEXT_BLOCK).get("value") or ""),
        message=str(_value(state, ids.MESSAGE_BLOCK).get("value") or ""),
        channel=_selected(state, ids.CHANNEL_BLOCK),
        when=_selected(state, ids.WHEN_BLOCK),
        send_at=int(picked) if isinstance(picked, int | float) else None,
        tags=str(_value(state, ids.TAGS_BLOCK).get("value") or ""),
        files=[f for f in files if isinstance(f, dict)][:1],
    )


def error_blocks(errors: dict[str, str], values: FormValues) -> dict[str, str]:
    """The service's field errors keyed by the block each belongs next to."""
    out: dict[str, str] = {}
    for name, reason in errors.items():
        if name == "send_at":
            schedule = values.when == ids.WHEN_SCHEDULE
            block = ids.SEND_AT_BLOCK if schedule and values.send_at else ids.WHEN_BLOCK
            text = reason if block == ids.SEND_AT_BLOCK or not schedule else (
                "pick a date and time below, or choose Send now")
            out[block] = _sentence(name, text)
        elif name == "audience":
            out[ids.SUBJECT_BLOCK] = f"Audience: {reason}. Close this form and start again."
        else:
            out[FIELD_BLOCKS.get(name, ids.SUBJECT_BLOCK)] = _sentence(name, reason)
    return {block: text[:150] if len(text) > 150 else text for block, text in out.items()}


def _sentence(name: str, reason: str) -> str:
    label = {"send_at": "The date and time", "preview_text": "Preview text",
             "attachment": "The file", "channel": "Sending channel"}.get(name, name.capitalize())
    return reason[0].upper() + reason[1:] if reason.startswith(("the ", "at most", "each")) else (
        f"{label} {reason}")


def _text_input(block: str, label: str, *, multiline: bool = False, optional: bool = False,
                initial: str = "", hint: str | None = None, max_length: int | None = None,
                placeholder: str | None = None) -> Block:
    element: dict[str, Any] = {"type": "plain_text_input", "action_id": ids.VALUE_ACTION,
                               "multiline": multiline}
    if initial:
        element["initial_value"] = initial
    if max_length:
        element["max_length"] = max_length
    if placeholder:
        element["placeholder"] = plain(placeholder, 150)
    block_json: Block = {"type": "input", "block_id": block, "label": plain(label),
                         "optional": optional, "element": element}
    if hint:
        block_json["hint"] = plain(hint, 2000)
    return block_json


def _radio_or_select(kind: str, block: str, label: str, choices: tuple[tuple[str, str], ...],
                     initial: str) -> Block:
    options = [option(text, value) for value, text in choices]
    element: dict[str, Any] = {"type": kind, "action_id": ids.VALUE_ACTION, "options": options}
    if kind == "static_select":
        element["placeholder"] = plain("Choose")
    chosen = next((o for o in options if o["value"] == initial), None)
    if chosen is not None:
        element["initial_option"] = chosen
    return {"type": "input", "block_id": block, "label": plain(label), "element": element}


def form_view(
    metadata: Metadata, *, audience_text: str, user_tz: str | None,
    values: FormValues | None = None, banner: str | None = None,
) -> View:
    """Subject, Preview text, Message, Sending channel, When, Tags, Attachment; Preview button."""
    v = values or FormValues(channel="EMAIL", when=ids.WHEN_NOW)
    zone = user_tz or "UTC"
    picker: dict[str, Any] = {"type": "datetimepicker", "action_id": ids.VALUE_ACTION}
    if v.send_at:
        picker["initial_date_time"] = int(v.send_at)
    blocks: list[Block] = []
    if banner:
        blocks.append(text_section(f":warning: {escape(banner)}"))
    blocks += [
        context(f"Audience: {audience_text}"),
        _text_input(ids.SUBJECT_BLOCK, "Subject", initial=v.subject, max_length=200,
                    hint="At least 5 characters. You may use {{ first_name }}."),
        _text_input(ids.PREVIEW_TEXT_BLOCK, "Preview text", optional=True, max_length=150,
                    initial=v.preview_text, hint="Shown after the subject in the inbox."),
        _text_input(ids.MESSAGE_BLOCK, "Message", multiline=True, initial=v.message,
                    hint="At least 20 characters. Variables: {{ first_name }}, {{ last_name }}, "
                    "{{ full_name }}, {{ patient_type }}, {{ clinic_name }}."),
        _radio_or_select("static_select", ids.CHANNEL_BLOCK, "Sending channel", CHANNELS,
                         v.channel),
        # Choosing a radio button dispatches an action: the form is redrawn with (or
        # without) the date and time.
        {**_radio_or_select("radio_buttons", ids.WHEN_BLOCK, "When", WHEN, v.when),
         "dispatch_action": True,
         "hint": plain(f"Schedule asks for a date and time in your time zone ({zone}).")},
    ]
    if v.when == ids.WHEN_SCHEDULE:
        blocks.append({
            "type": "input", "block_id": ids.SEND_AT_BLOCK,
            "label": plain("Date and time"), "element": picker,
            "hint": plain(f"At least 1 minute ahead, in your time zone ({zone})."),
        })
    blocks += [
        _text_input(ids.TAGS_BLOCK, "Tags", optional=True, initial=v.tags,
                    hint="Comma-separated, e.g. checkup, spring"),
        {
            "type": "input", "block_id": ids.ATTACHMENT_BLOCK, "optional": True,
            "label": plain("Attachment"),
            "element": {"type": "file_input", "action_id": ids.VALUE_ACTION,
                        "filetypes": FILE_TYPES, "max_files": 1},
            "hint": plain("One PDF, PNG or JPEG file."),
        },
        {"type": "actions", "block_id": ids.FORM_ACTIONS_BLOCK,
         "elements": [button("Preview", ids.PREVIEW_ACTION)]},
    ]
    return modal(ids.FORM_VIEW, TITLE, blocks, submit="Next", close="Cancel",
                 metadata=metadata.encode())


def when_text(send_now: bool, send_at: datetime | None, tz: str | None) -> str:
    if send_now or send_at is None:
        return "now"
    zone = ZoneInfo(tz) if tz else UTC
    local = send_at.astimezone(zone)
    return f"{local:%a %d %b %Y, %H:%M} ({tz or 'UTC'})"


def confirm_view(
    metadata: Metadata, *, values: FormValues, audience_text: str, user_tz: str | None,
    attachment_name: str | None,
) -> View:
    """The last step: what will be sent, to whom and when; submit `Send` or `Schedule`."""
    when = when_text(values.send_now, values.send_at_datetime(), user_tz)
    channel = dict(CHANNELS).get(values.channel, values.channel)
    lines = [
        f"*Subject:* {escape(values.subject.strip())}",
        f"*Audience:* {audience_text}",
        f"*Sending channel:* {channel}",
        f"*When:* {when}",
    ]
    if values.tags.strip():
        lines.append(f"*Tags:* {escape(values.tags.strip())}")
    if attachment_name:
        lines.append(f"*Attachment:* {escape(attachment_name)}")
    blocks = [text_section("\n".join(lines)),
              context("Press the button below to confirm; this cannot be undone once sent.")]
    submit = "Send" if values.send_now else "Schedule"
    return modal(ids.CONFIRM_VIEW, "Confirm campaign", blocks, submit=submit, close="Cancel",
                 metadata=metadata.encode())


def done_view(campaign_id: int, *, send_now: bool, when: str, channel_id: str | None) -> View:
    what = "is being sent now" if send_now else f"is scheduled for {when}"
    where = f" Progress is posted in <#{channel_id}>." if channel_id else ""
    return modal(ids.DONE_VIEW, "Campaign created",
                 [text_section(f":white_check_mark: Campaign {campaign_id} {what}.{where}")],
                 close="Done")
