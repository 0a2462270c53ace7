"""User text in Slack is inert: no mention, link or formatting from what a user typed (SPEC §7).

Driven over real HTTP; the assertions read the exact JSON the bot posted to the Slack stand-in.
"""

from __future__ import annotations

import re
from typing import Any

from handlers.errors import user_message
from modals.common import escape
from modals.messages import campaign_line, created_message, home_view
from modals.snapshot import progress_message, snapshot_message
from services.errors import ValidationFailed
from services.models import Campaign, CampaignStatus, Channel, utcnow
from services.snapshot import ChannelNumbers, Snapshot
from tests.campaign_fixtures import add_patients
from tests.slack.conftest import CHANNEL, WRITER, Stand
from tests.slack.helpers import campaigns_in, form_values, open_modal, until

HOSTILE = "Oferta <!channel> <@U123> <https://evil|clinic> *bold* _it_ ~st~ `co`"
ZW = "\u200b"
# The bot's own markup: its user mention of the campaign's author and Slack date tokens.
_OURS = re.compile(r"<@U0[A-Z0-9]+>|<!date\^\d+\^[^|>]*\|[^>]*>")


def every_text(payload: Any) -> list[str]:
    """`text` and every text object in blocks, as Slack would read them."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(payload)
    return found


def assert_inert(payload: Any) -> None:
    """No live mention, link or formatting came from HOSTILE, and it is still shown."""
    texts = every_text(payload)
    assert texts
    joined = "\n".join(texts)
    assert "Oferta" in joined
    for text in texts:
        rest = _OURS.sub("", text)
        assert "<" not in rest and ">" not in rest, text  # no <!channel>, <@U123>, <url|label>
        for marked in ("*bold*", "_it_", "~st~", "`co`"):
            assert marked not in text, text
    # What the user typed is still readable: entities and invisible spaces only.
    assert "&lt;!channel&gt;" in joined and "&lt;https://evil|clinic&gt;" in joined
    assert f"{ZW}*{ZW}bold{ZW}*{ZW}" in joined


def test_escape_covers_mentions_links_and_formatting() -> None:
    text = escape("a & b <!here> <@U1|x> <#C1> <mailto:x@y|z> *b* _i_ ~s~ `c` > quote")
    assert "<" not in text and ">" not in text
    assert "&amp; b" in text and "&gt; quote" in text
    for char in "*_~`":
        assert re.search(rf"(?<!{ZW}){re.escape(char)}|{re.escape(char)}(?!{ZW})", text) is None
    assert text.replace(ZW, "").replace("&lt;", "<").replace("&gt;", ">").replace(
        "&amp;", "&") == "a & b <!here> <@U1|x> <#C1> <mailto:x@y|z> *b* _i_ ~s~ `c` > quote"


def test_every_message_showing_a_subject_or_reason_escapes_it() -> None:
    campaign = Campaign(id=7, subject=HOSTILE, audience_size=3, segment_slug="tag:*vip*",
                        created_by=WRITER, send_now=True, status=CampaignStatus.scheduled,
                        channel=Channel.EMAIL)
    text, blocks = created_message(campaign)
    assert_inert({"text": text, "blocks": blocks})
    assert f"<@{WRITER}>" in str(blocks)  # the bot's own mention of the author still works
    assert_inert({"blocks": [{"text": campaign_line(campaign)}]})
    assert_inert(home_view([campaign], allowed=True))

    email = ChannelNumbers(
        channel="email", audience=3, skipped=1, skipped_reasons={"<@U9> _opted out_": 1},
        sent=1, delivered=0, failed=1, failed_reasons={"550 <!here> *no such user*": 1},
        unknown=0, pending=0, waiting=0, opened=0, clicked=0, opted_out=0,
    )
    snap = Snapshot(
        campaign_id=7, subject=HOSTILE, status="failed", status_reason="<!channel> *down*",
        channel="EMAIL", audience=3, send_at=None, started_at=utcnow(), finished_at=utcnow(),
        taken_at=utcnow(), channels={"email": email},
    )
    for render in (snapshot_message, progress_message):
        text, blocks = render(snap)
        assert_inert({"text": text, "blocks": blocks})
    shown = str(snapshot_message(snap)[1])
    assert "&lt;!here&gt;" in shown and "&lt;!channel&gt;" in shown


async def test_channel_message_of_a_hostile_subject_pings_and_links_nothing(
    stand: Stand,
) -> None:
    slack, sr = stand.slack, stand.sr
    await add_patients(stand.db, 2)
    view = await open_modal(slack, sr)
    await sr.view_submission(view, {"segment_select": "all"})
    form = slack.views[view["id"]]
    answer = await sr.view_submission(form, form_values(**{"subject/value": HOSTILE}))
    assert answer.body["response_action"] == "update", answer.body
    await sr.view_submission(slack.views[view["id"]])
    [campaign] = await campaigns_in(stand.db)
    assert campaign.subject == HOSTILE  # stored as typed; escaped only where Slack reads it

    [message] = await until(lambda: slack.messages(CHANNEL))
    posted = [c.params for c in slack.calls_to("chat.postMessage")]
    assert posted
    for params in posted:
        assert_inert({"text": params.get("text"), "blocks": params.get("blocks")})
    assert_inert(message)

    await sr.slash_command(text=f"stats {campaign.id}")
    await until(lambda: len(slack.messages(CHANNEL)) >= 2)
    for message in slack.messages(CHANNEL):
        assert_inert(message)
    await sr.slash_command(text="list")
    [listing] = await until(lambda: slack.ephemerals(WRITER))
    assert_inert(listing)


async def test_error_messages_quote_what_was_typed_inertly(stand: Stand) -> None:
    await stand.sr.slash_command(text="<!channel>")
    [reply] = await until(lambda: stand.slack.ephemerals(WRITER))
    assert "<!channel>" not in reply["text"] and "&lt;!channel&gt;" in reply["text"]

    text, _ = user_message(ValidationFailed({"tags": "'<!here> *x*' is too long"}))
    assert "<!here>" not in text and "*x*" not in text
