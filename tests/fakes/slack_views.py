"""The views half of the Slack stand-in: trigger ids, modal stacks, hashes and App Homes.

Store operations raise LookupError(<Slack error>) for the fake to answer `ok: false`.
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import dataclass
from typing import Any

TEAM_ID, APP_ID, BOT_ID, BOT_USER_ID = "T0CLINIC", "A0CAMPAIGN", "B0CAMPAIGN", "U0CAMPAIGN"
DEFAULT_USER = "U0TESTER"  # pre-registered user, SlackRequests' default sender
MAX_STACK = 3  # Slack keeps at most three views in a modal stack


@dataclass
class Trigger:
    issued: float
    view_id: str | None
    used: bool = False


def _new_id(prefix: str, size: int = 10) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(size))


def _new_hash() -> str:
    return f"{time.time():.6f}.{secrets.token_hex(4)}"


def _with_ids(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Slack fills in a random block_id / action_id wherever the app left one out."""
    blocks = copy.deepcopy(blocks)
    for block in blocks:
        block.setdefault("block_id", secrets.token_urlsafe(3))
        elements = list(block.get("elements") or []) if block.get("type") == "actions" else []
        elements += [block[k] for k in ("element", "accessory") if isinstance(block.get(k), dict)]
        for element in elements:
            if element.get("type") not in ("image", None):
                element.setdefault("action_id", secrets.token_urlsafe(4))
    return blocks


class ViewStore:
    """Views by id as Slack keeps them, with their stacks (modals) or owner (home tabs)."""

    def __init__(self) -> None:
        self.views: dict[str, dict[str, Any]] = {}
        self.latest = ""
        self._triggers: dict[str, Trigger] = {}
        self._stacks: dict[str, list[str]] = {}  # root view id → stack, root first
        self._homes: dict[str, str] = {}  # user id → view id
        self._closed: set[str] = set()

    # -- triggers -------------------------------------------------------------------------

    def new_trigger(self, view_id: str | None, now: float) -> str:
        trigger = f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"
        self._triggers[trigger] = Trigger(now, view_id)
        return trigger

    def use_trigger(self, trigger_id: str, now: float, ttl: float | None) -> str | None:
        """Exchange a trigger id once; Slack's error name when that is not possible."""
        trigger = self._triggers.get(trigger_id)
        if trigger is None:
            return "invalid_trigger_id"
        if trigger.used:
            return "exchanged_trigger_id"
        if ttl is not None and now - trigger.issued > ttl:
            return "expired_trigger_id"
        trigger.used = True
        return None

    def trigger_view(self, trigger_id: str) -> str | None:
        trigger = self._triggers.get(trigger_id)
        return trigger.view_id if trigger else None

    # -- modals ---------------------------------------------------------------------------

    def _build(self, view: dict[str, Any], view_id: str, root: str, previous: str | None,
               state: dict[str, Any] | None = None) -> dict[str, Any]:
        built = {
            "id": view_id, "team_id": TEAM_ID, "type": view["type"],
            "blocks": _with_ids(view.get("blocks", [])),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": state or {}}, "hash": _new_hash(),
            "title": view.get("title"), "clear_on_close": bool(view.get("clear_on_close")),
            "notify_on_close": bool(view.get("notify_on_close")),
            "close": view.get("close"), "submit": view.get("submit"),
            "previous_view_id": previous, "root_view_id": root, "app_id": APP_ID,
            "external_id": view.get("external_id", ""), "app_installed_team_id": TEAM_ID,
            "bot_id": BOT_ID,
        }
        self.views[view_id] = built
        self.latest = view_id
        return built

    def _check_external_id(self, view: dict[str, Any], view_id: str | None = None) -> None:
        external_id = view.get("external_id")
        if external_id and any(
            v["external_id"] == external_id and v["id"] != view_id for v in self.views.values()
        ):
            raise LookupError("duplicate_external_id")

    def open(self, view: dict[str, Any]) -> dict[str, Any]:
        self._check_external_id(view)
        view_id = _new_id("V")
        self._stacks[view_id] = [view_id]
        return self._build(view, view_id, view_id, None)

    def push(self, origin: str, view: dict[str, Any]) -> dict[str, Any]:
        if origin not in self.views or origin in self._closed:
            raise LookupError("not_found")
        self._check_external_id(view)
        root = self.views[origin]["root_view_id"]
        stack = self._stacks[root]
        if len(stack) >= MAX_STACK:
            raise LookupError("push_limit_reached")
        view_id = _new_id("V")
        stack.append(view_id)
        return self._build(view, view_id, root, stack[-2])

    def update(self, view_id: str, view: dict[str, Any], hash_: Any = None) -> dict[str, Any]:
        current = self.views.get(view_id)
        if current is None or view_id in self._closed:
            raise LookupError("not_found")
        if hash_ and hash_ != current["hash"]:
            raise LookupError("hash_conflict")
        if view.get("type") != current["type"]:
            raise LookupError("invalid_arguments")
        self._check_external_id(view, view_id)
        # Slack keeps what the user typed into inputs whose block_id/action_id survive.
        blocks = {b.get("block_id") for b in view.get("blocks", [])}
        state = {k: v for k, v in current["state"]["values"].items() if k in blocks}
        return self._build(view, view_id, current["root_view_id"],
                           current["previous_view_id"], state)

    def close(self, view_id: str, *, all_views: bool) -> None:
        """The user closed (or the app cleared) a modal: it leaves the stack."""
        view = self.views.get(view_id)
        if view is None or view["type"] != "modal":
            return
        stack = self._stacks.get(view["root_view_id"], [])
        gone = list(stack) if all_views else [view_id]
        for closed in gone:
            self._closed.add(closed)
            if closed in stack:
                stack.remove(closed)

    def stack(self, view_id: str) -> list[dict[str, Any]]:
        root = self.views[view_id]["root_view_id"]
        return [self.views[v] for v in self._stacks.get(root, [])]

    def is_open(self, view_id: str) -> bool:
        return view_id in self.views and view_id not in self._closed

    def latest_modal(self) -> str | None:
        for view_id in reversed(list(self.views)):
            if self.views[view_id]["type"] == "modal" and view_id not in self._closed:
                return view_id
        return None

    def by_external_id(self, external_id: Any) -> str | None:
        for view in self.views.values():
            if external_id and view["external_id"] == external_id:
                return str(view["id"])
        return None

    # -- App Home -------------------------------------------------------------------------

    def publish(self, user_id: str, view: dict[str, Any], hash_: Any = None) -> dict[str, Any]:
        view_id = self._homes.get(user_id)
        if view_id and hash_ and hash_ != self.views[view_id]["hash"]:
            raise LookupError("hash_conflict")
        view_id = view_id or _new_id("V")
        self._homes[user_id] = view_id
        return self._build(view, view_id, view_id, None)

    def home(self, user_id: str) -> dict[str, Any] | None:
        view_id = self._homes.get(user_id)
        return self.views[view_id] if view_id else None
