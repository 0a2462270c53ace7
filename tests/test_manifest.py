"""manifest.yml is a valid Slack app manifest, asks for no more than it needs, and matches the
listeners the Bolt app registers (every command and event both ways)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Slack's published schema, as the steering repo ships it beside this one (../shared/).
SCHEMAS = Path(os.environ.get("SLACK_MANIFEST_SCHEMA_DIR")
               or ROOT.parent / "shared" / "slack-manifest-schema")
REMOTE = "https://raw.githubusercontent.com/slackapi/manifest-schema/v0.5.0/schemas/"
SCOPES = ["commands", "chat:write", "users:read", "users:read.email", "files:read",
          "files:write"]
EVENTS_URL = "https://YOUR-HOST/slack/events"
# What Slack could send that the manifest does not subscribe to: no listener may want it.
UNSUBSCRIBED_EVENTS = ["message", "app_mention", "reaction_added", "member_joined_channel",
                       "app_uninstalled", "tokens_revoked", "team_join"]


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifest.yml").read_text())


def _schema(name: str) -> dict[str, Any]:
    path = SCHEMAS / name
    if not path.exists():
        pytest.skip(f"Slack's manifest schema is not at {SCHEMAS} (it ships in ../shared/; "
                    "or set SLACK_MANIFEST_SCHEMA_DIR)")
    return json.loads(path.read_text())


def test_manifest_validates_against_slacks_schema(manifest: dict[str, Any]) -> None:
    """The top-level schema picks a version through remote $refs: served here from the copy."""
    jsonschema = pytest.importorskip("jsonschema")
    from referencing import Registry, Resource

    versioned = {
        REMOTE + name: Resource.from_contents(_schema(name))
        for name in ("manifest.schema.1.0.0.json", "manifest.schema.2.0.0.json")
    }

    def retrieve(uri: str) -> Resource:  # anything else would need the network
        raise LookupError(f"schema {uri} is not in {SCHEMAS}")

    registry = Registry(retrieve=retrieve).with_resources(versioned.items())  # type: ignore[call-arg]
    major = (manifest.get("_metadata") or {}).get("major_version", 1)
    version = jsonschema.Draft7Validator(_schema(f"manifest.schema.{major}.0.0.json"))
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in version.iter_errors(manifest)]
    assert problems == []
    jsonschema.Draft7Validator(_schema("manifest.schema.json"), registry=registry).validate(
        manifest
    )


def test_manifest_declares_what_the_bot_uses_and_no_more(manifest: dict[str, Any]) -> None:
    assert manifest["oauth_config"]["scopes"]["bot"] == SCOPES
    assert set(manifest["oauth_config"]["scopes"]) == {"bot"}  # no user-token scopes
    features, settings = manifest["features"], manifest["settings"]
    [command] = features["slash_commands"]
    assert command["command"] == "/campaign" and command["url"] == EVENTS_URL
    assert features["app_home"]["home_tab_enabled"] is True
    assert features["app_home"]["messages_tab_enabled"] is True  # DMs when not in a channel
    assert features["app_home"]["messages_tab_read_only_enabled"] is True
    assert settings["event_subscriptions"] == {"request_url": EVENTS_URL,
                                               "bot_events": ["app_home_opened"]}
    assert settings["interactivity"] == {"is_enabled": True, "request_url": EVENTS_URL,
                                         "message_menu_options_url": EVENTS_URL}
    assert settings["socket_mode_enabled"] is True


# -- the Bolt app's listeners ---------------------------------------------------------------

SPIED = ("command", "event", "message", "shortcut", "global_shortcut", "message_shortcut")


@pytest.fixture
def registrations(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Any]]]:
    """What each `app.command(...)`, `app.event(...)` etc. was called with while building."""
    from slack_bolt.async_app import AsyncApp

    seen: dict[str, list[Any]] = {name: [] for name in SPIED}
    for name in SPIED:
        original = getattr(AsyncApp, name)

        def spy(self: Any, *args: Any, _name: str = name, _original: Any = original,
                **kwargs: Any) -> Any:
            seen[_name].append(args[0] if args else next(iter(kwargs.values()), None))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(AsyncApp, name, spy)
    yield seen


@pytest.fixture
def slack_app(registrations: dict[str, list[Any]], tmp_path: Path) -> Any:
    slack_app_module = pytest.importorskip(
        "bot.slack_app", reason="bot/slack_app.py (build_slack_app) is not written yet"
    )
    from bot.db import Database
    from bot.settings import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, slack_bot_token="xoxb-test", slack_signing_secret="secret",
        slack_api_url="http://127.0.0.1:9/api/", database_url=f"sqlite:///{tmp_path}/m.db",
    )
    return slack_app_module.build_slack_app(settings, Database(settings.database_url))


def _command_request(command: str) -> Any:
    from slack_bolt.request.async_request import AsyncBoltRequest

    body = urlencode({"command": command, "text": "", "user_id": "U1", "channel_id": "C1",
                      "team_id": "T1", "trigger_id": "1.2.3", "response_url": EVENTS_URL})
    return AsyncBoltRequest(body=body,
                            headers={"content-type": ["application/x-www-form-urlencoded"]})


def _event_request(event_type: str) -> Any:
    from slack_bolt.request.async_request import AsyncBoltRequest

    body = {"type": "event_callback", "team_id": "T1", "api_app_id": "A1", "event_id": "Ev1",
            "event": {"type": event_type, "user": "U1", "channel": "D1", "tab": "home",
                      "event_ts": "1.2"}}
    return AsyncBoltRequest(body=json.dumps(body),
                            headers={"content-type": ["application/json"]})


async def _listeners_matching(app: Any, request: Any) -> int:
    from slack_bolt.response import BoltResponse

    return sum([await listener.async_matches(req=request, resp=BoltResponse(status=404))
                for listener in app._async_listeners])


def _names(patterns: list[Any], key: str = "type") -> set[str]:
    """Registered constraints as names (a dict constraint carries its `type`)."""
    names = set()
    for pattern in patterns:
        if isinstance(pattern, dict):
            pattern = pattern.get(key)
        names.add(pattern.pattern if isinstance(pattern, re.Pattern) else str(pattern))
    return names


async def test_every_manifest_command_and_event_has_a_listener(
    manifest: dict[str, Any], slack_app: Any
) -> None:
    for command in manifest["features"]["slash_commands"]:
        assert await _listeners_matching(slack_app, _command_request(command["command"])), (
            f"no listener for {command['command']}"
        )
    for event in manifest["settings"]["event_subscriptions"]["bot_events"]:
        assert await _listeners_matching(slack_app, _event_request(event)), (
            f"no listener for the {event} event"
        )


async def test_every_listener_is_for_a_manifest_command_or_event(
    manifest: dict[str, Any], slack_app: Any, registrations: dict[str, list[Any]]
) -> None:
    commands = {c["command"] for c in manifest["features"]["slash_commands"]}
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert _names(registrations["command"]) == commands
    assert _names(registrations["event"]) == events
    # Messages and shortcuts would need manifest entries (message.* events, shortcuts).
    assert registrations["message"] == []
    assert registrations["shortcut"] == registrations["global_shortcut"] == []
    assert registrations["message_shortcut"] == []
    # And no catch-all listener (a regex, a middleware-built matcher) takes anything else.
    assert await _listeners_matching(slack_app, _command_request("/not-in-manifest")) == 0
    for event in UNSUBSCRIBED_EVENTS:
        assert await _listeners_matching(slack_app, _event_request(event)) == 0, event
