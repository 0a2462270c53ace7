"""The campaign's status machine: the one table of allowed changes, and the one way to make them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from services.errors import IllegalTransition
from services.models import Campaign, CampaignStatus, utcnow

S = CampaignStatus

# Every status a campaign may move to from each status. A status missing from a row is
# illegal from there; an empty row is terminal.
TRANSITIONS: Mapping[CampaignStatus, frozenset[CampaignStatus]] = {
    S.draft: frozenset({S.scheduled, S.sending, S.cancelled}),
    S.scheduled: frozenset({S.scheduled, S.sending, S.cancelled, S.missed}),
    S.sending: frozenset({S.completed, S.failed, S.cancelled}),
    # Only an operator's explicit "send now" revives a campaign that missed its time.
    S.missed: frozenset({S.sending}),
    S.completed: frozenset(),
    S.cancelled: frozenset(),
    S.failed: frozenset(),
}

TERMINAL: frozenset[CampaignStatus] = frozenset(s for s, to in TRANSITIONS.items() if not to)


def can_transition(current: CampaignStatus, to: CampaignStatus) -> bool:
    return to in TRANSITIONS[CampaignStatus(current)]


def transition(
    campaign: Campaign,
    to: CampaignStatus,
    *,
    reason: str | None = None,
    now: datetime | None = None,
) -> Campaign:
    """Move `campaign` to `to` or raise IllegalTransition; stamps started_at / finished_at.

    `started_at` is set on the first move to `sending`; `finished_at` when the campaign ends
    (completed, failed, cancelled, or missed: the sender's view, shared with the ledger).
    """
    current = CampaignStatus(campaign.status)
    to = CampaignStatus(to)
    if not can_transition(current, to):
        raise IllegalTransition(campaign.id, current.value, to.value)
    now = now or utcnow()
    campaign.status = to
    campaign.status_reason = reason
    if to is S.sending:
        campaign.started_at = campaign.started_at or now
        campaign.finished_at = None  # a missed campaign sent after all is no longer over
    elif to in TERMINAL or to is S.missed:
        campaign.finished_at = now
    return campaign
