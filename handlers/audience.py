"""The audience step: open the modal, the smart-segment select and the lazy table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncSession

from handlers.errors import acknowledged
from handlers.slack_support import SlackDeps, deps, user_id_of, user_timezone
from modals import audience as views
from modals import ids
from modals.campaign_form import form_view
from modals.common import Metadata, escape
from services import drafts, lazy_table, segments
from services.campaign_validation import audience_size_problem
from services.errors import NotFound
from services.models import AccessLevel, ModalDraft

WRITE = AccessLevel.write
ACTION = "create campaigns"


def metadata_of(body: dict[str, Any]) -> Metadata:
    try:
        return Metadata.decode((body.get("view") or {}).get("private_metadata"))
    except (ValueError, TypeError):
        raise NotFound("campaign draft", "in this view") from None


async def start(d: SlackDeps, client: AsyncWebClient, *, user_id: str, channel_id: str | None,
                trigger_id: str) -> None:
    """Open the modal at once (a light view), then load the segments and their sizes."""
    await d.require(user_id, WRITE, ACTION)
    opened = await client.views_open(trigger_id=trigger_id, view=views.loading_view())
    view = opened["view"]
    tz = await user_timezone(d, client, user_id)
    settings = d.settings
    async with d.db.transaction() as session:
        await drafts.expire(session)  # yesterday's abandoned forms
        draft = await drafts.create(session, user_id=user_id,
                                    data={"channel": channel_id, "tz": tz})
        found = await segments.list_segments(session, with_counts=True,
                                             clinic_tz=settings.clinic_timezone,
                                             cap=settings.max_audience)
    metadata = Metadata(draft=draft.id, channel=channel_id)
    await client.views_update(
        view_id=view["id"], hash=view.get("hash"),
        view=views.audience_view(metadata, found, max_audience=settings.max_audience),
    )


async def _draft(d: SlackDeps, session: AsyncSession, metadata: Metadata, user_id: str,
                 *, for_update: bool = False) -> ModalDraft:
    return await drafts.get(session, metadata.draft, user_id=user_id, for_update=for_update)


async def table(d: SlackDeps, session: AsyncSession, metadata: Metadata,
                draft: ModalDraft) -> dict[str, Any]:
    """The table view for the page `metadata` points at (reading it again)."""
    found = await lazy_table.page(
        session, query=metadata.query, after=metadata.page_after, before=metadata.page_before,
        size=10, phone_region=d.settings.default_phone_region,
    )
    metadata.next, metadata.previous = found.next_cursor, found.previous_cursor
    return views.table_view(
        metadata, found.rows, draft.selected_patient_ids or [],
        max_audience=d.settings.max_audience, has_previous=found.has_previous,
        has_next=found.has_next,
    )


async def _update_table(d: SlackDeps, client: AsyncWebClient, body: dict[str, Any],
                        metadata: Metadata,
                        change: Callable[[set[int]], set[int]] | None = None) -> None:
    """Apply `change` to the draft's selection (locked), then show the table's page."""
    user = user_id_of(body)
    async with d.db.transaction() as session:
        draft = await _draft(d, session, metadata, user, for_update=change is not None)
        if change is not None:
            drafts.update(draft, selected=sorted(change(set(draft.selected_patient_ids or []))))
        view = await table(d, session, metadata, draft)
    try:
        await client.views_update(view_id=body["view"]["id"], hash=body["view"].get("hash"),
                                  view=view)
    except SlackApiError as exc:
        if exc.response.get("error") != "hash_conflict":
            raise
        # A newer action already updated the view; its state wins, the selection is saved.


@acknowledged
async def on_customize(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                       context: AsyncBoltContext) -> None:
    d = deps(context)
    await d.require(user_id_of(body), WRITE, ACTION)
    metadata = metadata_of(body)
    metadata.query, metadata.page_after, metadata.page_before = "", None, None
    await _update_table(d, client, body, metadata)


@acknowledged
async def on_search(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                    context: AsyncBoltContext) -> None:
    d = deps(context)
    await d.require(user_id_of(body), WRITE, ACTION)
    metadata = metadata_of(body)
    action = (body.get("actions") or [{}])[0]
    metadata.query = str(action.get("value") or "").strip()[:lazy_table.MAX_QUERY_LENGTH]
    metadata.page_after = metadata.page_before = None
    await _update_table(d, client, body, metadata)


@acknowledged
async def on_page(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                  context: AsyncBoltContext) -> None:
    d = deps(context)
    await d.require(user_id_of(body), WRITE, ACTION)
    metadata = metadata_of(body)
    forward = (body.get("actions") or [{}])[0].get("action_id") == ids.NEXT_ACTION
    if forward:
        metadata.page_after, metadata.page_before = metadata.next, None
    else:
        metadata.page_after, metadata.page_before = None, metadata.previous
    await _update_table(d, client, body, metadata)


@acknowledged
async def on_check(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                   context: AsyncBoltContext) -> None:
    d = deps(context)
    await d.require(user_id_of(body), WRITE, ACTION)
    metadata = metadata_of(body)
    view = body.get("view") or {}
    on_page = set(views.page_patient_ids(view))
    action = (body.get("actions") or [{}])[0]
    checked = views.checked_ids(action.get("selected_options") or []) & on_page
    # What this click changed against the page as drawn: quick clicks, whatever order
    # they arrive in, each add or remove only their own ticks.
    drawn = views.page_initial_ids(view)
    added, removed = checked - drawn, (drawn - checked) & on_page
    await _update_table(d, client, body, metadata, lambda chosen: (chosen | added) - removed)


@acknowledged
async def on_select_page(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                         context: AsyncBoltContext) -> None:
    d = deps(context)
    await d.require(user_id_of(body), WRITE, ACTION)
    metadata = metadata_of(body)
    on_page = set(views.page_patient_ids(body.get("view") or {}))
    await _update_table(d, client, body, metadata, lambda chosen: chosen | on_page)


async def _audience_text(session: AsyncSession, draft: ModalDraft) -> str:
    data = draft.data or {}
    size = int(data.get("audience") or 0)
    if data.get("segment"):
        definition = await segments.get_definition(session, str(data["segment"]))
        return f"smart segment *{escape(definition.name)}*, {size:,} patients"
    return f"custom selection, {size:,} patients"


async def _to_form(session: AsyncSession, metadata: Metadata,
                   draft: ModalDraft) -> dict[str, Any]:
    text = await _audience_text(session, draft)
    return {"response_action": "update",
            "view": form_view(metadata, audience_text=text, user_tz=draft.data.get("tz"))}


async def on_audience_submit(ack: AsyncAck, body: dict[str, Any],
                             context: AsyncBoltContext) -> None:
    d = deps(context)
    user = user_id_of(body)
    await d.require(user, WRITE, ACTION)
    metadata = metadata_of(body)
    slug = views.chosen_segment(body["view"].get("state") or {})
    limits, settings = d.settings.limits, d.settings
    async with d.db.transaction() as session:
        draft = await _draft(d, session, metadata, user, for_update=True)
        if slug is not None:
            size = await segments.count(session, slug, clinic_tz=settings.clinic_timezone,
                                        cap=limits.max_audience)
            problem = audience_size_problem(size, limits, segment=True)
            if problem and size > limits.max_audience:
                problem = (f"This segment has more than {limits.max_audience:,} patients (the "
                           "limit): pick a narrower segment or use Customize selection")
            elif problem:
                problem = "This segment has no patients: pick another or Customize selection"
            data: dict[str, Any] = {"segment": slug, "audience": size}
        else:
            size = len(draft.selected_patient_ids or [])
            problem = audience_size_problem(size, limits, segment=False) if size else (
                "Pick a smart segment, or choose patients with Customize selection")
            data = {"segment": None, "audience": size}
        if problem:
            answer = {"response_action": "errors", "errors": {ids.SEGMENT_BLOCK: problem[:150]}}
        else:
            drafts.update(draft, data=data)
            answer = await _to_form(session, metadata, draft)
    await ack(**answer)  # after the commit: the next step finds the draft as answered


async def on_table_submit(ack: AsyncAck, body: dict[str, Any],
                          context: AsyncBoltContext) -> None:
    d = deps(context)
    user = user_id_of(body)
    await d.require(user, WRITE, ACTION)
    metadata = metadata_of(body)
    limits = d.settings.limits
    async with d.db.transaction() as session:
        draft = await _draft(d, session, metadata, user, for_update=True)
        size = len(draft.selected_patient_ids or [])
        problem = audience_size_problem(size, limits, segment=False)
        if problem:
            text = ("No patients selected: tick some, or use Select all on this page"
                    if size == 0 else f"{size:,} selected; the limit is "
                    f"{limits.max_audience:,}: unselect {size - limits.max_audience:,}")
            answer = {"response_action": "errors", "errors": {ids.SEARCH_BLOCK: text}}
        else:
            drafts.update(draft, data={"segment": None, "audience": size})
            answer = await _to_form(session, metadata, draft)
    await ack(**answer)


def register(app: AsyncApp) -> None:
    app.action(ids.CUSTOMIZE_ACTION)(on_customize)
    app.action(ids.SEARCH_ACTION)(on_search)
    app.action(ids.NEXT_ACTION)(on_page)
    app.action(ids.PREVIOUS_ACTION)(on_page)
    app.action(ids.PATIENTS_ACTION)(on_check)
    app.action(ids.SELECT_PAGE_ACTION)(on_select_page)
    app.view_submission(ids.AUDIENCE_VIEW)(on_audience_submit)
    app.view_submission(ids.TABLE_VIEW)(on_table_submit)

