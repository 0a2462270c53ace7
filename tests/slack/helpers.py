"""Steps of the /campaign flow as a user takes them, and a wait for work done after ack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from bot.db import Database
from services.models import Campaign
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_requests import SlackRequests, fill_state

MESSAGE = "Hello {{ first_name }}, it is time for your yearly check-up with us."


async def until(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    """Wait for `check()` to be truthy (work a listener does after its ack)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the bot")
        await asyncio.sleep(0.02)


def view_of(slack: FakeSlack, view_id: str) -> dict[str, Any]:
    return slack.views[view_id]


async def open_modal(slack: FakeSlack, sr: SlackRequests, text: str = "") -> dict[str, Any]:
    """Run `/campaign`; the modal once it shows the audience step."""
    before = set(slack.views)
    answer = await sr.slash_command(text=text)
    assert answer.status == 200
    view_id = await until(lambda: next((v for v in slack.views if v not in before), None))
    return await until(lambda: slack.views[view_id]["callback_id"] == "campaign_audience"
                       and slack.views[view_id])


async def wait_for_update(slack: FakeSlack, view: dict[str, Any]) -> dict[str, Any]:
    """The view after the bot's next views.update of it."""
    old = view["hash"]
    return await until(lambda: slack.views[view["id"]]["hash"] != old
                       and slack.views[view["id"]])


def texts(view_or_message: dict[str, Any]) -> str:
    """Every piece of text in blocks, joined: what the user reads."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("plain_text", "mrkdwn") and isinstance(node.get("text"), str):
                out.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(view_or_message.get("blocks", []))
    if isinstance(view_or_message.get("text"), str):
        out.append(view_or_message["text"])
    return "\n".join(out)


def form_values(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "subject/value": "Your yearly check-up",
        "message/value": MESSAGE,
        "channel/value": "EMAIL",
        "when/value": "now",
    }
    values.update(overrides)
    return values


def in_an_hour() -> int:
    return int((datetime.now(UTC) + timedelta(hours=1)).timestamp())


async def campaigns_in(db: Database) -> list[Campaign]:
    async with db.sessions() as session:
        return list((await session.execute(select(Campaign).order_by(Campaign.id))).scalars())


async def choose_when(sr: SlackRequests, slack: FakeSlack, form: dict[str, Any],
                      when: str, **typed: Any) -> dict[str, Any]:
    """Pick `Send now` / `Schedule` (what else the user typed rides along); the new form."""
    state = fill_state(form, {"when/value": when, **typed}, slack=slack, strict=False)
    action = {"type": "radio_buttons", "action_id": "value", "block_id": "when",
              "selected_option": state["when"]["value"]["selected_option"]}
    await sr.block_action([action], view={**form, "state": {"values": state}})
    return await wait_for_update(slack, form)
