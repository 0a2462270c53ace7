"""The limits a campaign is validated against (from settings, passed down)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class CampaignLimits:
    max_audience: int = 500
    attachment_max_bytes: int = 5 * 1024 * 1024
