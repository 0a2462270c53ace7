"""Preview (before submitting): the rendered email and SMS, reach, and "Send test to me".

Test sends show a made-up patient (SPEC §7) and go only to the requesting user: the email
address of their Slack profile, or a phone number they type and then confirm. Each is
written to the audit log before it goes, and the log is what limits them per user.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import phonenumbers
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.senders import FILE_POSTAL_ADDRESS, FILE_SENDER, email_sender, sms_sender
from handlers.audience import ACTION, WRITE, metadata_of
from handlers.campaign_form import attachment_link, stored_attachment
from handlers.errors import acknowledged
from handlers.slack_support import SlackDeps, deps, user_id_of, user_info
from modals import ids
from modals.campaign_form import FormValues, parse_form
from modals.common import Metadata, escape
from modals.preview import PhoneEntry, PreviewData, preview_view
from services import audit, drafts, personalisation
from services.access import Actor
from services.delivery import sms_text
from services.delivery.email_message import Attachment, CampaignMail
from services.models import Channel, ModalDraft, Patient, utcnow

log = logging.getLogger(__name__)
TEST_PREFIX = "[TEST] "
TEST_SENT = "campaign.test_sent"  # the audit action; also what the per-user limit counts
TESTS_PER_MINUTE = 3
TEST_WINDOW = timedelta(minutes=1)
TEST_PATIENT_NAME = ("Ana", "Ejemplo")  # plainly made up: "ejemplo" is Spanish for "example"


def test_patient_values(clinic_name: str) -> dict[str, str]:
    """The template variables of the made-up patient every test send shows."""
    first, last = TEST_PATIENT_NAME
    return {"first_name": first, "last_name": last, "full_name": f"{first} {last}",
            "patient_type": "adult", "clinic_name": clinic_name}


@dataclass(frozen=True)
class Rendered:
    """One patient's subject, email text and SMS; and what failed to render."""

    subject: str
    message: str
    sms: str
    problems: list[str]
    sms_link: bool  # the SMS carries the attachment's link


def _channel(values: FormValues) -> Channel:
    return Channel(values.channel) if values.channel in Channel.__members__ else Channel.EMAIL


def _render(values: FormValues, variables: Mapping[str, str], *, opt_out_text: str,
            sms_link: str | None) -> Rendered:
    """The campaign as this patient gets it. CPU work (templates): run it in a worker thread."""
    out: dict[str, str] = {}
    problems: list[str] = []
    # Stripped as validation stores them, so the text is the one sending starts from.
    for name, source in (("subject", values.subject.strip()), ("message", values.message.strip())):
        try:
            out[name] = personalisation.render_text(source, variables)
        except personalisation.PersonalisationError as exc:
            out[name] = source
            problems.append(f"The {name} {exc}")
    # The composer sending uses (SmsDriver.text_for), with the link it appends.
    sms = sms_text.compose(out["message"], opt_out_text=opt_out_text, attachment_link=sms_link)
    return Rendered(out["subject"], out["message"], sms, problems, sms_link is not None)


async def _render_for(d: SlackDeps, values: FormValues,
                      variables: Mapping[str, str]) -> Rendered:
    # The file in the form now is the one the campaign will carry (each submit replaces it).
    link = await attachment_link(d) if values.files else None
    return await asyncio.to_thread(_render, values, variables,
                                   opt_out_text=d.settings.sms_opt_out_text, sms_link=link)


async def _preview(d: SlackDeps, draft: ModalDraft, values: FormValues,
                   patient_id: int | None = None) -> tuple[PreviewData, Patient | None]:
    channel = _channel(values)
    async with d.db.sessions() as session:
        audience = await drafts.audience_ids(session, draft, limit=d.settings.max_audience,
                                             clinic_tz=d.settings.clinic_timezone)
        reach, sample = await drafts.reachability(session, audience, channel.delivery_channels)
        if patient_id is not None:
            sample = await session.get(Patient, patient_id) or sample
    variables = (personalisation.variables_for(sample, d.settings.clinic_name) if sample
                 else dict(personalisation.SAMPLE_VALUES))
    rendered = await _render_for(d, values, variables)
    who = (f"{sample.first_name} {sample.last_name}".strip() or sample.external_id
           if sample else "none (typical values)")
    data = PreviewData(
        subject=rendered.subject, preview_text=values.preview_text.strip() or None,
        email_body=rendered.message, sms_body=rendered.sms, sms=sms_text.analyse(rendered.sms),
        reach={c.value: r for c, r in reach.items()}, audience=len(audience), sample=who,
        problems=rendered.problems, sms_link=rendered.sms_link,
        test_patient=" ".join(TEST_PATIENT_NAME), tests_per_minute=TESTS_PER_MINUTE,
    )
    return data, sample


