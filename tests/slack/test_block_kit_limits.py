"""The views and messages stay inside Slack's Block Kit limits at their extremes."""

from __future__ import annotations

from datetime import UTC, datetime

from modals.audience import audience_view, table_view
from modals.campaign_form import FormValues, confirm_view, form_view
from modals.common import Metadata
from modals.messages import HELP, home_view, list_message
from services.lazy_table import PatientRow
from services.models import Campaign, CampaignStatus, Channel
from services.segments import SegmentSummary
from tests.fakes.block_kit import block_kit_errors

LONG = "Pacientes con estudio de resonancia magnética en los últimos treinta días " * 3
CURSOR = "A" * 600


def test_extreme_views_pass_slacks_checks() -> None:
    metadata = Metadata(draft="0" * 36, channel="C0", query="x" * 100, page_after=CURSOR,
                        next=CURSOR, previous=CURSOR)
    many = [SegmentSummary(f"tag:{n}", LONG, "", 10**6) for n in range(150)]
    assert block_kit_errors(audience_view(metadata, many, max_audience=500,
                                          selected_count=12), kind="modal") == []
    rows = [PatientRow(n, "X" * 100, LONG, LONG, "a" * 200 + "@example.com", "+5255")
            for n in range(10)]
    assert block_kit_errors(table_view(metadata, rows, set(range(600)), max_audience=500,
                                       has_previous=True, has_next=True), kind="modal") == []
    values = FormValues(subject=LONG[:200], preview_text=LONG[:150], message=LONG * 30,
                        channel="EMAIL_SMS", when="schedule", send_at=2_000_000_000,
                        tags="a," * 40)
    assert block_kit_errors(form_view(metadata, audience_text=LONG, user_tz="America/Mexico_City",
                                      values=values, banner=LONG * 10), kind="modal") == []
    assert block_kit_errors(confirm_view(metadata, values=values, audience_text=LONG,
                                         user_tz=None, attachment_name=LONG),
                            kind="modal") == []


def test_extreme_messages_pass_slacks_checks() -> None:
    campaigns = [Campaign(id=n, status=CampaignStatus.scheduled if n % 2 else
                          CampaignStatus.completed, channel=Channel.EMAIL, subject=LONG[:200],
                          audience_size=500, send_now=False, created_by="U0",
                          send_at=datetime(2030, 1, 1, tzinfo=UTC)) for n in range(60)]
    text, blocks = list_message(campaigns)
    assert block_kit_errors({"text": text, "blocks": blocks}, kind="message") == []
    assert block_kit_errors(home_view(campaigns, allowed=True), kind="home") == []
    assert block_kit_errors({"text": HELP}, kind="message") == []
