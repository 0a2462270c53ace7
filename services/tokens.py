"""Signed tokens for links in messages (unsubscribe, tracking, attachment links).

A token carries ids only, never readable patient data, and an HMAC-SHA256 over them with a
key generated once and kept in the database (so links keep working across restarts and
processes). A forged or altered token does not verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.models import AppSecret

KEY_NAME = "link-signing-key"
_MAC_BYTES = 12  # 96 bits: plenty against forgery, short enough for a link
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


class TokenSigner:
    """Signs and verifies (purpose, integers) tokens with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, purpose: str, *numbers: int) -> str:
        payload = struct.pack(f">{len(numbers)}Q", *numbers)
        return _b64(payload + self._mac(purpose, payload))

    def verify(self, purpose: str, token: str, count: int) -> tuple[int, ...] | None:
        """The numbers in a valid token for `purpose`, or None for anything else.

        Strict: exactly the characters `sign` writes (unpadded URL-safe base64 of the right
        length, canonical in its last character). The lenient decoder would skip stray
        characters, take padding and ignore trailing bits, so many strings would verify as
        one token; one link must have one spelling.
        """
        if not isinstance(token, str) or len(token) != _encoded_length(8 * count + _MAC_BYTES):
            return None
        if not _TOKEN_CHARS.fullmatch(token):
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            return None
        if _b64(raw) != token:  # non-zero unused bits in the last character
            return None
        payload, mac = raw[: 8 * count], raw[8 * count :]
        if not hmac.compare_digest(mac, self._mac(purpose, payload)):
            return None
        return struct.unpack(f">{count}Q", payload)

    def _mac(self, purpose: str, payload: bytes) -> bytes:
        message = purpose.encode() + b"\0" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def _encoded_length(size: int) -> int:
    """Characters of unpadded base64 for `size` bytes."""
    return (size * 8 + 5) // 6


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def load_signer(session: AsyncSession) -> TokenSigner:
    """The signer with the database's key, creating the key on first use."""
    value = (
        await session.execute(select(AppSecret.value).where(AppSecret.name == KEY_NAME))
    ).scalar_one_or_none()
    if value is None:
        candidate = secrets.token_urlsafe(32)
        try:
            async with session.begin_nested():
                session.add(AppSecret(name=KEY_NAME, value=candidate))
            value = candidate
        except IntegrityError:  # another process created it first
            value = (
                await session.execute(select(AppSecret.value).where(AppSecret.name == KEY_NAME))
            ).scalar_one()
    return TokenSigner(value.encode())