@acknowledged
async def on_preview(ack: Any, body: dict[str, Any], client: AsyncWebClient,
                     context: Any) -> None:
    d = deps(context)
    actor = await d.require(user_id_of(body), WRITE, ACTION)
    metadata = metadata_of(body)
    values = parse_form(body["view"].get("state") or {})
    async with d.db.transaction() as session:
        draft = await drafts.get(session, metadata.draft, user_id=actor.id)
        data, sample = await _preview(d, draft, values)
        drafts.update(draft, data={"preview": values.to_data(),
                                   "preview_patient": sample.id if sample else None})
    await client.views_push(trigger_id=body["trigger_id"],
                            view=preview_view(Metadata(draft=draft.id), data))


def _phone(typed: str, region: str | None) -> tuple[str, str] | None:
    """(E.164, international format) of a valid number, else None."""
    try:
        number = phonenumbers.parse(typed, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return (phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
            phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL))


def _typed_phone(body: dict[str, Any]) -> str:
    state = body["view"].get("state") or {}
    found = (state.get("values", {}).get(ids.TEST_PHONE_BLOCK, {})
             .get(ids.VALUE_ACTION, {}).get("value"))
    return str(found or "").strip()


def _action_value(body: dict[str, Any]) -> str:
    actions = body.get("actions") or [{}]
    return str(actions[0].get("value") or "")


async def _claim_test(d: SlackDeps, actor: Actor, draft_id: str, *, channel: str,
                      to: str) -> int | None:
    """Record the test send about to go; None, or the seconds to wait when over the limit."""
    now = utcnow()
    async with d.db.transaction() as session:
        # The draft's row lock makes two quick clicks count one after the other.
        await drafts.get(session, draft_id, user_id=actor.id, for_update=True)
        recent = sorted([entry.at async for entry in audit.entries(session, since=now - TEST_WINDOW)
                         if entry.actor == actor.id and entry.action == TEST_SENT])
        if len(recent) >= TESTS_PER_MINUTE:
            frees_up = recent[len(recent) - TESTS_PER_MINUTE] + TEST_WINDOW
            return max(1, math.ceil((frees_up - now).total_seconds()))
        await audit.record(session, actor, TEST_SENT, channel=channel, to=to)
    return None


async def _send_test(d: SlackDeps, client: AsyncWebClient, body: dict[str, Any],
                     channel: str) -> None:
    user = user_id_of(body)
    actor = await d.require(user, WRITE, ACTION)
    metadata = metadata_of(body)
    async with d.db.sessions() as session:
        draft = await drafts.get(session, metadata.draft, user_id=actor.id)
    values = FormValues.from_data((draft.data or {}).get("preview") or {})
    typed = _typed_phone(body)
    phone = PhoneEntry(typed) if typed else None
    notice = await _test_notice(d, client, body, draft, values, channel, actor)
    if isinstance(notice, PhoneEntry):  # a number to confirm before anything is sent
        phone, notice = notice, ("Check the number, then press the button to send the test "
                                 "SMS to it.")
    data, _ = await _preview(d, draft, values, (draft.data or {}).get("preview_patient"))
    await client.views_update(view_id=body["view"]["id"], hash=body["view"].get("hash"),
                              view=preview_view(metadata, data, notice=notice, phone=phone))


