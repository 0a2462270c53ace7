"""Preview (before submitting): the rendered email and SMS, reach, and "Send test to me"."""

from __future__ import annotations

import logging
from typing import Any

import phonenumbers
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.senders import FILE_POSTAL_ADDRESS, FILE_SENDER, email_sender, sms_sender
from handlers.audience import ACTION, WRITE, metadata_of
from handlers.campaign_form import stored_attachment
from handlers.errors import acknowledged
from handlers.slack_support import SlackDeps, deps, user_id_of, user_info
from modals import ids
from modals.campaign_form import FormValues, parse_form
from modals.common import Metadata
from modals.preview import PreviewData, preview_view
from services import audit, drafts, personalisation
from services.delivery import sms_text
from services.delivery.email_message import Attachment, CampaignMail
from services.models import Channel, ModalDraft, Patient

log = logging.getLogger(__name__)
TEST_PREFIX = "[TEST] "


def _channel(values: FormValues) -> Channel:
    return Channel(values.channel) if values.channel in Channel.__members__ else Channel.EMAIL


def _render(d: SlackDeps, values: FormValues, patient: Patient | None) -> tuple[
        dict[str, str], list[str]]:
    """Subject, preview text, email body and SMS for the patient; and what failed to render."""
    variables = (personalisation.variables_for(patient, d.settings.clinic_name) if patient
                 else dict(personalisation.SAMPLE_VALUES))
    out: dict[str, str] = {}
    problems: list[str] = []
    for name, source in (("subject", values.subject), ("message", values.message)):
        try:
            out[name] = personalisation.render_text(source, variables)
        except personalisation.PersonalisationError as exc:
            out[name] = source
            problems.append(f"The {name} {exc}")
    out["sms"] = sms_text.compose(out["message"], opt_out_text=d.settings.sms_opt_out_text)
    return out, problems


async def _preview(d: SlackDeps, draft: ModalDraft, values: FormValues,
                   patient_id: int | None = None) -> tuple[PreviewData, Patient | None]:
    channel = _channel(values)
    async with d.db.sessions() as session:
        audience = await drafts.audience_ids(session, draft, limit=d.settings.max_audience,
                                             clinic_tz=d.settings.clinic_timezone)
        reach, sample = await drafts.reachability(session, audience, channel.delivery_channels)
        if patient_id is not None:
            sample = await session.get(Patient, patient_id) or sample
    rendered, problems = _render(d, values, sample)
    who = (f"{sample.first_name} {sample.last_name}".strip() or sample.external_id
           if sample else "none (typical values)")
    data = PreviewData(
        subject=rendered["subject"], preview_text=values.preview_text.strip() or None,
        email_body=rendered["message"], sms_body=rendered["sms"],
        sms=sms_text.analyse(rendered["sms"]),
        reach={c.value: r for c, r in reach.items()}, audience=len(audience), sample=who,
        problems=problems,
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


async def _send_test(d: SlackDeps, client: AsyncWebClient, body: dict[str, Any],
                     channel: str) -> None:
    user = user_id_of(body)
    actor = await d.require(user, WRITE, ACTION)
    metadata = metadata_of(body)
    async with d.db.sessions() as session:
        draft = await drafts.get(session, metadata.draft, user_id=actor.id)
    values = FormValues.from_data((draft.data or {}).get("preview") or {})
    data, _ = await _preview(d, draft, values, (draft.data or {}).get("preview_patient"))
    if channel == "email":
        address = ((await user_info(client, user)).get("profile") or {}).get("email")
        notice = (await _test_email(d, draft, data, str(address)) if address else
                  "Your Slack profile has no email address, so no test email was sent.")
    else:
        state = body["view"].get("state") or {}
        typed = (state.get("values", {}).get(ids.TEST_PHONE_BLOCK, {})
                 .get(ids.VALUE_ACTION, {}).get("value") or "")
        notice = await _test_sms(d, data, str(typed))
    async with d.db.transaction() as session:
        await audit.record(session, actor, "campaign.test_sent", channel=channel,
                           outcome=notice)
    await client.views_update(view_id=body["view"]["id"], hash=body["view"].get("hash"),
                              view=preview_view(metadata, data, notice=notice))


async def _test_email(d: SlackDeps, draft: ModalDraft, data: PreviewData, to: str) -> str:
    settings = d.settings
    saved = stored_attachment(draft)
    mail = CampaignMail(
        sender=settings.email_from or FILE_SENDER,
        postal_address=settings.clinic_postal_address or FILE_POSTAL_ADDRESS,
        clinic_name=settings.clinic_name, preview_text=data.preview_text,
        attachment=Attachment(saved.filename, saved.content) if saved else None,
    )
    message_id = mail.new_message_id()
    message = mail.render_chunks(
        to=to, message_id=message_id, subject=TEST_PREFIX + data.subject,
        text_body=data.email_body, preview_text=data.preview_text,
        unsubscribe_url=f"{settings.link_base_url}/unsubscribe/test-message",
    )
    sender = email_sender(settings)
    try:
        result = await sender.send(sender=mail.envelope_sender, recipient=to, message=message,
                                   message_id=message_id)
    finally:
        await sender.close()
    if result.provider_id is None:
        return f"The test email to {to} failed: {result.reason}"
    return f"Test email sent to {to}."


async def _test_sms(d: SlackDeps, data: PreviewData, typed: str) -> str:
    try:
        number = phonenumbers.parse(typed, d.settings.default_phone_region)
        if not phonenumbers.is_valid_number(number):
            raise ValueError(typed)
    except (phonenumbers.NumberParseException, ValueError):
        return "Type a phone number with its country code (e.g. +52 55 1234 5678) first."
    to = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    sender = sms_sender(d.settings)
    try:
        result = await sender.send(to=to, body=data.sms_body)
    finally:
        await sender.close()
    if result.provider_id is None:
        return f"The test SMS to {to} failed: {result.reason}"
    return f"Test SMS sent to {to}."


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
