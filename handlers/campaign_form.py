"""The campaign form: validate every field at once, confirm, create exactly one campaign."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.senders import links
from handlers import campaign_list
from handlers.audience import ACTION, WRITE, metadata_of
from handlers.errors import acknowledged, on_error
from handlers.slack_support import SlackDeps, deps, user_id_of
from modals import ids
from modals.campaign_form import (
    FormValues,
    confirm_view,
    done_view,
    error_blocks,
    form_view,
    parse_form,
    when_text,
)
from modals.common import Metadata, escape
from services import campaigns, drafts, notices
from services.attachments import AttachmentInput, limit_text, too_large_text
from services.campaign_validation import CampaignInput
from services.delivery.campaign_runs import CampaignEvent
from services.errors import ValidationFailed
from services.models import ModalDraft

log = logging.getLogger(__name__)
# The submission must be answered within Slack's 3 s (errors go in the ack), and validation
# and the database still follow the download: a slow download is an error the user can act
# on (attach it again), not a timed-out modal.
DOWNLOAD_SECONDS = 2.0
# Links are signed tokens of one length whatever the id, so a link for a campaign not yet
# created (the preview, validation) is exactly as long as the real one.
PLACEHOLDER_CAMPAIGN_ID = 0


class DownloadFailed(Exception):
    """The attachment could not be fetched from Slack (the field's error)."""


async def download(d: SlackDeps, client: AsyncWebClient, file: dict[str, Any]) -> bytes:
    """The file's bytes exactly as uploaded, read to the end, refusing more than the limit."""
    limit = d.settings.limits.attachment_max_bytes
    declared = file.get("size")
    if isinstance(declared, int) and declared > limit:  # no need to fetch it to say so
        raise DownloadFailed(too_large_text(declared, limit))
    try:
        async with asyncio.timeout(DOWNLOAD_SECONDS):
            return await _fetch(d, client, file, limit)
    except TimeoutError:
        raise DownloadFailed(
            f"could not be fetched from Slack in time ({DOWNLOAD_SECONDS:g} seconds); attach "
            f"it again, or a smaller file ({limit_text(limit)})") from None


async def _fetch(d: SlackDeps, client: AsyncWebClient, file: dict[str, Any], limit: int) -> bytes:
    url = file.get("url_private_download") or file.get("url_private")
    if not url and file.get("id"):
        try:
            info = await client.files_info(file=str(file["id"]))
        except SlackApiError as exc:
            raise DownloadFailed(f"could not be fetched: Slack answered "
                                 f"{exc.response.get('error')}; attach it again") from None
        found = info.get("file") or {}
        url = found.get("url_private_download") or found.get("url_private")
    if not url:
        raise DownloadFailed("could not be fetched: Slack gave no link to it; attach it again")
    headers = {"Authorization": f"Bearer {d.settings.slack_bot_token}"}
    content = bytearray()
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(str(url), headers=headers) as response:
            if response.status != 200:
                raise DownloadFailed(f"could not be fetched: Slack answered {response.status}; "
                                     "attach it again")
            if response.content_length is not None and response.content_length > limit:
                raise DownloadFailed(too_large_text(response.content_length, limit))
            # Slack sends the file in pieces; one read returns only what has arrived so far.
            async for piece in response.content.iter_any():
                content += piece
                if len(content) > limit:
                    raise DownloadFailed(
                        f"is over {limit / (1024 * 1024):g} MB, too large; attach a "
                        f"{limit_text(limit)}")
    except aiohttp.ClientError as exc:
        raise DownloadFailed(f"could not be downloaded ({type(exc).__name__}); "
                             "attach it again") from None
    return bytes(content)


async def attachment_link(d: SlackDeps) -> str | None:
    """A link as long as the one SMS carry for a campaign's attachment; None when SMS carry
    none (no PUBLIC_BASE_URL: no link a patient's phone could open)."""
    links_ = await links(d.settings, d.db, d.signer)
    return links_.attachment(PLACEHOLDER_CAMPAIGN_ID) if links_.public else None


def campaign_input(draft: ModalDraft, values: FormValues, attachment: AttachmentInput | None,
                   *, key: str | None = None, sms_link: str | None = None) -> CampaignInput:
    data = draft.data or {}
    segment = data.get("segment")
    return CampaignInput(
        subject=values.subject, message=values.message, channel=values.channel,
        preview_text=values.preview_text or None, tags=values.tags,
        segment_slug=segment or None,
        patient_ids=None if segment else list(draft.selected_patient_ids or []),
        attachment=attachment, send_now=values.send_now,
        send_at=None if values.send_now else values.send_at_datetime(),
        slack_channel_id=data.get("channel"), idempotency_key=key,
        sms_attachment_link=sms_link if attachment is not None else None,
    )


def stored_attachment(draft: ModalDraft) -> AttachmentInput | None:
    saved = (draft.data or {}).get("attachment")
    if not saved:
        return None
    return AttachmentInput(saved["name"], base64.b64decode(saved["content"]))


def audience_text(draft: ModalDraft) -> str:
    data = draft.data or {}
    size = int(data.get("audience") or 0)
    what = (f"smart segment `{escape(data['segment'])}`" if data.get("segment")
            else "custom selection")
    return f"{what}, {size:,} patients"


async def on_form_submit(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                         context: AsyncBoltContext) -> None:
    d = deps(context)
    user = user_id_of(body)
    actor = await d.require(user, WRITE, ACTION)
    metadata = metadata_of(body)
    values = parse_form(body["view"].get("state") or {})
    edge_errors: dict[str, str] = {}
    attachment: AttachmentInput | None = None
    if values.files:
        file = values.files[0]
        try:
            content = await download(d, client, file)
            attachment = AttachmentInput(str(file.get("name") or "attachment"), content)
        except DownloadFailed as exc:
            edge_errors["attachment"] = str(exc)
    sms_link = await attachment_link(d) if attachment is not None else None
    async with d.db.transaction() as session:
        draft = await drafts.get(session, metadata.draft, user_id=actor.id, for_update=True)
        errors: dict[str, str] = {}
        try:
            # Renders the templates: campaign_validation.validate does it in a worker thread.
            await campaigns.validate(session=session, campaign_in=campaign_input(
                draft, values, attachment, sms_link=sms_link), limits=d.settings.limits,
                clinic_tz=d.settings.clinic_timezone)
        except ValidationFailed as exc:
            errors = exc.errors
        errors |= edge_errors
        if errors:
            answer: dict[str, Any] = {"response_action": "errors",
                                      "errors": error_blocks(errors, values)}
        else:
            saved = None if attachment is None else {
                "name": attachment.filename,
                "content": base64.b64encode(attachment.content).decode("ascii"),
            }
            drafts.update(draft, data={"form": values.to_data(), "attachment": saved})
            answer = {"response_action": "update", "view": confirm_view(
                metadata, values=values, audience_text=audience_text(draft),
                user_tz=draft.data.get("tz"),
                attachment_name=attachment.filename if attachment else None)}
    await ack(**answer)  # after the commit


async def on_confirm(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                     context: AsyncBoltContext) -> None:
    d = deps(context)
    user = user_id_of(body)
    actor = await d.require(user, WRITE, ACTION)
    metadata = metadata_of(body)
    sms_link = await attachment_link(d)
    async with d.db.transaction() as session:
        draft = await drafts.get(session, metadata.draft, user_id=actor.id)
        values = FormValues.from_data((draft.data or {}).get("form") or {})
        try:
            campaign = await campaigns.create(
                session=session, actor=actor, limits=d.settings.limits,
                clinic_tz=d.settings.clinic_timezone,
                campaign_in=campaign_input(draft, values, stored_attachment(draft),
                                           key=draft.id, sms_link=sms_link),
            )
        except ValidationFailed as exc:
            banner = "Please fix: " + "; ".join(f"{k}: {v}" for k, v in exc.errors.items())
            await ack(response_action="update", view=form_view(
                Metadata(draft=draft.id, channel=metadata.channel),
                audience_text=audience_text(draft), user_tz=draft.data.get("tz"),
                values=values, banner=banner))
            return
        claimed = await notices.claim_announcement(session, campaign.id)
        tz = draft.data.get("tz")
    when = when_text(campaign.send_now, campaign.send_at, tz)
    channel = campaign.slack_channel_id
    await ack(response_action="update",
              view=done_view(campaign.id, send_now=campaign.send_now, when=when,
                             channel_id=channel))
    d.poke()
    if claimed:
        try:
            await campaign_list.announce(d, client, campaign.id, user_id=user)
        except Exception as exc:  # acknowledged already: report it ourselves
            await on_error(exc, body, client, None)
        if d.notifier is not None and not campaign.send_now:  # the engine reports the rest
            await d.notifier.campaign_event(CampaignEvent(campaign.id, "scheduled"))


@acknowledged
async def on_when(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                  context: AsyncBoltContext) -> None:
    """`Send now` / `Schedule` chosen: redraw the form with (or without) the date and time."""
    d = deps(context)
    actor = await d.require(user_id_of(body), WRITE, ACTION)
    metadata = metadata_of(body)
    values = parse_form(body["view"].get("state") or {})
    async with d.db.sessions() as session:
        draft = await drafts.get(session, metadata.draft, user_id=actor.id)
    view = form_view(metadata, audience_text=audience_text(draft),
                     user_tz=(draft.data or {}).get("tz"), values=values)
    await client.views_update(view_id=body["view"]["id"], hash=body["view"].get("hash"),
                              view=view)


def register(app: AsyncApp) -> None:
    app.action({"block_id": ids.WHEN_BLOCK, "action_id": ids.VALUE_ACTION})(on_when)
    app.view_submission(ids.FORM_VIEW)(on_form_submit)
    app.view_submission(ids.CONFIRM_VIEW)(on_confirm)

