"""The bytes SMTP DATA carries: CRLF lines, dot-stuffing, and chunks checked once per campaign.

A message may be given as bytes or as a sequence of chunks that join to it
(`CampaignMail.render_chunks`): the patient's part, then the campaign's attachment as a
`WireChunk`, checked once when the campaign began, so that each message costs a scan of its
few personal kilobytes rather than of the whole (up to 7 MB) message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.utils import parseaddr

Message = bytes | Sequence[bytes]  # the bytes, or chunks that join to them (render_chunks)
_LONE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_BARE_ADDRESS = re.compile(r"[^\x00-\x20\x7f<>()\[\],;:\"\\@]+@[^\x00-\x20\x7f<>()\[\],;:\"\\@]+")


def is_wire_ready(data: bytes) -> bool:
    """True when SMTP DATA can carry `data` as is: 7-bit, CRLF line ends only, ending in CRLF,
    and no line starting with "." (nothing to normalise, nothing to dot-stuff)."""
    pairs = data.count(b"\r\n")
    return (
        data.endswith(b"\r\n") and not data.startswith(b".") and b"\n." not in data
        and data.isascii() and data.count(b"\r") == pairs and data.count(b"\n") == pairs
    )


class WireChunk(bytes):
    """Bytes checked once, when made, to be `is_wire_ready`; senders need not scan them again."""

    def __new__(cls, data: bytes) -> WireChunk:
        if not is_wire_ready(data):
            raise ValueError("not SMTP-ready: needs 7-bit CRLF lines, none starting with '.'")
        return super().__new__(cls, data)


def smtp_payload(message: bytes) -> bytes:
    """The message as DATA carries it, without the final ".": CRLF lines, leading dots doubled."""
    # Three C-speed counts instead of a regex pass over every (possibly 7 MB) message.
    pairs = message.count(b"\r\n")
    if message.count(b"\r") != pairs or message.count(b"\n") != pairs:
        message = _LONE_CR_OR_LF.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    if b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
    return message


def wire_chunks(message: Message) -> list[bytes]:
    """`smtp_payload` chunk by chunk, skipping `WireChunk`s (already checked), when it is safe."""
    chunks = [message] if isinstance(message, bytes) else list(message)
    if all(chunk.endswith(b"\r\n") for chunk in chunks):  # each chunk starts a line
        return [c if type(c) is WireChunk else smtp_payload(c) for c in chunks]
    return [smtp_payload(b"".join(chunks))]


def bare_address(address: str) -> str:
    """The address for MAIL FROM / RCPT TO: a display name is dropped, line breaks refused."""
    if not _BARE_ADDRESS.fullmatch(address):
        parsed = parseaddr(address)[1] if address.isprintable() else ""
        if not _BARE_ADDRESS.fullmatch(parsed):
            raise ValueError(f"not an email address: {address!r}")
        address = parsed
    return address
