"""Requests to the bot's `/slack/events`, built and signed exactly as Slack sends them.

    async with FakeSlack() as slack, SlackRequests(app_url, SECRET, slack=slack) as sr:
        answer = await sr.slash_command(text="list")          # form-encoded, signed
        view = slack.latest_view()
        answer = await sr.click(view, "audience_next")         # block_actions from the view
        answer = await sr.view_submission(view, {"subject": "Spring check-up"})
        answer.status, answer.body                             # {"response_action": "errors"...}
        await sr.slash_command(tamper="bad_signature")         # 401 expected

With `slack=`, trigger ids and response URLs come from the stand-in (so views.open and
respond() work) and a view_submission ack's `response_action` is applied to its views the
way Slack applies it, failing the call if the returned view breaks Block Kit limits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp

from tests.fakes.block_kit import option_list_errors
from tests.fakes.slack_api import BOT_USER_ID, DEFAULT_USER, FakeSlack
from tests.fakes.slack_views import APP_ID, TEAM_ID

Tamper = Literal["bad_signature", "stale_timestamp", "missing_signature", "missing_timestamp"]
Malformed = Literal["not_json", "missing_type", "no_payload", "payload_not_object", "empty"]
STATEFUL = ("input", "actions", "section")


@dataclass
class Answer:
    """The bot's HTTP answer: status, parsed JSON body (or None) and raw text."""

    status: int
    body: Any
    text: str


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's request signature: v0=HMAC-SHA256(secret, "v0:{timestamp}:{body}")."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackRequests:
    """POSTs signed Slack requests (commands, interactions, options, events) to the bot."""

    def __init__(self, url: str, signing_secret: str, *, slack: FakeSlack | None = None,
                 user_id: str = DEFAULT_USER, channel_id: str = "C0CAMPAIGNS",
                 strict: bool = True) -> None:
        self.url = url  # the full URL of the bot's /slack/events
        self.signing_secret = signing_secret
        self.slack = slack
        self.user_id = user_id
        self.channel_id = channel_id
        self.strict = strict  # raise on what Slack itself would refuse or never send
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SlackRequests:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    # -- transport ------------------------------------------------------------------------

    async def post(self, body: bytes, content_type: str, *, tamper: Tamper | None = None,
                   headers: Mapping[str, str] | None = None) -> Answer:
        """POST a raw body, signed (or tampered with) like Slack's requests."""
        timestamp = str(int(time.time()) - (600 if tamper == "stale_timestamp" else 0))
        signature = sign(self.signing_secret, timestamp, body)
        if tamper == "bad_signature":
            signature = sign(self.signing_secret + "x", timestamp, body)
        sent = {"Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
                "X-Slack-Signature": signature, "User-Agent": "Slackbot 1.0"}
        if tamper == "missing_signature":
            del sent["X-Slack-Signature"]
        if tamper == "missing_timestamp":
            del sent["X-Slack-Request-Timestamp"]
        sent.update(headers or {})
        session = self._session or aiohttp.ClientSession()
        try:
            async with session.post(self.url, data=body, headers=sent) as response:
                text = await response.text()
                try:
                    parsed = json.loads(text) if text else None
                except ValueError:
                    parsed = None
                return Answer(response.status, parsed, text)
        finally:
            if self._session is None:
                await session.close()

    async def form(self, fields: Mapping[str, str], **kwargs: Any) -> Answer:
        return await self.post(urlencode(fields).encode(), "application/x-www-form-urlencoded",
                               **kwargs)

    async def interaction(self, payload: dict[str, Any], **kwargs: Any) -> Answer:
        """An interactivity request: form field `payload` holding the JSON, like Slack's."""
        return await self.form({"payload": json.dumps(payload)}, **kwargs)

    async def malformed(self, kind: Malformed, *, tamper: Tamper | None = None) -> Answer:
        """A correctly signed request whose body Slack would never send."""
        bodies: dict[str, bytes] = {
            "not_json": b"payload=%7Bnot+json",
            "missing_type": urlencode({"payload": json.dumps(
                {"user": {"id": self.user_id}, "view": {"id": "V0"}})}).encode(),
            "no_payload": b"foo=bar",
            "payload_not_object": urlencode({"payload": "[1, 2, 3]"}).encode(),
            "empty": b"",
        }
        return await self.post(bodies[kind], "application/x-www-form-urlencoded", tamper=tamper)

    # -- shared parts ---------------------------------------------------------------------

    def _user(self, user_id: str | None) -> dict[str, Any]:
        uid = user_id or self.user_id
        return {"id": uid, "username": uid.lower(), "name": uid.lower(), "team_id": TEAM_ID}

    def _trigger(self, view_id: str | None = None) -> str:
        if self.slack is not None:
            return self.slack.new_trigger_id(view_id)
        return f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"

    def _response_url(self, channel_id: str, user_id: str, ts: str | None = None) -> str:
        if self.slack is not None:
            return self.slack.new_response_url(channel_id, user_id, ts)
        return "https://hooks.slack.com/commands/T0CLINIC/1/unused"

    def _envelope(self, kind: str, user_id: str | None) -> dict[str, Any]:
        return {"type": kind, "team": {"id": TEAM_ID, "domain": "clinic"},
                "user": self._user(user_id), "api_app_id": APP_ID, "token": "verification",
                "enterprise": None, "is_enterprise_install": False}

    # -- slash commands -------------------------------------------------------------------

    async def slash_command(self, command: str = "/campaign", text: str = "", *,
                            user_id: str | None = None, channel_id: str | None = None,
                            trigger_id: str | None = None, response_url: str | None = None,
                            tamper: Tamper | None = None) -> Answer:
        user, channel = user_id or self.user_id, channel_id or self.channel_id
        return await self.form({
            "token": "verification", "team_id": TEAM_ID, "team_domain": "clinic",
            "channel_id": channel, "channel_name": "marketing", "user_id": user,
            "user_name": user.lower(), "command": command, "text": text,
            "api_app_id": APP_ID, "is_enterprise_install": "false",
            "response_url": response_url or self._response_url(channel, user),
            "trigger_id": trigger_id or self._trigger(),
        }, tamper=tamper)

    # -- interactions ---------------------------------------------------------------------

    async def block_action(self, actions: list[dict[str, Any]], *,
                           view: dict[str, Any] | None = None,
                           message: dict[str, Any] | None = None,
                           user_id: str | None = None, trigger_id: str | None = None,
                           container: dict[str, Any] | None = None,
                           tamper: Tamper | None = None) -> Answer:
        """block_actions from a view (modal or home) or from a message in a channel."""
        payload = self._envelope("block_actions", user_id)
        now = f"{time.time():.6f}"
        payload["actions"] = [{"action_ts": now, **a} for a in actions]
        payload["trigger_id"] = trigger_id or self._trigger(view["id"] if view else None)
        if view is not None:
            payload["view"] = view
            payload["container"] = container or {"type": "view", "view_id": view["id"]}
            payload["state"] = view.get("state", {"values": {}})
        elif message is not None:
            channel = message.get("channel", self.channel_id)
            payload["container"] = container or {
                "type": "message", "message_ts": message["ts"], "channel_id": channel,
                "is_ephemeral": bool(message.get("is_ephemeral"))}
            payload["channel"] = {"id": channel, "name": "marketing"}
            payload["message"] = message
            payload["response_url"] = self._response_url(
                channel, payload["user"]["id"], message["ts"])
        elif container is not None:
            payload["container"] = container
        return await self.interaction(payload, tamper=tamper)

    async def click(self, source: dict[str, Any], action_id: str, *,
                    selected: Any = None, user_id: str | None = None,
                    tamper: Tamper | None = None) -> Answer:
        """Use the element `action_id` found in a view or message, as a user would."""
        block, element = find_element(source, action_id)
        action: dict[str, Any] = {"type": element["type"], "action_id": action_id,
                                  "block_id": block["block_id"]}
        if element["type"] == "button":
            action["text"] = element["text"]
            if "value" in element:
                action["value"] = element["value"]
        else:
            action.update(element_state(element, selected))
        if "id" in source and "type" in source and source["type"] in ("modal", "home"):
            return await self.block_action([action], view=source, user_id=user_id,
                                           tamper=tamper)
        return await self.block_action([action], message=source, user_id=user_id,
                                       tamper=tamper)

    async def view_submission(self, view: dict[str, Any], values: Mapping[str, Any] | None = None,
                              *, state_values: dict[str, Any] | None = None,
                              user_id: str | None = None, tamper: Tamper | None = None) -> Answer:
        """Submit a view the bot opened; `values` fill inputs by action_id (see `fill_state`).

        Untouched inputs carry their initial values, as in Slack. With `strict`, an empty
        required input raises (Slack's client would not submit) and the ack's view is
        checked and applied to the stand-in.
        """
        if state_values is None:
            state_values = fill_state(view, values or {}, slack=self.slack,
                                      strict=self.strict)
        payload = self._envelope("view_submission", user_id)
        payload["view"] = {**view, "state": {"values": state_values}}
        payload["trigger_id"] = self._trigger(view.get("id"))
        payload["response_urls"] = []
        answer = await self.interaction(payload, tamper=tamper)
        if self.slack is not None and answer.status == 200 and view.get("id") in self.slack.views:
            errors = self.slack.apply_view_response(view["id"], answer.body)
            if errors and self.strict:
                raise AssertionError(f"Slack would refuse the view in the ack: {errors}")
        return answer

    async def view_closed(self, view: dict[str, Any], *, user_id: str | None = None,
                          is_cleared: bool = False) -> Answer:
        payload = self._envelope("view_closed", user_id)
        payload.update(view=view, is_cleared=is_cleared)
        return await self.interaction(payload)

    async def block_suggestion(self, action_id: str, value: str, view: dict[str, Any], *,
                               block_id: str | None = None, user_id: str | None = None,
                               tamper: Tamper | None = None) -> Answer:
        """An options load for an external_select: Slack sends what the user typed."""
        if block_id is None:
            block_id = find_element(view, action_id)[0]["block_id"]
        payload = self._envelope("block_suggestion", user_id)
        payload.update(action_id=action_id, block_id=block_id, value=value, view=view,
                       container={"type": "view", "view_id": view.get("id")})
        answer = await self.interaction(payload, tamper=tamper)
        if self.strict and answer.status == 200 and isinstance(answer.body, dict):
            errors = option_list_errors(answer.body)
            if errors:
                raise AssertionError(f"Slack would refuse these options: {errors}")
        return answer

    # -- events ---------------------------------------------------------------------------

    async def event(self, event: dict[str, Any], *, tamper: Tamper | None = None) -> Answer:
        """An Events API `event_callback` envelope around `event` (JSON, like Slack)."""
        body = {
            "token": "verification", "team_id": TEAM_ID, "api_app_id": APP_ID,
            "event": {"event_ts": f"{time.time():.6f}", **event}, "type": "event_callback",
            "event_id": "Ev" + secrets.token_hex(5).upper(), "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": TEAM_ID,
                                "user_id": BOT_USER_ID, "is_bot": True,
                                "is_enterprise_install": False}],
            "is_ext_shared_channel": False,
        }
        return await self.post(json.dumps(body).encode(), "application/json", tamper=tamper)

    async def app_home_opened(self, user_id: str | None = None, *,
                              tamper: Tamper | None = None) -> Answer:
        user = user_id or self.user_id
        event: dict[str, Any] = {"type": "app_home_opened", "user": user,
                                 "channel": "D" + user[1:], "tab": "home"}
        if self.slack is not None and self.slack.home(user):
            event["view"] = self.slack.home(user)
        return await self.event(event, tamper=tamper)


