"""The campaign form: validate every field at once, confirm, create exactly one campaign."""

from __future__ import annotations

import base64
import logging
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

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
from modals.common import Metadata
from services import campaigns, drafts, notices
from services.attachments import AttachmentInput, too_large_text
from services.campaign_validation import CampaignInput
from services.delivery.campaign_runs import CampaignEvent
from services.errors import ValidationFailed
from services.models import ModalDraft

log = logging.getLogger(__name__)
# The submission must be answered within Slack's 3 s (errors go in the ack): a slow download
# is an error the user can act on (attach it again), not a timed-out modal.
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


class DownloadFailed(Exception):
    """The attachment could not be fetched from Slack (the field's error)."""


async def download(d: SlackDeps, client: AsyncWebClient, file: dict[str, Any]) -> bytes:
    """The file's bytes, with the bot token, refusing more than the size limit."""
    url = file.get("url_private_download") or file.get("url_private")
    if not url and file.get("id"):
        try:
            info = await client.files_info(file=str(file["id"]))
        except SlackApiError as exc:
            raise DownloadFailed(f"Slack did not give the file ({exc.response.get('error')}); "
                                 "attach it again") from None
        found = info.get("file") or {}
        url = found.get("url_private_download") or found.get("url_private")
    if not url:
        raise DownloadFailed("Slack did not give the file; attach it again")
    limit = d.settings.limits.attachment_max_bytes
    headers = {"Authorization": f"Bearer {d.settings.slack_bot_token}"}
    try:
        async with aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT) as http, \
                http.get(str(url), headers=headers) as response:
            if response.status != 200:
                raise DownloadFailed(f"Slack answered {response.status} for the file; "
                                     "attach it again")
            content = await response.content.read(limit + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DownloadFailed(f"the file could not be downloaded ({type(exc).__name__}); "
                             "attach it again") from None
    if len(content) > limit:
        raise DownloadFailed(too_large_text(len(content), limit))
    return content


def campaign_input(draft: ModalDraft, values: FormValues, attachment: AttachmentInput | None,
                   *, key: str | None = None) -> CampaignInput:
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
    )


def stored_attachment(draft: ModalDraft) -> AttachmentInput | None:
    saved = (draft.data or {}).get("attachment")
    if not saved:
        return None
    return AttachmentInput(saved["name"], base64.b64decode(saved["content"]))


def audience_text(draft: ModalDraft) -> str:
    data = draft.data or {}
    size = int(data.get("audience") or 0)
    what = f"smart segment `{data['segment']}`" if data.get("segment") else "custom selection"
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
    async with d.db.transaction() as session:
        draft = await drafts.get(session, metadata.draft, user_id=actor.id, for_update=True)
        errors: dict[str, str] = {}
        try:
            await campaigns.validate(session=session, campaign_in=campaign_input(
                draft, values, attachment), limits=d.settings.limits,
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
    async with d.db.transaction() as session:
        draft = await drafts.get(session, metadata.draft, user_id=actor.id)
        values = FormValues.from_data((draft.data or {}).get("form") or {})
        try:
            campaign = await campaigns.create(
                session=session, actor=actor, limits=d.settings.limits,
                clinic_tz=d.settings.clinic_timezone,
                campaign_in=campaign_input(draft, values, stored_attachment(draft),
                                           key=draft.id),
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

