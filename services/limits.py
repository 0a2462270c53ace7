"""The limits a campaign is validated against (from settings, passed down), and the fixed ones."""

from dataclasses import dataclass

MESSAGE_MAX = 50_000  # characters a marketer may type in the message
# What a personalised template may grow to: the whole message, or any text it makes on the way
# (SPEC §7: "a few times MESSAGE_MAX"). Checked at validation and again at every send.
TEMPLATE_TEXT_MAX = 4 * MESSAGE_MAX


@dataclass(frozen=True)
class CampaignLimits:
    max_audience: int = 500
    attachment_max_bytes: int = 5 * 1024 * 1024
    # Every marketing SMS ends with it, so it counts against the SMS length limit.
    sms_opt_out_text: str = "Reply STOP to opt out"
