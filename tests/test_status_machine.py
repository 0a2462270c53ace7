"""The campaign status machine: every legal change, a set of illegal ones, and the timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.campaign_status import TERMINAL, TRANSITIONS, can_transition, transition
from services.errors import IllegalTransition
from services.models import Campaign, CampaignStatus, Channel

S = CampaignStatus
T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)

LEGAL = [
    (S.draft, S.scheduled),
    (S.draft, S.sending),
    (S.draft, S.cancelled),
    (S.scheduled, S.scheduled),
    (S.scheduled, S.sending),
    (S.scheduled, S.cancelled),
    (S.scheduled, S.missed),
    (S.sending, S.completed),
    (S.sending, S.failed),
    (S.sending, S.cancelled),
    (S.missed, S.sending),
]
ILLEGAL = [
    (current, to)
    for current in CampaignStatus
    for to in CampaignStatus
    if (current, to) not in LEGAL
]


def campaign(status: CampaignStatus) -> Campaign:
    return Campaign(id=7, status=status, channel=Channel.EMAIL, subject="s", message="m")


def test_the_table_is_exactly_the_documented_machine() -> None:
    assert {(c, t) for c, tos in TRANSITIONS.items() for t in tos} == set(LEGAL)
    assert set(TRANSITIONS) == set(CampaignStatus)
    assert set(TERMINAL) == {S.completed, S.cancelled, S.failed}


@pytest.mark.parametrize(("current", "to"), LEGAL, ids=lambda s: s.value)
def test_every_legal_transition(current: CampaignStatus, to: CampaignStatus) -> None:
    c = campaign(current)
    assert can_transition(current, to)
    assert transition(c, to, reason="why", now=T0) is c
    assert c.status is to
    assert c.status_reason == "why"


@pytest.mark.parametrize(("current", "to"), ILLEGAL, ids=lambda s: s.value)
def test_every_illegal_transition_raises(current: CampaignStatus, to: CampaignStatus) -> None:
    c = campaign(current)
    with pytest.raises(IllegalTransition) as raised:
        transition(c, to, now=T0)
    assert c.status is current  # unchanged
    assert raised.value.campaign_id == 7
    assert str(raised.value) == f"campaign 7 is {current.value}; it cannot become {to.value}"


def test_terminal_statuses_go_nowhere() -> None:
    for status in (S.completed, S.cancelled, S.failed):
        assert not any(can_transition(status, to) for to in CampaignStatus)


def test_sending_stamps_started_at_once_and_finishing_stamps_finished_at() -> None:
    c = campaign(S.scheduled)
    transition(c, S.sending, now=T0)
    assert (c.started_at, c.finished_at) == (T0, None)
    transition(c, S.completed, now=T0 + timedelta(minutes=5))
    assert c.started_at == T0
    assert c.finished_at == T0 + timedelta(minutes=5)


def test_cancelling_a_scheduled_campaign_finishes_it_without_starting_it() -> None:
    c = campaign(S.scheduled)
    transition(c, S.cancelled, reason="cancelled by U1", now=T0)
    assert (c.started_at, c.finished_at, c.status_reason) == (None, T0, "cancelled by U1")


def test_a_missed_campaign_sent_after_all_is_no_longer_finished() -> None:
    c = campaign(S.scheduled)
    transition(c, S.missed, reason="too late", now=T0)
    assert c.finished_at == T0
    transition(c, S.sending, now=T0 + timedelta(hours=3))
    assert c.started_at == T0 + timedelta(hours=3)
    assert c.finished_at is None
    assert c.status_reason is None


def test_rescheduling_keeps_the_status() -> None:
    c = campaign(S.scheduled)
    transition(c, S.scheduled, now=T0)
    assert (c.status, c.started_at, c.finished_at) == (S.scheduled, None, None)
