"""A local HTTP server standing in for Slack's Web API, strict the way Slack is.

    async with FakeSlack() as slack:               # 127.0.0.1, a free port
        client = AsyncWebClient(base_url=slack.url, token="xoxb-test")
        trigger = slack.new_trigger_id()           # single use, expires after 3 s
        slack.bot_channels = {"C123"}              # channels the bot was invited to
        slack.add_user("U1", real_name="Ana", tz="America/Mexico_City", email="ana@x.mx")
        slack.add_file("F1", "flyer.pdf", b"%PDF-1.7 ...", "application/pdf")  # chunked download
        slack.rate_limit("chat.update", n=1, retry_after=1)
        slack.views[view_id], slack.messages("C123"), slack.ephemerals("U1"), slack.home("U1")

Every view and message is checked with `block_kit_errors` (tests/fakes/block_kit.py);
views that break a limit get `invalid_arguments`, messages `invalid_blocks` (Slack's own
errors), with the reasons in `response_metadata.messages`. Methods need the scopes that
manifest.yml grants (else `missing_scope`, as Slack answers). Every call is recorded in
`slack.calls`; unknown methods answer `unknown_method`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.fakes.block_kit import block_kit_errors, option_list_errors
from tests.fakes.slack_files import FilesMixin, SlackError
from tests.fakes.slack_views import (
    APP_ID,
    BOT_ID,
    BOT_USER_ID,
    DEFAULT_USER,
    TEAM_ID,
    ViewStore,
)

__all__ = ["BOT_USER_ID", "DEFAULT_USER", "MANIFEST_SCOPES", "Call", "FakeSlack",
           "block_kit_errors", "option_list_errors"]

MANIFEST = Path(__file__).resolve().parents[2] / "manifest.yml"
MANIFEST_SCOPES: tuple[str, ...] = tuple(
    yaml.safe_load(MANIFEST.read_text())["oauth_config"]["scopes"]["bot"]
)

# Scope each method needs with a bot token (Slack's method reference). Views need none.
SCOPES = {
    "chat.postMessage": "chat:write", "chat.postEphemeral": "chat:write",
    "chat.update": "chat:write", "chat.delete": "chat:write",
    "users.info": "users:read", "conversations.open": "im:write",
    "files.info": "files:read", "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
}
# Fields slack_sdk sends form-encoded as JSON strings.
JSON_FIELDS = ("view", "blocks", "attachments", "files", "metadata")


@dataclass
class Call:
    """One request to the fake: the method, its decoded parameters, the token, the answer."""

    method: str
    params: dict[str, Any]
    token: str | None
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)


def invalid(errors: list[str], error: str = "invalid_arguments") -> SlackError:
    return SlackError(error, response_metadata={"messages": errors})


class FakeSlack(FilesMixin):
    """Slack's Web API on 127.0.0.1; `url` ends in `/api/` (slack_sdk's `base_url`)."""

    def __init__(self, *, token: str = "xoxb-test", trigger_ttl: float | None = 3.0,
                 scopes: tuple[str, ...] = MANIFEST_SCOPES) -> None:
        self.token = token
        self.trigger_ttl = trigger_ttl  # None: triggers never expire (slow CI)
        self.scopes = set(scopes)
        self.latency = 0.0  # seconds every answer is held back
        # File downloads come in pieces of this many bytes with this pause between them
        # (about 6 MB/s): what a client sees of a real download from Slack's file servers.
        self.download_chunk = 32 * 1024
        self.download_pause = 0.005
        self.bot_channels: set[str] = set()
        self.users: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.uploads: list[dict[str, Any]] = []
        self.downloads: list[tuple[str, bool]] = []  # (file id, authorised)
        self.store = ViewStore()
        self.url = ""
        self.root = ""
        self._contents: dict[str, bytes] = {}
        self._pending_uploads: dict[str, dict[str, Any]] = {}
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._response_urls: dict[str, dict[str, Any]] = {}
        self._limits: dict[str, list[float]] = {}
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.add_user(DEFAULT_USER, real_name="Test User", email="tester@clinic.example")

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/{upload_id}", self._upload)
        app.router.add_get("/files-pri/{team_file}/download/{name}", self._download)
        app.router.add_get("/login", self._login)
        app.router.add_post("/response/{rid}", self._response_url)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.root = f"http://127.0.0.1:{port}/"
        self.url = f"{self.root}api/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- set-up knobs ---------------------------------------------------------------------

    def new_trigger_id(self, view_id: str | None = None) -> str:
        """A trigger id as an interaction would carry (bound to the view it came from)."""
        return self.store.new_trigger(view_id, time.monotonic())

    def new_response_url(self, channel_id: str, user_id: str,
                         message_ts: str | None = None) -> str:
        """A response_url for an interaction in `channel_id` (usable 5 times, like Slack's)."""
        rid = secrets.token_hex(8)
        self._response_urls[rid] = {"channel": channel_id, "user": user_id,
                                    "message_ts": message_ts, "uses": 0}
        return f"{self.root}response/{rid}"

    def add_user(self, user_id: str, *, real_name: str = "Clinic User", tz: str = "UTC",
                 tz_offset: int = 0, email: str | None = None) -> dict[str, Any]:
        user = {
            "id": user_id, "team_id": TEAM_ID, "name": real_name.lower().replace(" ", "."),
            "real_name": real_name, "deleted": False, "is_bot": False, "tz": tz,
            "tz_label": tz, "tz_offset": tz_offset,
            "profile": {"real_name": real_name, "display_name": real_name},
        }
        if email is not None:  # Slack leaves the key out when there is no address
            user["profile"]["email"] = email  # type: ignore[index]
        self.users[user_id] = user
        return user

    def rate_limit(self, method: str, n: int = 1, retry_after: float = 1) -> None:
        """The next `n` calls of `method` get HTTP 429 with `Retry-After`."""
        self._limits.setdefault(method, []).extend([retry_after] * n)

    # -- what the bot did -----------------------------------------------------------------

    @property
    def views(self) -> dict[str, dict[str, Any]]:
        """Every view opened, pushed or published, in its current state, by view id."""
        return self.store.views

    def latest_view(self) -> dict[str, Any]:
        """The view most recently opened, pushed, updated or published."""
        return self.store.views[self.store.latest]

    def home(self, user_id: str) -> dict[str, Any] | None:
        return self.store.home(user_id)

    def stack(self, view_id: str) -> list[dict[str, Any]]:
        """The modal stack holding `view_id`, root first."""
        return self.store.stack(view_id)

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Messages in a channel (or a user's DM), in their current form after updates."""
        return list(self._messages.get(self._dm(channel), []))

    def ephemerals(self, user_id: str) -> list[dict[str, Any]]:
        return [e for e in self._ephemerals if e["user"] == user_id]

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def apply_view_response(self, view_id: str, ack: Any) -> list[str]:
        """Do what Slack does with a view_submission ack; return Block Kit errors, if any."""
        if not isinstance(ack, dict) or "response_action" not in ack:
            self.store.close(view_id, all_views=False)
            return []
        action = ack["response_action"]
        if action in ("update", "push"):
            errors = block_kit_errors(ack.get("view"), kind="modal")
            if errors:
                return errors
            try:
                if action == "update":
                    self.store.update(view_id, ack["view"])
                else:
                    self.store.push(view_id, ack["view"])
            except LookupError as exc:
                return [str(exc.args[0])]
        elif action == "clear":
            self.store.close(view_id, all_views=True)
        return []

    # -- HTTP -----------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(dict(await request.post()))
        for key in JSON_FIELDS:
            if isinstance(params.get(key), str) and params[key][:1] in "[{":
                params[key] = json.loads(params[key])
        return params

    def _token(self, request: web.Request, params: dict[str, Any]) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header.removeprefix("Bearer ")
        token = params.pop("token", None)
        return token if isinstance(token, str) else None

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(method, params, self._token(request, params))
        self.calls.append(call)
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._limits.get(method):
            retry_after = self._limits[method].pop(0)
            call.status, call.response = 429, {"ok": False, "error": "ratelimited"}
            return web.json_response(call.response, status=429,
                                     headers={"Retry-After": str(int(retry_after))})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        headers = {"x-oauth-scopes": ",".join(sorted(self.scopes))}
        try:
            if handler is None:
                raise SlackError("unknown_method")
            if call.token is None:
                raise SlackError("not_authed")
            if call.token != self.token:
                raise SlackError("invalid_auth")
            needed = SCOPES.get(method)
            if needed and needed not in self.scopes:
                raise SlackError("missing_scope", needed=needed,
                                 provided=",".join(sorted(self.scopes)))
            call.response = {"ok": True, **handler(params)}
        except SlackError as exc:
            call.response = exc.body
        return web.json_response(call.response, headers=headers)

    # -- methods: auth, users, conversations ----------------------------------------------

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"url": "https://clinic.slack.com/", "team": "Clinic", "user": "campaign-bot",
                "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID,
                "app_id": APP_ID, "is_enterprise_install": False}

    def _m_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(params.get("user")))
        if user is None:
            raise SlackError("user_not_found")
        user = json.loads(json.dumps(user))
        if "users:read.email" not in self.scopes:
            user["profile"].pop("email", None)
        return {"user": user}

    def _m_conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = str(params.get("users", "")).split(",")
        if len(users) != 1 or users[0] not in self.users:
            raise SlackError("user_not_found")
        return {"channel": {"id": self._dm(users[0])}}

    def _dm(self, channel: str) -> str:
        """A user id stands for the DM with that user, as chat.postMessage treats it."""
        return "D" + channel[1:] if channel[:1] in ("U", "W") else channel

    def _require_member(self, channel: str) -> str:
        if not channel:
            raise SlackError("channel_not_found")
        channel = self._dm(channel)
        if channel[:1] in ("C", "G") and channel not in self.bot_channels:
            raise SlackError("not_in_channel")
        return channel

    # -- methods: views -------------------------------------------------------------------

    def _view_param(self, params: dict[str, Any], kind: str) -> dict[str, Any]:
        view = params.get("view")
        if not isinstance(view, dict):
            raise invalid(["[ERROR] must provide an object [json-pointer:/view]"])
        errors = block_kit_errors(view, kind=kind)  # type: ignore[arg-type]
        if errors:
            raise invalid(errors)
        return view  # type: ignore[return-value]

    def _trigger(self, params: dict[str, Any]) -> str | None:
        trigger = params.get("trigger_id") or params.get("interactivity_pointer")
        error = self.store.use_trigger(str(trigger or ""), time.monotonic(), self.trigger_ttl)
        if error:
            raise SlackError(error)
        return self.store.trigger_view(str(trigger))

    def _m_views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._view_param(params, "modal")
        self._trigger(params)
        return {"view": self._checked(lambda: self.store.open(view))}

    def _m_views_push(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._view_param(params, "modal")
        origin = self._trigger(params) or self.store.latest_modal()
        if origin is None:
            raise SlackError("not_found")
        return {"view": self._checked(lambda: self.store.push(origin, view))}

    def _m_views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        given = params.get("view")
        view = self._view_param(params, given.get("type") if isinstance(given, dict) and
                                given.get("type") == "home" else "modal")
        view_id = params.get("view_id") or self.store.by_external_id(params.get("external_id"))
        return {"view": self._checked(
            lambda: self.store.update(str(view_id or ""), view, params.get("hash")))}

    def _m_views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        view = self._view_param(params, "home")
        user_id = str(params.get("user_id", ""))
        if user_id not in self.users:
            raise SlackError("user_not_found")
        return {"view": self._checked(
            lambda: self.store.publish(user_id, view, params.get("hash")))}

    def _checked(self, action: Any) -> dict[str, Any]:
        try:
            return action()
        except LookupError as exc:  # the store names Slack's error
            raise SlackError(str(exc.args[0])) from None

    # -- methods: chat --------------------------------------------------------------------

    def _message_content(self, params: dict[str, Any]) -> dict[str, Any]:
        if not any(params.get(k) for k in ("text", "blocks", "attachments")):
            raise SlackError("no_text")
        errors = block_kit_errors(params, kind="message")
        if errors:
            raise invalid(errors, "invalid_blocks")
        return {k: params[k] for k in ("text", "blocks", "attachments", "metadata")
                if k in params}

    def _new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _post(self, channel: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
        message = {"type": "message", "ts": self._new_ts(), "channel": channel,
                   "bot_id": BOT_ID, "user": BOT_USER_ID, **content, **extra}
        self._messages.setdefault(channel, []).append(message)
        return message

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._require_member(str(params.get("channel", "")))
        content = self._message_content(params)
        extra = {"thread_ts": params["thread_ts"]} if params.get("thread_ts") else {}
        message = self._post(channel, content, **extra)
        return {"channel": channel, "ts": message["ts"], "message": message}

    def _m_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._require_member(str(params.get("channel", "")))
        user = str(params.get("user", ""))
        if user not in self.users:
            raise SlackError("user_not_found")
        content = self._message_content(params)
        ts = self._new_ts()
        self._ephemerals.append({"channel": channel, "user": user, "ts": ts,
                                 "is_ephemeral": True, "source": "chat.postEphemeral",
                                 **content})
        return {"message_ts": ts}

    def _find(self, channel: str, ts: str) -> dict[str, Any]:
        for message in self._messages.get(self._dm(channel), []):
            if message["ts"] == ts:
                return message
        raise SlackError("message_not_found")

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._find(str(params.get("channel", "")), str(params.get("ts", "")))
        content = self._message_content(params)
        for key in ("text", "blocks", "attachments"):
            if key in content:
                message[key] = content[key]
        message["edited"] = {"user": BOT_USER_ID, "ts": self._new_ts()}
        return {"channel": message["channel"], "ts": message["ts"], "text": message.get("text"),
                "message": message}

    def _m_chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._find(str(params.get("channel", "")), str(params.get("ts", "")))
        self._messages[message["channel"]].remove(message)
        return {"channel": message["channel"], "ts": message["ts"]}

    async def _response_url(self, request: web.Request) -> web.Response:
        target = self._response_urls.get(request.match_info["rid"])
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        self.calls.append(Call("response_url", body, None))
        if target is None or target["uses"] >= 5:
            return web.Response(status=404, text="expired_url")
        target["uses"] += 1
        errors = block_kit_errors(body, kind="message")
        if errors:
            return web.json_response({"ok": False, "error": "invalid_blocks",
                                      "response_metadata": {"messages": errors}}, status=400)
        content = {k: body[k] for k in ("text", "blocks") if k in body}
        channel, ts = target["channel"], target["message_ts"]
        if body.get("delete_original") and ts:
            self._messages[self._dm(channel)] = [
                m for m in self._messages.get(self._dm(channel), []) if m["ts"] != ts]
        elif body.get("replace_original") and ts:
            with_ts = [m for m in self._messages.get(self._dm(channel), []) if m["ts"] == ts]
            for message in with_ts:
                message.update(content)
            for ephemeral in self._ephemerals:
                if ephemeral["ts"] == ts:
                    ephemeral.update(content)
        elif body.get("response_type") == "in_channel":
            self._post(self._dm(channel), content)
        else:
            self._ephemerals.append({"channel": channel, "user": target["user"],
                                     "ts": self._new_ts(), "is_ephemeral": True,
                                     "source": "response_url", **content})
        return web.json_response({"ok": True})