async def _test_notice(d: SlackDeps, client: AsyncWebClient, body: dict[str, Any],
                       draft: ModalDraft, values: FormValues, channel: str,
                       actor: Actor) -> str | PhoneEntry:
    """Send the test if everything allows it; what to tell the user (or a number to confirm)."""
    if channel == "email":
        address = ((await user_info(client, actor.id)).get("profile") or {}).get("email")
        if not isinstance(address, str) or not address:
            return "Your Slack profile has no email address, so no test email was sent."
        to = address
    else:
        typed = _typed_phone(body)
        found = _phone(typed, d.settings.default_phone_region) if typed else None
        if found is None:
            return "Type your phone number with its country code (e.g. +52 55 1234 5678) first."
        to, shown = found
        if _action_value(body) != to:  # typed (or changed) but not yet confirmed
            return PhoneEntry(typed, to, shown)
    rendered = await _render_for(d, values, test_patient_values(d.settings.clinic_name))
    if rendered.problems:
        return "No test was sent: fix the template first. " + " ".join(rendered.problems)
    wait = await _claim_test(d, actor, draft.id, channel=channel, to=to)
    if wait is not None:
        return (f"You have sent {TESTS_PER_MINUTE} tests in the last minute, the most "
                f"allowed. Try again in {wait} seconds.")
    if channel == "email":
        return await _test_email(d, draft, values, rendered, to)
    return await _test_sms(d, rendered, to)


def _test_message(d: SlackDeps, draft: ModalDraft, values: FormValues, rendered: Rendered,
                  to: str) -> tuple[CampaignMail, str, tuple[bytes, ...]]:
    """The test email's bytes (encoding the attachment is CPU work: a worker thread runs it)."""
    settings = d.settings
    saved = stored_attachment(draft)
    preview_text = values.preview_text.strip() or None
    mail = CampaignMail(
        sender=settings.email_from or FILE_SENDER,
        postal_address=settings.clinic_postal_address or FILE_POSTAL_ADDRESS,
        clinic_name=settings.clinic_name, preview_text=preview_text,
        attachment=Attachment(saved.filename, saved.content) if saved else None,
    )
    message_id = mail.new_message_id()
    message = mail.render_chunks(
        to=to, message_id=message_id, subject=TEST_PREFIX + rendered.subject,
        text_body=rendered.message, preview_text=preview_text,
        unsubscribe_url=f"{settings.link_base_url}/unsubscribe/test-message",
    )
    return mail, message_id, message


async def _test_email(d: SlackDeps, draft: ModalDraft, values: FormValues, rendered: Rendered,
                      to: str) -> str:
    mail, message_id, message = await asyncio.to_thread(
        _test_message, d, draft, values, rendered, to)
    sender = email_sender(d.settings)
    try:
        result = await sender.send(sender=mail.envelope_sender, recipient=to, message=message,
                                   message_id=message_id)
    finally:
        await sender.close()
    if result.provider_id is None:
        log.info("test email failed: %s", result.reason)
        return f"The test email to {escape(to)} failed: {escape(result.reason or '')}"
    return f"Test email sent to {escape(to)}."


async def _test_sms(d: SlackDeps, rendered: Rendered, to: str) -> str:
    sender = sms_sender(d.settings)
    try:
        result = await sender.send(to=to, body=rendered.sms)
    finally:
        await sender.close()
    if result.provider_id is None:
        log.info("test SMS failed: %s", result.reason)
        return f"The test SMS to {escape(to)} failed: {escape(result.reason or '')}"
    return f"Test SMS sent to {escape(to)}."


@acknowledged
async def on_test_email(ack: Any, body: dict[str, Any], client: AsyncWebClient,
                        context: Any) -> None:
    await _send_test(deps(context), client, body, "email")


@acknowledged
async def on_test_sms(ack: Any, body: dict[str, Any], client: AsyncWebClient,
                      context: Any) -> None:
    await _send_test(deps(context), client, body, "sms")


async def on_preview_done(ack: Any, body: dict[str, Any], context: Any) -> None:
    """`Done` closes the preview (back to the form); nothing is created."""
    await deps(context).require(user_id_of(body), WRITE, ACTION)
    await ack()


def register(app: AsyncApp) -> None:
    app.action(ids.PREVIEW_ACTION)(on_preview)
    app.action(ids.TEST_EMAIL_ACTION)(on_test_email)
    app.action(ids.TEST_SMS_ACTION)(on_test_sms)
    app.view_submission(ids.PREVIEW_VIEW)(on_preview_done)
