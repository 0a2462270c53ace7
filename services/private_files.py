"""Files and folders that hold patient data, readable by the bot's own user only (SPEC §7).

The SQLite database (patients, the link-signing key, the audit log) and the file backends'
outbox (.eml files, sms.jsonl) are created 0600 / 0700 whatever the process umask: the
mode is set explicitly after creation, since a umask can only remove bits and a service
manager's umask is often 022. Files and folders that already exist are left as they are
(the operator may have chosen their mode).
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def private_folder(path: Path) -> Path:
    """`path` as a folder (parents as usual); made 0700 when this call creates it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, FOLDER_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return path
    os.chmod(path, FOLDER_MODE)  # the umask may have taken bits mkdir's mode asked for
    return path


def open_new_private(path: Path) -> int:
    """A new file opened for writing (O_EXCL: never someone else's), mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (then it is left untouched)."""
    try:
        fd = open_new_private(path)
    except FileExistsError:
        return
    os.close(fd)
