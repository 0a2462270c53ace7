"""The limits a campaign is validated against (from settings, passed down)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class CampaignLimits:
    max_audience: int = 500
    attachment_max_bytes: int = 5 * 1024 * 1024
    # Every marketing SMS ends with it, so it counts against the SMS length limit.
    sms_opt_out_text: str = "Reply STOP to opt out"
