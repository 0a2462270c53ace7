"""Small Block Kit pieces shared by every view and message (pure, no I/O)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

TITLE_MAX = 24
OPTION_TEXT_MAX = 75
METADATA_MAX = 3000
SECTION_TEXT_MAX = 3000
_FORMATTING = re.compile(r"[*_~`]")
_ZWSP = "\u200b"

Block = dict[str, Any]
View = dict[str, Any]


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with an ellipsis when it was longer."""
    text = " ".join(str(text).split()) if limit <= OPTION_TEXT_MAX else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain(text: str, limit: int = 3000) -> dict[str, Any]:
    return {"type": "plain_text", "text": clip(text, limit) or " ", "emoji": True}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": clip(text, SECTION_TEXT_MAX) or " "}


def section(text: str, **extra: Any) -> Block:
    return {"type": "section", "text": mrkdwn(text), **extra}


def context(text: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(text)]}


def button(text: str, action_id: str, value: str = "", style: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "button", "text": plain(text, 75), "action_id": action_id}
    if value:
        element["value"] = value
    if style:
        element["style"] = style
    return element


def option(text: str, value: str, description: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"text": plain(text, OPTION_TEXT_MAX), "value": value}
    if description:
        item["description"] = plain(description, OPTION_TEXT_MAX)
    return item


def escape(text: object) -> str:
    """User- or patient-supplied text made inert wherever Slack reads mrkdwn (SPEC §7).

    The one helper for subjects, tags, file names, segment names, provider reasons…, in a
    message's `text`, in blocks and in fallbacks. `&`, `<` and `>` become entities, so
    `<!channel>`, `<@U…>` and `<https://evil|clinic>` cannot ping or link. Slack has no
    escape for `*`, `_`, `~` and backtick; a zero-width space on each side makes them
    stand alone (Slack formats only a character touching the word it wraps), so the reader
    sees the characters typed and no bold, italics, strike or code.
    """
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _FORMATTING.sub(_ZWSP + r"\g<0>" + _ZWSP, text)


def modal(
    callback_id: str, title: str, blocks: list[Block], *, submit: str | None = None,
    close: str = "Cancel", metadata: str = "", notify_on_close: bool = False,
) -> View:
    view: View = {
        "type": "modal",
        "callback_id": callback_id,
        "title": plain(title, TITLE_MAX),
        "close": plain(close, TITLE_MAX),
        "blocks": blocks,
        "private_metadata": metadata,
    }
    if submit:
        view["submit"] = plain(submit, TITLE_MAX)
    if notify_on_close:
        view["notify_on_close"] = True
    return view


@dataclass
class Metadata:
    """What a modal carries in private_metadata: the draft's id, the channel, table paging."""

    draft: str
    channel: str | None = None
    query: str = ""
    page_after: str | None = None  # the cursor the shown page was read after…
    page_before: str | None = None  # …or before (both None: the first page)
    next: str | None = None
    previous: str | None = None

    def encode(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v not in (None, "")}
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if len(text) > METADATA_MAX:  # a huge query: drop the paging, keep the draft
            text = json.dumps({"draft": self.draft, "channel": self.channel})
        return text

    @classmethod
    def decode(cls, text: str | None) -> Metadata:
        """The metadata of one of our views; ValueError for anything else."""
        data = json.loads(text or "")
        if not isinstance(data, dict) or not isinstance(data.get("draft"), str):
            raise ValueError("not a campaign draft's metadata")
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key, value in fields.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"bad metadata field {key}")
        return cls(**fields)
