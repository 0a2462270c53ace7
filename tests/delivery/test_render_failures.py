"""A message that cannot be made for one patient fails that delivery in plain words (it certainly
was not sent: never `unknown`), and the other patients get theirs. Real engine, outbox, ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.db import Database
from services.delivery import channels
from services.models import CampaignStatus, DeliveryChannel, DeliveryStatus
from tests.campaign_fixtures import add_patients
from tests.delivery.test_engine import (  # noqa: F401 - _close_engines: an autouse fixture
    _close_engines,
    deliveries,
    drain,
    engine_for,
    outbox_emails,
    outbox_sms,
    send_now,
    settings_for,
    status_of,
)

PATIENTS = ["P0001", "P0002", "P0003"]


async def _send_to_three(db: Database, tmp_path: Path, message: str) -> tuple[int, list[int]]:
    ids = await add_patients(db, 3, email_opt_in=True, sms_opt_in=True, phone="+525512345678")
    campaign_id = await send_now(db, channel="EMAIL_SMS", external_ids=PATIENTS, message=message)
    await drain(await engine_for(db, settings_for(db, tmp_path)))
    return campaign_id, ids


async def _assert_only_the_second_failed(
    db: Database, tmp_path: Path, campaign_id: int, ids: list[int], reason: str
) -> None:
    by = {(r.patient_id, r.channel): r for r in await deliveries(db, campaign_id)}
    for channel in (DeliveryChannel.email, DeliveryChannel.sms):
        failed = by[(ids[1], channel)]
        assert (failed.status, failed.reason) == (DeliveryStatus.failed, reason)
        assert {by[(ids[0], channel)].status, by[(ids[2], channel)].status} == {
            DeliveryStatus.sent}
    assert sorted(m["To"] for m in outbox_emails(tmp_path)) == [
        "p0001@example.com", "p0003@example.com"]
    bodies = sorted(s["body"] for s in outbox_sms(tmp_path))
    assert [b.split(",")[0] for b in bodies] == ["Hello AnaP0001", "Hello AnaP0003"]
    assert await status_of(db, campaign_id) == CampaignStatus.completed


async def test_a_template_that_explodes_for_one_patient_fails_only_that_delivery(
    db: Database, tmp_path: Path
) -> None:
    # Validation renders sample patients, so this passes it; only AnaP0002's data explodes
    # (unbounded, it became an email of 300,000 characters: sizes that old code sends fast).
    message = ("Hello {{ first_name }}, your check-up is due.\n"
               '{{ "x"|center(300000) if first_name == "AnaP0002" else "" }}')
    campaign_id, ids = await _send_to_three(db, tmp_path, message)
    await _assert_only_the_second_failed(
        db, tmp_path, campaign_id, ids,
        'the message would grow too long when personalised ({{ "x"|center(300000) if '
        'first_name == "AnaP0002" else "" }} makes text of more than 200,000 characters)',
    )


async def test_any_error_while_making_a_message_is_a_failure_never_unknown(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = channels.render_text

    def breaks_for_one_patient(source: str, values: dict[str, Any]) -> str:
        if values["first_name"] == "AnaP0002":
            raise RuntimeError("AnaP0002's data broke it")  # its words must not reach Slack
        return real(source, values)

    monkeypatch.setattr(channels, "render_text", breaks_for_one_patient)
    campaign_id, ids = await _send_to_three(
        db, tmp_path, "Hello {{ first_name }}, your check-up is due.")
    await _assert_only_the_second_failed(
        db, tmp_path, campaign_id, ids,
        "the message could not be made (RuntimeError; see the bot's log)",
    )
