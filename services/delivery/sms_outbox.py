"""SMS_BACKEND=file: SMS written to OUTBOX_DIR/sms.jsonl instead of being sent (as
email_outbox.py does for email)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from services.delivery.outcomes import Outcome, SendResult
from services.delivery.sms_sender import Check, status_callback_url
from services.delivery.sms_text import check_length
from services.private_files import private_folder


class FileSmsSender:
    """SMS_BACKEND=file: one JSON object per line in OUTBOX_DIR/sms.jsonl; nothing is sent.

    Every line is written with one O_APPEND write (lines from several processes never
    interleave) and fsync'd before `send` returns: SENT means it is on disk, as it means
    "accepted" for Twilio. At SMS rates an fsync per message costs little.
    """

    def __init__(
        self,
        outbox_dir: Path | str,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        public_base_url: str | None = None,
    ) -> None:
        self.path = Path(outbox_dir) / "sms.jsonl"
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback = status_callback_url(public_base_url)
        self._lock = threading.Lock()
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            private_folder(self.path.parent)  # 0700 when created here, whatever the umask
            # Patient phone numbers and messages: readable by the bot's user only.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    def _append(self, line: bytes) -> None:
        with self._lock:
            fd = self._open()
            if os.write(fd, line) != len(line):
                raise OSError(f"short write to {self.path}")
            os.fsync(fd)

    can_ask = False

    async def find_sent(self, *, to: str, body: str, since: datetime) -> SendResult | None:
        """The outbox cannot be asked (a failed write leaves `unknown`)."""
        return SendResult(Outcome.UNKNOWN, reason="the SMS outbox cannot be asked")

    async def send(self, *, to: str, body: str) -> SendResult:
        """Append the SMS to the outbox file; SENT with an `SMfile…` id."""
        too_long = check_length(body)
        if too_long:
            return SendResult(Outcome.FAILED, reason=too_long, error_code="21617")
        sid = "SMfile" + secrets.token_hex(14)
        record = {
            "sid": sid, "to": to, "from": self.from_number,
            "messaging_service_sid": self.messaging_service_sid, "body": body,
            "status_callback": self.status_callback, "created_at": datetime.now(UTC).isoformat(),
        }
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            if self._fd is None:  # could not even open the file: nothing will get through
                return SendResult(Outcome.CHANNEL_DOWN, reason=f"cannot write {self.path}: {exc}")
            return SendResult(Outcome.UNKNOWN, reason=f"writing {self.path} failed: {exc}")
        return SendResult.sent(sid)

    async def check(self) -> list[Check]:
        """Whether the outbox file can be written."""
        try:
            await asyncio.to_thread(self._open)
        except OSError as exc:
            return [(False, f"SMS: cannot write {self.path} ({exc}); check OUTBOX_DIR")]
        return [(True, f"SMS: file backend, messages are written to {self.path}, not sent")]

    def _close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    async def close(self) -> None:
        """Close the outbox file."""
        await asyncio.to_thread(self._close)
