"""`campaign-bot audit` (being written)."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """Add this command group's parser(s) to `commands`."""
