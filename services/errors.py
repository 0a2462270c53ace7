"""Typed errors the services raise; the Slack error handler and the CLI map them to messages."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class CampaignBotError(Exception):
    """Base class: an error whose message a user can act on."""


class ValidationFailed(CampaignBotError):
    """Every field error at once, keyed by field (`subject`, `message`, `audience`, …)."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in self.errors.items()))


class ConfigFileError(CampaignBotError):
    """A clinic's file (segments, rules) that cannot be used: the file, the line, the reason."""

    def __init__(self, path: Path | str, line: int | None, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{path}, line {line}" if line else str(path)
        super().__init__(f"{where}: {reason}")


class PermissionDenied(CampaignBotError):
    def __init__(self, needed: str, action: str) -> None:
        self.needed = needed
        self.action = action
        super().__init__(f"you need {needed} access to {action}; ask a campaign-bot admin")


class NotFound(CampaignBotError):
    def __init__(self, what: str, key: object) -> None:
        self.what = what
        self.key = key
        super().__init__(f"{what} {key} was not found")


class IllegalTransition(CampaignBotError):
    """A status change the campaign's status machine does not allow."""

    def __init__(self, campaign_id: int | None, current: str, wanted: str) -> None:
        self.campaign_id = campaign_id
        self.current = current
        self.wanted = wanted
        label = f"campaign {campaign_id}" if campaign_id is not None else "the campaign"
        super().__init__(f"{label} is {current}; it cannot become {wanted}")
