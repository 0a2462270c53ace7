"""SlackRequests signs like Slack: a real Bolt app over HTTP accepts it, and the knobs break it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_requests import SlackRequests, fill_state

SECRET = "test-signing-secret"


def plain(text: str) -> dict[str, str]:
    return {"type": "plain_text", "text": text}


FORM = {
    "type": "modal", "callback_id": "form", "title": plain("New campaign"),
    "submit": plain("Next"),
    "blocks": [
        {"type": "input", "block_id": "subject", "label": plain("Subject"),
         "element": {"type": "plain_text_input", "action_id": "subject"}},
        {"type": "input", "block_id": "channel", "label": plain("Sending channel"),
         "element": {"type": "static_select", "action_id": "channel",
                     "initial_option": {"text": plain("Email"), "value": "EMAIL"},
                     "options": [{"text": plain("Email"), "value": "EMAIL"},
                                 {"text": plain("SMS"), "value": "SMS"}]}},
        {"type": "input", "block_id": "file", "label": plain("Attachment"), "optional": True,
         "element": {"type": "file_input", "action_id": "file", "max_files": 1}},
        {"type": "actions", "block_id": "nav",
         "elements": [{"type": "button", "action_id": "next", "text": plain("Next"),
                       "value": "2"}]},
    ],
}


def bolt_app(slack: FakeSlack, seen: list[Any]) -> AsyncApp:
    app = AsyncApp(token="xoxb-test", signing_secret=SECRET,
                   client=AsyncWebClient(base_url=slack.url, token="xoxb-test"))

    @app.command("/campaign")
    async def command(ack: Any, body: dict[str, Any], client: AsyncWebClient,
                      respond: Any) -> None:
        await ack()
        if body["text"] == "help":
            await respond("Use /campaign to start")
        else:
            await client.views_open(trigger_id=body["trigger_id"], view=FORM)

    @app.action("next")
    async def next_page(ack: Any, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        seen.append(body["actions"][0]["value"])
        view = body["view"]
        await client.views_update(view_id=view["id"], hash=view["hash"],
                                  view={**FORM, "private_metadata": "page 2"})

    @app.action("cancel")
    async def cancel(ack: Any, respond: Any) -> None:
        await ack()
        await respond(text="Campaign 7 cancelled", replace_original=True)

    @app.view("form")
    async def submit(ack: Any, view: dict[str, Any]) -> None:
        values = view["state"]["values"]
        seen.append(values)
        if len(values["subject"]["subject"]["value"]) < 5:
            await ack(response_action="errors", errors={"subject": "At least 5 characters"})
        else:
            await ack(response_action="update", view={
                "type": "modal", "title": plain("Done"),
                "blocks": [{"type": "section", "text": plain("Scheduled")}]})

    @app.options("segment")
    async def options(ack: Any, payload: dict[str, Any]) -> None:
        await ack(options=[{"text": plain(f"{payload['value']} {i}"), "value": str(i)}
                           for i in range(3)])

    @app.event("app_home_opened")
    async def home(event: dict[str, Any], client: AsyncWebClient) -> None:
        seen.append(event["user"])

    return app


@pytest.fixture
async def wired() -> AsyncIterator[tuple[FakeSlack, SlackRequests, list[Any]]]:
    seen: list[Any] = []
    async with FakeSlack() as slack:
        runner = web.AppRunner(bolt_app(slack, seen).web_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with SlackRequests(f"http://127.0.0.1:{port}/slack/events", SECRET,
                                     slack=slack) as requests:
                yield slack, requests, seen
        finally:
            await runner.cleanup()


async def test_the_whole_round_trip(wired: tuple[FakeSlack, SlackRequests, list[Any]]) -> None:
    slack, requests, seen = wired
    assert (await requests.slash_command(text="")).status == 200
    view = slack.latest_view()
    assert view["callback_id"] == "form"

    assert (await requests.click(view, "next")).status == 200
    assert seen == ["2"] and slack.views[view["id"]]["private_metadata"] == "page 2"

    view = slack.views[view["id"]]
    answer = await requests.view_submission(view, {"subject": "Hi"})
    assert answer.body == {"response_action": "errors",
                           "errors": {"subject": "At least 5 characters"}}
    values = seen[-1]
    assert values["channel"]["channel"]["selected_option"]["value"] == "EMAIL"  # initial
    assert values["file"]["file"] == {"type": "file_input", "files": []}

    slack.add_file("F1", "flyer.pdf", b"%PDF-1.7", "application/pdf")
    answer = await requests.view_submission(view, {"subject": "Spring check-up",
                                                   "channel": "SMS", "file": ["F1"]})
    assert answer.body["response_action"] == "update"
    assert slack.views[view["id"]]["title"]["text"] == "Done"
    assert seen[-1]["file"]["file"]["files"][0]["id"] == "F1"


async def test_respond_lands_in_the_users_ephemerals(
    wired: tuple[FakeSlack, SlackRequests, list[Any]],
) -> None:
    slack, requests, _ = wired
    assert (await requests.slash_command(text="help")).status == 200
    assert slack.ephemerals("U0TESTER")[0]["text"] == "Use /campaign to start"


async def test_options_and_events(wired: tuple[FakeSlack, SlackRequests, list[Any]]) -> None:
    _, requests, seen = wired
    view = {"id": "V1", "type": "modal", "blocks": []}
    answer = await requests.block_suggestion("segment", "recent", view, block_id="audience")
    assert [o["value"] for o in answer.body["options"]] == ["0", "1", "2"]
    assert (await requests.app_home_opened("U0TESTER")).status == 200
    for _ in range(100):  # Bolt runs event listeners after the ack
        if "U0TESTER" in seen:
            break
        await asyncio.sleep(0.01)
    assert "U0TESTER" in seen


@pytest.mark.parametrize(
    "tamper", ["bad_signature", "stale_timestamp", "missing_signature", "missing_timestamp"]
)
async def test_tampered_requests_are_refused(
    wired: tuple[FakeSlack, SlackRequests, list[Any]], tamper: Any
) -> None:
    slack, requests, _ = wired
    assert (await requests.slash_command(tamper=tamper)).status == 401
    assert not slack.calls_to("views.open")


# What plain Bolt answers. Note "not_json": Bolt's aiohttp adapter raises and aiohttp answers
# 500; the bot's own server must turn that into a 4xx (issue 4: malformed payloads get a 4xx).
@pytest.mark.parametrize(
    ("kind", "status"),
    [("not_json", 500), ("missing_type", 404), ("no_payload", 404), ("empty", 404),
     ("payload_not_object", 500)],
)
async def test_malformed_payloads_are_signed_but_unusable(
    wired: tuple[FakeSlack, SlackRequests, list[Any]], kind: Any, status: int
) -> None:
    slack, requests, _ = wired
    assert (await requests.malformed(kind)).status == status
    assert not slack.views


def test_fill_state_acts_like_slacks_client() -> None:
    view = {**FORM, "id": "V1"}
    with pytest.raises(ValueError, match="required input subject/subject"):
        fill_state(view, {})
    with pytest.raises(KeyError, match="nope"):
        fill_state(view, {"subject": "Spring", "nope": 1})
    state = fill_state(view, {"subject/subject": "Spring"})
    assert state["subject"]["subject"] == {"type": "plain_text_input", "value": "Spring"}


async def test_clicking_a_message_button_and_replacing_the_message(
    wired: tuple[FakeSlack, SlackRequests, list[Any]],
) -> None:
    slack, requests, _ = wired
    slack.bot_channels = {"C0CAMPAIGNS"}
    client = AsyncWebClient(base_url=slack.url, token="xoxb-test")
    await client.chat_postMessage(channel="C0CAMPAIGNS", text="Campaign 7 scheduled", blocks=[
        {"type": "actions", "block_id": "c7", "elements": [
            {"type": "button", "action_id": "cancel", "text": plain("Cancel"), "value": "7"}]}])
    [message] = slack.messages("C0CAMPAIGNS")
    assert (await requests.click(message, "cancel")).status == 200
    for _ in range(100):  # respond() runs after the ack
        if slack.messages("C0CAMPAIGNS")[0]["text"] != "Campaign 7 scheduled":
            break
        await asyncio.sleep(0.01)
    assert slack.messages("C0CAMPAIGNS")[0]["text"] == "Campaign 7 cancelled"