# -- views → payloads ---------------------------------------------------------------------


def _elements(block: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(block.get("elements") or []) if block.get("type") == "actions" else []
    return found + [block[k] for k in ("element", "accessory") if isinstance(block.get(k), dict)]


def find_element(source: dict[str, Any], action_id: str,
                 block_id: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (block, element) with this action_id in a view or message."""
    for block in source.get("blocks") or []:
        if block_id is not None and block.get("block_id") != block_id:
            continue
        for element in _elements(block):
            if element.get("action_id") == action_id:
                return block, element
    raise KeyError(f"no element with action_id {action_id!r} in {source.get('id', 'message')}")


def _all_options(element: dict[str, Any]) -> list[dict[str, Any]]:
    options = list(element.get("options") or [])
    for group in element.get("option_groups") or []:
        options += group.get("options", [])
    return options


def _option(element: dict[str, Any], value: Any) -> dict[str, Any]:
    if isinstance(value, dict):  # an external_select option as the bot's options load gave it
        return value
    for option in _all_options(element):
        if option.get("value") == value:
            return option
    raise KeyError(f"{value!r} is not an option of {element.get('action_id')}")


def element_state(element: dict[str, Any], value: Any = None, *,
                  slack: FakeSlack | None = None) -> dict[str, Any]:
    """The state Slack reports for an element holding `value` (None: its initial value)."""
    kind = element["type"]
    state: dict[str, Any] = {"type": kind}
    if kind in ("plain_text_input", "email_text_input", "url_text_input", "number_input"):
        state["value"] = element.get("initial_value") if value is None else str(value)
    elif kind in ("static_select", "external_select", "radio_buttons"):
        state["selected_option"] = (element.get("initial_option") if value is None
                                    else _option(element, value))
    elif kind in ("multi_static_select", "multi_external_select", "checkboxes"):
        state["selected_options"] = (element.get("initial_options", []) if value is None
                                     else [_option(element, v) for v in value])
    elif kind == "datepicker":
        state["selected_date"] = element.get("initial_date") if value is None else value
    elif kind == "timepicker":
        state["selected_time"] = element.get("initial_time") if value is None else value
        if "timezone" in element:
            state["timezone"] = element["timezone"]
    elif kind == "datetimepicker":
        state["selected_date_time"] = (element.get("initial_date_time") if value is None
                                       else int(value))
    elif kind in ("users_select", "conversations_select", "channels_select"):
        key = {"users_select": "selected_user", "conversations_select": "selected_conversation",
               "channels_select": "selected_channel"}[kind]
        state[key] = element.get(key.replace("selected", "initial")) if value is None else value
    elif kind.startswith("multi_") and kind.endswith("_select"):
        key = "selected_" + kind.removeprefix("multi_").removesuffix("_select") + "s"
        state[key] = list(value or element.get(key.replace("selected", "initial"), []))
    elif kind == "file_input":
        files = [f if isinstance(f, dict) else _file(slack, f) for f in value or []]
        state["files"] = files
    return state


def _file(slack: FakeSlack | None, file_id: str) -> dict[str, Any]:
    if slack is None or file_id not in slack.files:
        raise KeyError(f"file {file_id!r}: register it first with slack.add_file()")
    return slack.files[file_id]


def _is_empty(state: dict[str, Any]) -> bool:
    return not any(v for k, v in state.items() if k not in ("type", "timezone"))


def _client_side_checks(block: dict[str, Any], element: dict[str, Any],
                        entry: dict[str, Any]) -> None:
    """What Slack's client enforces before it sends a view_submission at all."""
    where = f"{block['block_id']}/{element['action_id']}"
    if _is_empty(entry):
        if not block.get("optional"):
            raise ValueError(f"required input {where} is empty: Slack would not submit")
        return
    text = entry.get("value")
    if isinstance(text, str) and element["type"] == "plain_text_input":
        if len(text) < element.get("min_length", 0):
            raise ValueError(f"{where} is shorter than its min_length: Slack would not submit")
        if len(text) > element.get("max_length", 3000):
            raise ValueError(f"{where} is longer than its max_length: Slack would not submit")


def fill_state(view: dict[str, Any], values: Mapping[str, Any], *,
               slack: FakeSlack | None = None, strict: bool = True) -> dict[str, Any]:
    """`state.values` for a view as a user filled it: {block_id: {action_id: state}}.

    `values` keys are action_ids (or "block_id/action_id"); values are plain Python: text,
    an option value (or a list of them), "YYYY-MM-DD", "HH:MM", a user id, file ids or
    file objects. Every input block appears, untouched ones with their initial value.
    """
    state: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for block in view.get("blocks") or []:
        if block.get("type") not in STATEFUL:
            continue
        for element in _elements(block):
            if element.get("type") in ("button", "overflow", "image"):
                continue
            action_id, block_id = element["action_id"], block["block_id"]
            key = next((k for k in (f"{block_id}/{action_id}", action_id) if k in values), None)
            if key is None and block.get("type") != "input":
                continue
            if key is not None:
                used.add(key)
            value = values[key] if key is not None else None
            entry = element_state(element, value, slack=slack)
            if strict and block.get("type") == "input":
                _client_side_checks(block, element, entry)
            state.setdefault(block_id, {})[action_id] = entry
    unknown = set(values) - used
    if unknown:
        raise KeyError(f"no input for {sorted(unknown)} in view {view.get('id')}")
    return state
