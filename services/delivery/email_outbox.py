"""The `file` email backend (EMAIL_BACKEND=file): one `.eml` file per message in OUTBOX_DIR."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from services.delivery.outcomes import Outcome, SendResult
from services.private_files import open_new_private, private_folder

_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._@+=-]")


class FileEmailSender:
    """Writes each message to `outbox_dir` as `<Message-ID>.eml` (EMAIL_BACKEND=file)."""

    def __init__(self, outbox_dir: Path | str) -> None:
        self.outbox_dir = Path(outbox_dir)

    def path_for(self, message_id: str) -> Path:
        """Where the message with this Message-ID is written."""
        name = _UNSAFE_FILE_CHARS.sub("_", message_id.strip().strip("<>")).lstrip(".")
        return self.outbox_dir / f"{name[:200] or secrets.token_hex(8)}.eml"

    async def send(
        self, *, sender: str, recipient: str, message: bytes | Sequence[bytes], message_id: str
    ) -> SendResult:
        """Write the message atomically (temp file, fsync, rename) off the event loop."""
        path = self.path_for(message_id)
        try:
            data = message if isinstance(message, bytes) else b"".join(message)
            await asyncio.to_thread(self._write, path, data)
        except OSError as exc:
            return SendResult(Outcome.CHANNEL_DOWN, reason=(
                f"could not write {path} ({exc.strerror or exc}): check OUTBOX_DIR"))
        return SendResult.sent(message_id)

    @staticmethod
    def _write(path: Path, message: bytes) -> None:
        # Patient addresses and messages: the folder 0700, each file 0600 (the rename
        # keeps the temporary file's mode), whatever the umask.
        private_folder(path.parent)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with os.fdopen(open_new_private(temporary), "wb") as file:
                file.write(message)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    async def check(self) -> list[tuple[bool, str]]:
        """For `campaign-bot check`: the outbox exists and is writable."""
        probe = self.path_for(f"check-{secrets.token_hex(4)}")
        try:
            await asyncio.to_thread(self._write, probe, b"")
            probe.unlink()
        except OSError as exc:
            return [(False, f"Email: cannot write to OUTBOX_DIR={self.outbox_dir} "
                            f"({exc.strerror or exc}): create it or fix its permissions")]
        return [(True, f"Email: EMAIL_BACKEND=file: .eml files go to {self.outbox_dir.resolve()}")]

    async def close(self) -> None:
        """Nothing to release."""
