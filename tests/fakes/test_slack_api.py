"""The Slack stand-in answers the real slack_sdk client the way Slack does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack_api import MANIFEST_SCOPES, FakeSlack, block_kit_errors


def plain(text: str) -> dict[str, str]:
    return {"type": "plain_text", "text": text}


def modal(*blocks: dict[str, Any], title: str = "New campaign", **extra: Any) -> dict[str, Any]:
    return {"type": "modal", "title": plain(title), "blocks": list(blocks), **extra}


def section(text: str = "Hello") -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def checkboxes(n: int) -> dict[str, Any]:
    options = [{"text": plain(f"Patient {i}"), "value": f"p{i}"} for i in range(n)]
    return {"type": "input", "block_id": "pick", "label": plain("Patients"),
            "element": {"type": "checkboxes", "action_id": "patients", "options": options}}


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(base_url=slack.url, token="xoxb-test")


async def error_of(call: Any) -> dict[str, Any]:
    with pytest.raises(SlackApiError) as caught:
        await call
    return dict(caught.value.response.data)  # type: ignore[arg-type]


async def test_auth_test_lists_the_manifest_scopes(client: AsyncWebClient) -> None:
    answer = await client.auth_test()
    assert answer["ok"] and answer["bot_id"]
    assert set(answer.headers["x-oauth-scopes"].split(",")) == set(MANIFEST_SCOPES)


async def test_wrong_or_missing_token_is_refused(slack: FakeSlack) -> None:
    wrong = AsyncWebClient(base_url=slack.url, token="xoxb-wrong")
    assert (await error_of(wrong.auth_test()))["error"] == "invalid_auth"
    assert (await error_of(AsyncWebClient(base_url=slack.url).auth_test()))["error"] == (
        "not_authed"
    )


async def test_views_open_returns_the_view_with_ids_and_hash(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    answer = await client.views_open(trigger_id=slack.new_trigger_id(),
                                      view=modal(section(), private_metadata="m"))
    view = answer["view"]
    assert view["id"].startswith("V") and view["root_view_id"] == view["id"] and view["hash"]
    assert view["blocks"][0]["block_id"]  # Slack fills in missing block ids
    assert slack.views[view["id"]]["private_metadata"] == "m"
    assert slack.calls_to("views.open")[0].token == "xoxb-test"


async def test_a_title_of_25_characters_is_invalid_arguments(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    error = await error_of(client.views_open(trigger_id=slack.new_trigger_id(),
                                             view=modal(section(), title="x" * 25)))
    assert error["error"] == "invalid_arguments"
    assert error["response_metadata"]["messages"] == [
        "[ERROR] must be less than 25 characters [json-pointer:/view/title/text]"
    ]
    assert not slack.views


async def test_101_blocks_are_refused(slack: FakeSlack, client: AsyncWebClient) -> None:
    error = await error_of(client.views_open(trigger_id=slack.new_trigger_id(),
                                             view=modal(*[section()] * 101)))
    assert error["error"] == "invalid_arguments"
    assert "[json-pointer:/view/blocks]" in error["response_metadata"]["messages"][0]


async def test_11_checkbox_options_are_refused(slack: FakeSlack, client: AsyncWebClient) -> None:
    ok = modal(checkboxes(10), submit=plain("Next"))
    assert (await client.views_open(trigger_id=slack.new_trigger_id(), view=ok))["ok"]
    error = await error_of(client.views_open(trigger_id=slack.new_trigger_id(),
                                             view=modal(checkboxes(11), submit=plain("Next"))))
    assert error["response_metadata"]["messages"] == [
        "[ERROR] no more than 10 items allowed [json-pointer:/view/blocks/0/element/options]"
    ]


def test_block_kit_errors_is_usable_on_its_own() -> None:
    option = {"text": plain("x" * 76), "value": "v"}
    view = modal(
        {"type": "input", "block_id": "a", "label": plain("Subject"),
         "element": {"type": "static_select", "action_id": "s", "options": [option]}},
        {"type": "input", "block_id": "a", "element": {"type": "plain_text_input"}},
        private_metadata="m" * 3001,
    )
    errors = block_kit_errors(view, kind="modal")
    assert any("/view/private_metadata" in e for e in errors)
    assert any("/view/blocks/0/element/options/0/text/text" in e for e in errors)
    assert any("duplicate block_id" in e for e in errors)
    assert any("missing required field: label" in e for e in errors)
    assert any("submit is required" in e for e in errors)
    assert block_kit_errors({"text": "hi", "blocks": [section()] * 51}, kind="message") == [
        "[ERROR] no more than 50 items allowed [json-pointer:/blocks]"
    ]
    assert block_kit_errors(modal(section(), submit=plain("Send")), kind="modal") == []


async def test_a_stale_hash_is_a_hash_conflict(slack: FakeSlack, client: AsyncWebClient) -> None:
    opened = (await client.views_open(trigger_id=slack.new_trigger_id(), view=modal(section())))
    first = opened["view"]
    updated = await client.views_update(view_id=first["id"], hash=first["hash"],
                                        view=modal(section("Page 2")))
    assert updated["view"]["hash"] != first["hash"]
    error = await error_of(client.views_update(view_id=first["id"], hash=first["hash"],
                                               view=modal(section("Page 3"))))
    assert error["error"] == "hash_conflict"
    assert slack.views[first["id"]]["blocks"][0]["text"]["text"] == "Page 2"


async def test_a_trigger_id_is_single_use_and_expires(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    trigger = slack.new_trigger_id()
    await client.views_open(trigger_id=trigger, view=modal(section()))
    assert (await error_of(client.views_open(trigger_id=trigger, view=modal(section()))))[
        "error"] == "exchanged_trigger_id"
    assert (await error_of(client.views_open(trigger_id="1.2.3", view=modal(section()))))[
        "error"] == "invalid_trigger_id"
    slack.trigger_ttl = 0.05
    late = slack.new_trigger_id()
    await asyncio.sleep(0.1)
    assert (await error_of(client.views_open(trigger_id=late, view=modal(section()))))[
        "error"] == "expired_trigger_id"


async def test_views_push_keeps_at_most_three_views(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    root = (await client.views_open(trigger_id=slack.new_trigger_id(), view=modal(section())))
    for _ in range(2):
        await client.views_push(trigger_id=slack.new_trigger_id(root["view"]["id"]),
                                view=modal(section()))
    assert len(slack.stack(root["view"]["id"])) == 3
    error = await error_of(client.views_push(
        trigger_id=slack.new_trigger_id(root["view"]["id"]), view=modal(section())))
    assert error["error"] == "push_limit_reached"


async def test_views_publish_keeps_one_home_per_user(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    home = {"type": "home", "blocks": [section("Your campaigns")]}
    first = await client.views_publish(user_id="U0TESTER", view=home)
    again = await client.views_publish(user_id="U0TESTER", view=home)
    assert first["view"]["id"] == again["view"]["id"]
    assert slack.home("U0TESTER")["blocks"][0]["text"]["text"] == "Your campaigns"  # type: ignore[index]


async def test_post_message_needs_the_bot_in_the_channel(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    assert (await error_of(client.chat_postMessage(channel="C123", text="hi")))[
        "error"] == "not_in_channel"
    slack.bot_channels = {"C123"}
    posted = await client.chat_postMessage(channel="C123", text="Campaign 7 created")
    assert posted["channel"] == "C123" and posted["ts"]
    dm = await client.chat_postMessage(channel="U0TESTER", text="Invite me with /invite")
    assert slack.messages("U0TESTER")[0]["ts"] == dm["ts"]


async def test_chat_update_changes_the_message(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.bot_channels = {"C123"}
    posted = await client.chat_postMessage(channel="C123", text="Sending: 0/500")
    await client.chat_update(channel="C123", ts=posted["ts"], text="Sending: 250/500",
                             blocks=[section("250 of 500 sent")])
    [message] = slack.messages("C123")
    assert message["text"] == "Sending: 250/500" and message["blocks"][0]["text"]["text"] == (
        "250 of 500 sent")
    assert (await error_of(client.chat_update(channel="C123", ts="1.2", text="x")))[
        "error"] == "message_not_found"


async def test_bad_message_blocks_are_invalid_blocks(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    slack.bot_channels = {"C123"}
    error = await error_of(client.chat_postMessage(channel="C123", text="t",
                                                   blocks=[section("x" * 3001)]))
    assert error["error"] == "invalid_blocks"
    assert "[json-pointer:/blocks/0/text/text]" in error["response_metadata"]["messages"][0]


async def test_ephemerals_and_users(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.bot_channels = {"C123"}
    slack.add_user("U2", real_name="Ana", tz="America/Mexico_City", tz_offset=-21600,
                   email="ana@clinic.example")
    await client.chat_postEphemeral(channel="C123", user="U2", text="Only you")
    assert slack.ephemerals("U2")[0]["text"] == "Only you"
    user = (await client.users_info(user="U2"))["user"]
    assert user["tz"] == "America/Mexico_City" and user["profile"]["email"] == (
        "ana@clinic.example")
    assert (await error_of(client.users_info(user="U404")))["error"] == "user_not_found"


async def test_methods_beyond_the_manifest_scopes_are_refused(client: AsyncWebClient) -> None:
    error = await error_of(client.conversations_open(users="U0TESTER"))
    assert error["error"] == "missing_scope" and error["needed"] == "im:write"


async def test_unknown_methods_are_recorded(slack: FakeSlack, client: AsyncWebClient) -> None:
    assert (await error_of(client.api_call("pins.add")))["error"] == "unknown_method"
    assert slack.calls_to("pins.add")


async def test_files_upload_v2_end_to_end(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.bot_channels = {"C123"}
    posted = await client.chat_postMessage(channel="C123", text="Snapshot")
    answer = await client.files_upload_v2(channel="C123", thread_ts=posted["ts"],
                                          content=b"\x89PNG chart", filename="chart.png",
                                          title="Campaign 7")
    assert answer["file"]["id"]
    [upload] = slack.uploads
    assert upload["content"] == b"\x89PNG chart" and upload["channel"] == "C123"
    assert upload["thread_ts"] == posted["ts"] and upload["title"] == "Campaign 7"
    assert slack.messages("C123")[-1]["thread_ts"] == posted["ts"]


async def test_file_download_needs_the_token(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.add_file("F1", "flyer.pdf", b"%PDF-1.7 flyer", "application/pdf")
    info = (await client.files_info(file="F1"))["file"]
    url = info["url_private_download"]
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": "Bearer xoxb-test"}) as resp:
            assert resp.status == 200 and await resp.read() == b"%PDF-1.7 flyer"
        async with session.get(url) as resp:  # Slack answers its sign-in page, not the file
            assert resp.content_type == "text/html" and b"%PDF" not in await resp.read()
    assert slack.downloads == [("F1", True), ("F1", False)]


async def test_rate_limits_are_retried_by_slack_sdk(slack: FakeSlack) -> None:
    client = AsyncWebClient(base_url=slack.url, token="xoxb-test",
                            retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)])
    slack.bot_channels = {"C123"}
    posted = await client.chat_postMessage(channel="C123", text="0/500")
    slack.rate_limit("chat.update", n=1, retry_after=0)
    await client.chat_update(channel="C123", ts=posted["ts"], text="500/500")
    assert [c.status for c in slack.calls_to("chat.update")] == [429, 200]
    assert slack.messages("C123")[0]["text"] == "500/500"


def _options(n: int, text: str = "Option", value: str = "v") -> list[dict[str, Any]]:
    return [{"text": plain(text), "value": f"{value}{i}"} for i in range(n)]


def _input(element: dict[str, Any]) -> dict[str, Any]:
    return {"type": "input", "label": plain("Field"), "element": {"action_id": "a", **element}}


def _actions(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "actions", "elements": list(elements)}


def _button(text: str = "Go", action_id: str = "go") -> dict[str, Any]:
    return {"type": "button", "text": plain(text), "action_id": action_id}


@pytest.mark.parametrize(
    ("block", "pointer"),
    [
        ({"type": "header", "text": plain("h" * 151)}, "/view/blocks/0/text/text"),
        (_actions(_button("b" * 76)), "/view/blocks/0/elements/0/text/text"),
        (_actions(*[_button(action_id=f"b{i}") for i in range(26)]), "/view/blocks/0/elements"),
        (_actions(_button(), _button()), "/view/blocks/0/elements/1/action_id"),
        (_actions({"type": "overflow", "action_id": "o", "options": _options(6)}),
         "/view/blocks/0/elements/0/options"),
        ({"type": "context", "elements": [plain("c")] * 11}, "/view/blocks/0/elements"),
        ({"type": "section", "fields": [plain("f")] * 11}, "/view/blocks/0/fields"),
        ({"type": "section", "fields": [plain("f" * 2001)]}, "/view/blocks/0/fields/0/text"),
        ({"type": "section", "block_id": "b" * 256, "text": plain("x")},
         "/view/blocks/0/block_id"),
        (_input({"type": "plain_text_input", "max_length": 3001}),
         "/view/blocks/0/element/max_length"),
        (_input({"type": "plain_text_input", "placeholder": plain("p" * 151)}),
         "/view/blocks/0/element/placeholder/text"),
        (_input({"type": "file_input", "max_files": 11}), "/view/blocks/0/element/max_files"),
        (_input({"type": "static_select", "options": _options(101)}),
         "/view/blocks/0/element/options"),
        (_input({"type": "radio_buttons", "options": _options(11)}),
         "/view/blocks/0/element/options"),
        (_input({"type": "static_select", "options": _options(1, value="v" * 151)}),
         "/view/blocks/0/element/options/0/value"),
        (_input({"type": "checkboxes", "options": [
            {"text": plain("t"), "value": "v", "description": plain("d" * 76)}]}),
         "/view/blocks/0/element/options/0/description/text"),
        (_input({"type": "static_select", "options": _options(2),
                 "initial_option": {"text": plain("x"), "value": "nope"}}),
         "/view/blocks/0/element/initial_option"),
        ({"type": "input", "label": plain("Field"), "element": _button()},
         "/view/blocks/0/element/type"),
        ({"type": "table"}, "/view/blocks/0/type"),
        (_actions({"type": "slider", "action_id": "s"}), "/view/blocks/0/elements/0/type"),
    ],
)
def test_block_kit_limits(block: dict[str, Any], pointer: str) -> None:
    errors = block_kit_errors(modal(block, submit=plain("Send")), kind="modal")
    assert errors and all(e.endswith(f"[json-pointer:{pointer}]") for e in errors), errors


async def test_response_actions_are_applied_like_slack(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    view = (await client.views_open(trigger_id=slack.new_trigger_id(), view=modal(section())))[
        "view"]
    assert slack.apply_view_response(view["id"], {"response_action": "update",
                                                  "view": modal(section(), title="x" * 30)})
    assert slack.apply_view_response(view["id"], {"response_action": "push",
                                                  "view": modal(section("Sure?"))}) == []
    assert len(slack.stack(view["id"])) == 2
    assert slack.apply_view_response(view["id"], {"response_action": "clear"}) == []
    assert slack.stack(view["id"]) == []
    error = await error_of(client.views_update(view_id=view["id"], view=modal(section())))
    assert error["error"] == "not_found"  # a closed view can no longer be updated


async def test_views_update_by_external_id(slack: FakeSlack, client: AsyncWebClient) -> None:
    await client.views_open(trigger_id=slack.new_trigger_id(),
                            view=modal(section(), external_id="draft-7"))
    answer = await client.views_update(external_id="draft-7",
                                       view=modal(section("Next"), external_id="draft-7"))
    assert slack.views[answer["view"]["id"]]["blocks"][0]["text"]["text"] == "Next"
