"""What a sender reports for one message, in the ledger's terms (SPEC §3).

Senders classify provider errors here, once; the engine only reads the outcome:
- SENT: the provider accepted it (provider_id set).
- RETRY: it certainly did not send (SMTP 4xx, connection refused, Twilio 429): try again later
  (for up to RETRY_FOR). `unreachable` says the provider itself could not be reached, so the
  engine pauses the channel instead of trying every waiting message.
- FAILED: permanent for this recipient (SMTP 5xx, Twilio 21211/21610/21614, …).
- CHANNEL_DOWN: nothing will get through on this channel (SMTP login or Twilio credentials
  rejected): the engine fails the channel's remaining deliveries with this reason.
- UNKNOWN: it may or may not have been sent (a timeout after the data was handed over, a
  Twilio 5xx): never re-sent blindly. Where the provider can be asked (Twilio's Messages
  list) the engine asks it before anything else; otherwise the delivery ends `unknown`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

# The ledger's error_code for deliveries waiting for an unreachable provider to answer.
UNREACHABLE = "unreachable"


class Outcome(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    CHANNEL_DOWN = "channel_down"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    provider_id: str | None = None
    reason: str | None = None  # the provider's words, for the snapshot and the operator
    error_code: str | None = None  # e.g. "550", "21610"
    retry_after: float | None = None  # seconds, when the provider said
    opted_out: bool = False  # the provider says the recipient opted out (Twilio 21610)
    unreachable: bool = False  # RETRY because the provider could not be reached at all

    @classmethod
    def sent(cls, provider_id: str) -> SendResult:
        return cls(Outcome.SENT, provider_id=provider_id)


class ChannelGate:
    """Remembers that a provider refused the channel itself (a rejected login), so that the
    sends already queued behind the first one fail at once instead of each trying again.
    It reopens after `hold` seconds: the operator may have fixed the account meanwhile."""

    def __init__(self, hold: float = 60.0) -> None:
        self.hold = hold
        self._refusal: SendResult | None = None
        self._until = 0.0

    def refusal(self) -> SendResult | None:
        """The refusal to answer with while the gate is shut, else None."""
        if self._refusal is not None and time.monotonic() < self._until:
            return self._refusal
        return None

    def note(self, result: SendResult) -> SendResult:
        """Shut the gate if `result` says the channel is down; return `result`."""
        if result.outcome is Outcome.CHANNEL_DOWN:
            self._refusal, self._until = result, time.monotonic() + self.hold
        return result
