"""Socket Mode with real parts: the `campaign-bot run` process and slack_sdk's own Socket Mode
client, against the Slack stand-in's `apps.connections.open` and WebSocket (SocketModeSlack)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.db import Database
from modals import ids
from modals.messages import HELP
from tests.bot.test_settings import clean_env
from tests.campaign_fixtures import add_patients, grant_level
from tests.fakes.slack_socket import ACK_SECONDS, SocketModeSlack
from tests.fakes.slack_views import DEFAULT_USER
from tests.slack.helpers import until

CHANNEL = "C0CAMPAIGNS"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Bot:
    """One `campaign-bot run` process, its output in `log`."""

    process: asyncio.subprocess.Process
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def alive_while(self, waiting: Awaitable[T]) -> T:
        """`waiting`'s result; fails at once (with the bot's output) if the bot exits first."""
        task = asyncio.ensure_future(waiting)
        exited = asyncio.ensure_future(self.process.wait())
        try:
            await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                raise AssertionError(f"the bot exited ({self.process.returncode}):\n"
                                     f"{self.output()}")
            try:
                return task.result()
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- the bot's output:\n{self.output()}") from None
        finally:
            task.cancel()
            exited.cancel()


@contextlib.asynccontextmanager
async def socket_mode_bot(db: Database, tmp_path: Path, slack: SocketModeSlack,
                          app_token: str | None = None) -> AsyncIterator[Bot]:
    """`campaign-bot run` in Socket Mode: app token set, no signing secret."""
    env = clean_env(
        PORT=str(free_port()), DATABASE_URL=db.url, OUTBOX_DIR=str(tmp_path / "outbox"),
        SLACK_BOT_TOKEN=slack.token, SLACK_APP_TOKEN=app_token or slack.app_token,
        SLACK_API_URL=slack.url, EMAIL_BACKEND="file", SMS_BACKEND="file",
        QUIET_HOURS="off", LOG_LEVEL="INFO",
    )
    log = tmp_path / "bot.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "run", "--host", "127.0.0.1",
            cwd=tmp_path, env=env, stdout=out, stderr=out,
        )
    try:
        yield Bot(process, log)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # Socket Mode ⟂ database
async def test_campaign_bot_run_serves_slack_over_socket_mode(
    db: Database, tmp_path: Path
) -> None:
    await grant_level(db, DEFAULT_USER, "write")
    await add_patients(db, 3)
    async with SocketModeSlack() as slack:
        slack.trigger_ttl = None  # slow CI machines: triggers never expire
        slack.bot_channels = {CHANNEL}
        async with socket_mode_bot(db, tmp_path, slack) as bot:
            # It fetched the WebSocket URL from SLACK_API_URL with the app token, and connected.
            connection = await bot.alive_while(slack.wait_connected(seconds=15))
            assert [c.token for c in slack.calls_to("apps.connections.open")] == ["xapp-test"]
            assert all(c.token == "xoxb-test" for c in slack.calls
                       if c.method != "apps.connections.open")  # the bot token elsewhere
            await bot.alive_while(until(lambda: "Slack: connected in Socket Mode"
                                        in bot.output(), seconds=10))
            assert f"Slack: Socket Mode (API {slack.url})" in bot.output()

            # /campaign help: acked at once (an empty ack), the help comes as an ephemeral.
            help_command = await slack.slash_command("help", channel_id=CHANNEL)
            ack = await bot.alive_while(slack.wait_ack(help_command))
            assert ack == {"envelope_id": help_command.envelope_id}
            assert help_command.acked_after is not None
            assert help_command.acked_after < ACK_SECONDS
            [ephemeral] = await bot.alive_while(
                until(lambda: slack.ephemerals(DEFAULT_USER), seconds=10))
            assert ephemeral["channel"] == CHANNEL and ephemeral["text"] == HELP

            # /campaign: the modal opens with the command's trigger, then shows the audience.
            trigger = slack.new_trigger_id()
            command = await slack.slash_command(channel_id=CHANNEL, trigger_id=trigger)
            assert await bot.alive_while(slack.wait_ack(command)) == {
                "envelope_id": command.envelope_id}
            [opened] = await bot.alive_while(
                until(lambda: [c for c in slack.calls_to("views.open")
                               if c.response.get("ok")], seconds=10))
            assert opened.params["trigger_id"] == trigger
            view_id = opened.response["view"]["id"]
            audience = await bot.alive_while(until(
                lambda: slack.views[view_id]["callback_id"] == "campaign_audience"
                and slack.views[view_id], seconds=10))

            # A view_submission: the answer rides in the ack's payload (no HTTP response).
            submission = await slack.view_submission(audience, {"segment_select": "all"})
            ack = await bot.alive_while(slack.wait_ack(submission))
            assert ack["payload"]["response_action"] == "update", ack
            assert slack.views[view_id]["callback_id"] == ids.FORM_VIEW

            # events_api: App Home opened, published through the Web API.
            home = await slack.event({"type": "app_home_opened", "user": DEFAULT_USER,
                                      "channel": "D0TESTER", "tab": "home"})
            assert await bot.alive_while(slack.wait_ack(home)) == {
                "envelope_id": home.envelope_id}
            await bot.alive_while(until(lambda: slack.home(DEFAULT_USER), seconds=10))

            # SIGTERM: an orderly stop that closes the socket (code 1000), exit status 0.
            bot.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(bot.process.wait(), timeout=15) == 0, bot.output()
            await slack.wait_closed(connection, seconds=5)
            assert connection.closed_by_app, connection.close_code
            assert len(slack.connections) == 1  # never had to reconnect
            assert slack.socket_errors == []
            assert "Traceback" not in bot.output()


# -- the stand-in itself, against slack_sdk (in-process, fast) ------------------------------


async def test_apps_connections_open_takes_only_the_app_token() -> None:
    async with SocketModeSlack() as slack:
        for token, error in (("xoxb-test", "not_allowed_token_type"),
                             ("xapp-wrong", "invalid_auth")):
            client = AsyncWebClient(base_url=slack.url, token="xoxb-test")
            with pytest.raises(SlackApiError) as caught:
                await client.apps_connections_open(app_token=token)
            assert caught.value.response["error"] == error
        answer = await AsyncWebClient(base_url=slack.url).apps_connections_open(
            app_token="xapp-test")
        assert answer["url"].startswith(slack.socket_url + "?ticket=")


async def test_a_ticket_is_good_for_one_connection() -> None:
    async with SocketModeSlack() as slack, aiohttp.ClientSession() as http:
        url = (await AsyncWebClient(base_url=slack.url).apps_connections_open(
            app_token="xapp-test"))["url"]
        async with http.ws_connect(url) as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello" and hello["num_connections"] == 1
            await slack.wait_connected(seconds=5)
            envelope = await slack.push("events_api", {"type": "event_callback"})
            pushed = await ws.receive_json(timeout=5)
            assert pushed["envelope_id"] == envelope.envelope_id
            assert pushed["accepts_response_payload"] is False
            await ws.send_json({"envelope_id": envelope.envelope_id, "payload": {"x": 1}})
            await ws.send_json({"envelope_id": "nope"})
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(url)  # the ticket is used
        await slack.wait_closed(slack.connections[0], seconds=5)
        assert envelope.ack == {"envelope_id": envelope.envelope_id, "payload": {"x": 1}}
        assert len(slack.socket_errors) == 2  # a payload it does not accept; unknown id


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_refused_app_token_stops_start_up_with_the_fix(
    db: Database, tmp_path: Path
) -> None:
    async with SocketModeSlack() as slack, \
            socket_mode_bot(db, tmp_path, slack, app_token="xapp-revoked") as bot:
        code = await asyncio.wait_for(bot.process.wait(), timeout=60)
        output = bot.output()
    assert code == 2, output
    [line] = [x for x in output.splitlines() if x.startswith("configuration error")]
    assert "SLACK_APP_TOKEN" in line and "connections:write" in line, output
    assert "Traceback" not in output
