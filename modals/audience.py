"""The audience step: the smart-segment select, and the lazy table of patients (pure)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from modals import ids
from modals.common import (
    Block,
    Metadata,
    View,
    button,
    context,
    escape,
    modal,
    option,
    plain,
    section,
)
from services.lazy_table import PatientRow
from services.segments import SegmentSummary

TITLE = "New campaign"
MAX_SEGMENT_OPTIONS = 100


def loading_view() -> View:
    """Opened at once, so Slack's trigger is used within its 3 seconds; updated when loaded."""
    return modal(ids.LOADING_VIEW, TITLE, [section(":hourglass_flowing_sand: Loading…")],
                 close="Close")


def message_view(title: str, text: str) -> View:
    """A modal that only says something (a refusal, an expired draft, a success)."""
    return modal(ids.DONE_VIEW, title, [section(text)], close="Close")


def _size_text(size: int | None, max_audience: int) -> str:
    if size is None:
        return "size unknown"
    if size > max_audience:
        return f"over {max_audience:,}"
    return f"{size:,}"


def segment_option(segment: SegmentSummary, max_audience: int) -> dict[str, Any]:
    size = _size_text(segment.size, max_audience)
    suffix = f" ({size})"
    return option(segment.name[: 75 - len(suffix)].rstrip() + suffix, segment.slug)


def audience_view(
    metadata: Metadata, segments: Sequence[SegmentSummary], *, max_audience: int,
    selected_count: int = 0, chosen: str | None = None,
) -> View:
    """Pick a smart segment (each with its size) or customise the selection; submit `Next`."""
    options = [segment_option(s, max_audience) for s in segments[:MAX_SEGMENT_OPTIONS]]
    select: dict[str, Any] = {
        "type": "static_select",
        "action_id": ids.SEGMENT_ACTION,
        "placeholder": plain("Choose a segment"),
        "options": options or [option("All patients", "all")],
    }
    initial = next((o for o in options if o["value"] == chosen), None)
    if initial is not None:
        select["initial_option"] = initial
    blocks: list[Block] = [
        {
            "type": "input",
            "block_id": ids.SEGMENT_BLOCK,
            "optional": True,
            "label": plain("Smart segment"),
            "element": select,
            "hint": plain(f"The audience may have 1 to {max_audience:,} patients."),
        },
        {
            "type": "actions",
            "block_id": ids.CUSTOMIZE_BLOCK,
            "elements": [button("Customize selection", ids.CUSTOMIZE_ACTION)],
        },
    ]
    if selected_count:
        blocks.append(context(
            f"Custom selection: *{selected_count:,} selected* (of {max_audience:,}). "
            "Leave Smart segment empty to use it."
        ))
    else:
        blocks.append(context(f"Audience limit: {max_audience:,} patients."))
    if len(segments) > MAX_SEGMENT_OPTIONS:
        blocks.append(context(f"Showing the first {MAX_SEGMENT_OPTIONS} of {len(segments)} "
                              "segments; use Customize selection for the rest."))
    return modal(ids.AUDIENCE_VIEW, TITLE, blocks, submit="Next", metadata=metadata.encode())


def patient_option(row: PatientRow) -> dict[str, Any]:
    contact = row.email or row.phone or ""
    return option(f"{row.display_name} · {row.external_id}", str(row.id), contact or None)


def table_view(
    metadata: Metadata, rows: Sequence[PatientRow], selected: Collection[int], *,
    max_audience: int, has_previous: bool, has_next: bool,
) -> View:
    """One page of patients as checkboxes, with Search, paging and the running count."""
    chosen = set(selected)
    count = len(chosen)
    over = f" — over the limit; unselect {count - max_audience:,}" if count > max_audience else ""
    blocks: list[Block] = [
        {
            "type": "input",
            "block_id": ids.SEARCH_BLOCK,
            "optional": True,
            "dispatch_action": True,
            "label": plain("Search"),
            "element": {
                "type": "plain_text_input",
                "action_id": ids.SEARCH_ACTION,
                "placeholder": plain("Name, email, phone or clinic id; press Enter"),
                "dispatch_action_config": {"trigger_actions_on": ["on_enter_pressed"]},
                **({"initial_value": metadata.query} if metadata.query else {}),
            },
        },
        section(f"*{count:,} selected* (of {max_audience:,}){over}",
                block_id=ids.SELECTED_BLOCK),
    ]
    if rows:
        options = [patient_option(r) for r in rows[:10]]
        checkboxes: dict[str, Any] = {
            "type": "checkboxes", "action_id": ids.PATIENTS_ACTION, "options": options,
        }
        initial = [o for o in options if int(o["value"]) in chosen]
        if initial:
            checkboxes["initial_options"] = initial
        blocks.append({"type": "actions", "block_id": ids.PATIENTS_BLOCK,
                       "elements": [checkboxes]})
    else:
        what = f"No patient matches “{escape(metadata.query)}”." if metadata.query else (
            "The patients catalog is empty.")
        blocks.append(section(what))
    pager = []
    if has_previous:
        pager.append(button("Previous", ids.PREVIOUS_ACTION))
    if has_next:
        pager.append(button("Next", ids.NEXT_ACTION))
    if rows:
        pager.append(button("Select all on this page", ids.SELECT_PAGE_ACTION))
    if pager:
        blocks.append({"type": "actions", "block_id": ids.PAGER_BLOCK, "elements": pager})
    return modal(ids.TABLE_VIEW, TITLE, blocks, submit="Next", metadata=metadata.encode())


# --- parsers: from a view's state and blocks --------------------------------------------------


def chosen_segment(state: dict[str, Any]) -> str | None:
    """The slug picked in `Smart segment`, or None."""
    value = state.get("values", {}).get(ids.SEGMENT_BLOCK, {}).get(ids.SEGMENT_ACTION, {})
    selected = value.get("selected_option") or {}
    slug = selected.get("value") if isinstance(selected, dict) else None
    return slug if isinstance(slug, str) and slug else None


def _checkboxes(view: dict[str, Any]) -> dict[str, Any]:
    for block in view.get("blocks", []):
        if block.get("block_id") == ids.PATIENTS_BLOCK:
            for element in block.get("elements", []):
                if element.get("action_id") == ids.PATIENTS_ACTION:
                    return dict(element)
    return {}


def page_patient_ids(view: dict[str, Any]) -> list[int]:
    """The ids of the patients shown on the table's page (from the view's own blocks)."""
    return [int(o["value"]) for o in _checkboxes(view).get("options", [])]


def page_initial_ids(view: dict[str, Any]) -> set[int]:
    """The ids that were ticked when the page was drawn."""
    return {int(o["value"]) for o in _checkboxes(view).get("initial_options", [])}


def checked_ids(selected_options: Sequence[dict[str, Any]]) -> set[int]:
    return {int(o["value"]) for o in selected_options}
