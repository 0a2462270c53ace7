"""`POST /slack/events` refuses malformed or unsigned bodies with 4xx, never 500, no traceback.

Signed like Slack signs (or not signed at all): a valid signature over a body Slack would
never send must not reach a code path that crashes (SPEC §7).
"""

from __future__ import annotations

import logging

import pytest

from tests.handlers.test_malformed_requests import FILE_FIELD, MULTIPART, NAMELESS, assert_quiet
from tests.slack.conftest import WRITER, Stand

FORM = "application/x-www-form-urlencoded"
BODIES = {
    "bad utf-8 form": (b"command=%2Fcampaign&text=\xff\xfe", FORM),
    "bad utf-8 escapes": (b"command=%2Fcampaign&text=%FF%FE&user_id=U0TEST", FORM),
    "bad utf-8 payload": (b"payload=%7B%22type%22%3A%22%FF%22%7D", FORM),
    "bad utf-8 json": (b'{"type": "event_callback", "event": "\xff"}', "application/json"),
    "payload not json": (b"payload=%7Bnot+json", FORM),
    "unknown charset": (b"command=%2Fcampaign", FORM + "; charset=x-no-such-charset"),
    "nameless multipart": (NAMELESS, MULTIPART),
    "multipart file": (FILE_FIELD, MULTIPART),
    "empty": (b"", FORM),
}


@pytest.mark.parametrize("case", list(BODIES))
@pytest.mark.parametrize("tamper", [None, "bad_signature", "missing_signature"])
async def test_malformed_bodies_get_4xx(
    stand: Stand, caplog: pytest.LogCaptureFixture, case: str, tamper: str | None
) -> None:
    body, content_type = BODIES[case]
    caplog.set_level(logging.INFO)
    answer = await stand.sr.post(body, content_type, tamper=tamper)  # type: ignore[arg-type]
    if tamper is None:
        assert answer.status == 400, (case, answer.status, answer.text)
    else:
        assert answer.status in (400, 401), (case, answer.status, answer.text)
    assert_quiet(caplog)


async def test_a_huge_body_is_413(stand: Stand, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    answer = await stand.sr.post(b"command=%2Fcampaign&text=" + b"a" * (3 * 1024 * 1024), FORM)
    assert answer.status == 413
    assert_quiet(caplog)


async def test_a_well_formed_unsigned_command_is_401(
    stand: Stand, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for tamper in ("bad_signature", "missing_signature", "stale_timestamp"):
        answer = await stand.sr.slash_command(text="list", tamper=tamper)  # type: ignore[arg-type]
        assert answer.status == 401
    for headers in ({"X-Slack-Request-Timestamp": "soon"}, {"X-Slack-Signature": "v0=é"},
                    {"X-Slack-Request-Timestamp": "-1"}):
        answer = await stand.sr.form({"command": "/campaign", "text": "list"}, headers=headers)
        assert answer.status == 401
    assert stand.slack.ephemerals(WRITER) == []  # nothing was run
    assert_quiet(caplog, requests=6)


async def test_slacks_unsigned_ssl_check_is_answered_and_runs_nothing(
    stand: Stand, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answer = await stand.sr.post(b"ssl_check=1&token=x", FORM, tamper="missing_signature")
    assert answer.status == 200
    assert stand.slack.calls_to("chat.postEphemeral") == []
    assert_quiet(caplog)
