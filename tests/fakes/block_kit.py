"""Block Kit limits as Slack enforces them, as a pure function (used by the Slack stand-in).

    block_kit_errors(view, kind="modal")     # views.open / push / update
    block_kit_errors(view, kind="home")      # views.publish
    block_kit_errors({"text": t, "blocks": b}, kind="message")

Each error reads like the lines of Slack's `response_metadata.messages`:
`[ERROR] must be less than 25 characters [json-pointer:/view/title/text]`. Views are checked
under `/view`, messages at the root (`/blocks/0/...`), as Slack reports them. The limits are
Slack's published ones; the wording is Slack's where known, close to it elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

Kind = Literal["modal", "home", "message"]

BLOCK_TYPES = frozenset(
    {"section", "divider", "image", "actions", "context", "input", "header", "rich_text", "file"}
)
ELEMENT_TYPES = frozenset(
    {
        "button", "static_select", "external_select", "users_select", "conversations_select",
        "channels_select", "multi_static_select", "multi_external_select", "multi_users_select",
        "multi_conversations_select", "multi_channels_select", "overflow", "datepicker",
        "timepicker", "datetimepicker", "plain_text_input", "radio_buttons", "checkboxes",
        "file_input", "email_text_input", "number_input", "url_text_input", "image",
    }
)
# Elements that only make sense inside an input block (Slack rejects them elsewhere).
INPUT_ONLY = frozenset(
    {"plain_text_input", "file_input", "email_text_input", "number_input", "url_text_input"}
)
NOT_IN_INPUT = frozenset({"button", "overflow", "image"})
OPTION_LIMITS = {
    "static_select": 100, "multi_static_select": 100, "radio_buttons": 10,
    "checkboxes": 10, "overflow": 5,
}
MAX_BLOCKS = {"modal": 100, "home": 100, "message": 50}


def block_kit_errors(payload: dict[str, Any], kind: Kind = "modal") -> list[str]:
    """Every Block Kit violation in a view (modal/home) or a message, as Slack words them."""
    checker = _Checker()
    if kind == "message":
        checker.message(payload)
    else:
        checker.view(payload, kind)
    return checker.errors


def option_list_errors(body: dict[str, Any]) -> list[str]:
    """Violations in an options-load (block_suggestion) answer: ≤ 100 options or groups."""
    checker = _Checker()
    if "option_groups" in body:
        checker.option_groups(body["option_groups"], "/option_groups", 100)
    else:
        checker.options(body.get("options"), "/options", 100, plain_only=True)
    return checker.errors


class _Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, message: str, pointer: str) -> None:
        self.errors.append(f"[ERROR] {message} [json-pointer:{pointer}]")

    # -- primitives ---------------------------------------------------------------------

    def string(self, value: Any, pointer: str, max_len: int, *, required: bool = True) -> None:
        if value is None:
            if required:
                self.error("must provide a string", pointer)
            return
        if not isinstance(value, str):
            self.error("must provide a string", pointer)
        elif len(value) > max_len:
            self.error(f"must be less than {max_len + 1} characters", pointer)
        elif required and not value:
            self.error("must be more than 0 characters", pointer)

    def text(
        self, obj: Any, pointer: str, max_len: int, *, plain_only: bool = False,
        required: bool = True,
    ) -> None:
        """A text object: {"type": "plain_text" | "mrkdwn", "text": ...}."""
        if obj is None:
            if required:
                self.error("must provide an object", pointer)
            return
        if not isinstance(obj, dict):
            self.error("must provide an object", pointer)
            return
        allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
        if obj.get("type") not in allowed:
            self.error("must be a valid enum value", f"{pointer}/type")
        self.string(obj.get("text"), f"{pointer}/text", max_len)

    def id_field(self, obj: dict[str, Any], key: str, pointer: str) -> None:
        if key in obj:
            self.string(obj[key], f"{pointer}/{key}", 255)

    def array(self, value: Any, pointer: str, max_items: int, *, min_items: int = 1) -> list[Any]:
        if not isinstance(value, list):
            self.error("must provide an array", pointer)
            return []
        if len(value) > max_items:
            self.error(f"no more than {max_items} items allowed", pointer)
        elif len(value) < min_items:
            self.error(f"must provide at least {min_items} items", pointer)
        return value

    # -- views and messages ---------------------------------------------------------------

    def view(self, view: Any, kind: Kind) -> None:
        root = "/view"
        if not isinstance(view, dict):
            self.error("must provide an object", root)
            return
        if view.get("type") != kind:
            self.error("must be a valid enum value", f"{root}/type")
        if kind == "modal" or "title" in view:
            self.text(view.get("title"), f"{root}/title", 24, plain_only=True)
        for key in ("submit", "close"):
            if key in view:
                self.text(view[key], f"{root}/{key}", 24, plain_only=True)
        if "private_metadata" in view:
            self.string(view["private_metadata"], f"{root}/private_metadata", 3000,
                        required=False)
        for key in ("callback_id", "external_id"):
            if key in view:
                self.string(view[key], f"{root}/{key}", 255, required=False)
        blocks = self.blocks(view.get("blocks"), f"{root}/blocks", MAX_BLOCKS[kind], kind)
        if kind == "modal" and "submit" not in view and any(
            isinstance(b, dict) and b.get("type") == "input" for b in blocks
        ):
            self.error("submit is required when an input block is present", root)

    def message(self, message: Any) -> None:
        if not isinstance(message, dict):
            self.error("must provide an object", "")
            return
        text = message.get("text")
        if text is not None:
            self.string(text, "/text", 40000, required=False)
        if message.get("blocks") is not None:
            self.blocks(message["blocks"], "/blocks", MAX_BLOCKS["message"], "message")

    def blocks(self, blocks: Any, pointer: str, max_items: int, kind: Kind) -> list[Any]:
        items = self.array(blocks, pointer, max_items, min_items=0)
        seen: set[str] = set()
        for index, block in enumerate(items):
            at = f"{pointer}/{index}"
            if not isinstance(block, dict):
                self.error("must provide an object", at)
                continue
            block_id = block.get("block_id")
            if isinstance(block_id, str):
                if block_id in seen:
                    self.error(f"duplicate block_id: {block_id}", f"{at}/block_id")
                seen.add(block_id)
            self.block(block, at, kind)
        return items

    def block(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        block_type = block.get("type")
        if block_type not in BLOCK_TYPES:
            self.error(f"unsupported type: {block_type}", f"{at}/type")
            return
        self.id_field(block, "block_id", at)
        check: Callable[[dict[str, Any], str, Kind], None] = getattr(self, f"_{block_type}")
        check(block, at, kind)

    # -- blocks -------------------------------------------------------------------------

    def _section(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        if "text" not in block and "fields" not in block:
            self.error("must provide either text or fields", at)
        if "text" in block:
            self.text(block["text"], f"{at}/text", 3000)
        if "fields" in block:
            for i, field in enumerate(self.array(block["fields"], f"{at}/fields", 10)):
                self.text(field, f"{at}/fields/{i}", 2000)
        if "accessory" in block:
            self.element(block["accessory"], f"{at}/accessory", where="section")

    def _divider(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        return None

    def _image(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        self.image_source(block, at)
        if "title" in block:
            self.text(block["title"], f"{at}/title", 2000, plain_only=True)

    def image_source(self, obj: dict[str, Any], at: str) -> None:
        if "slack_file" not in obj:
            self.string(obj.get("image_url"), f"{at}/image_url", 3000)
        self.string(obj.get("alt_text"), f"{at}/alt_text", 2000)

    def _actions(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        elements = self.array(block.get("elements"), f"{at}/elements", 25)
        self.unique_action_ids(elements, f"{at}/elements")
        for i, element in enumerate(elements):
            self.element(element, f"{at}/elements/{i}", where="actions")

    def _context(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        for i, element in enumerate(self.array(block.get("elements"), f"{at}/elements", 10)):
            pointer = f"{at}/elements/{i}"
            if isinstance(element, dict) and element.get("type") == "image":
                self.image_source(element, pointer)
            else:
                self.text(element, pointer, 3000)

    def _input(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        if "label" not in block:
            self.error("missing required field: label", at)
        else:
            self.text(block["label"], f"{at}/label", 2000, plain_only=True)
        if "hint" in block:
            self.text(block["hint"], f"{at}/hint", 2000, plain_only=True)
        if "element" not in block:
            self.error("missing required field: element", at)
        else:
            self.element(block["element"], f"{at}/element", where="input")
            element = block["element"]
            is_file = isinstance(element, dict) and element.get("type") == "file_input"
            if kind != "modal" and is_file:
                self.error("file_input is only allowed in modals", f"{at}/element")

    def _header(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        self.text(block.get("text"), f"{at}/text", 150, plain_only=True)

    def _rich_text(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        self.array(block.get("elements"), f"{at}/elements", 100, min_items=0)

    def _file(self, block: dict[str, Any], at: str, kind: Kind) -> None:
        self.string(block.get("external_id"), f"{at}/external_id", 255)
        if block.get("source") != "remote":
            self.error("must be a valid enum value", f"{at}/source")

    # -- elements -----------------------------------------------------------------------

    def unique_action_ids(self, elements: Iterable[Any], pointer: str) -> None:
        seen: set[str] = set()
        for i, element in enumerate(elements):
            action_id = element.get("action_id") if isinstance(element, dict) else None
            if isinstance(action_id, str):
                if action_id in seen:
                    self.error(f"duplicate action_id: {action_id}", f"{pointer}/{i}/action_id")
                seen.add(action_id)

    def element(self, element: Any, at: str, *, where: str) -> None:
        if not isinstance(element, dict):
            self.error("must provide an object", at)
            return
        element_type = element.get("type")
        if element_type not in ELEMENT_TYPES:
            self.error(f"unsupported type: {element_type}", f"{at}/type")
            return
        if (where == "input" and element_type in NOT_IN_INPUT) or (
            where != "input" and element_type in INPUT_ONLY
        ):
            self.error(f"{element_type} is not allowed in this block", f"{at}/type")
        self.id_field(element, "action_id", at)
        if "placeholder" in element:
            self.text(element["placeholder"], f"{at}/placeholder", 150, plain_only=True)
        if element_type == "image":
            self.image_source(element, at)
        elif element_type == "button":
            self.text(element.get("text"), f"{at}/text", 75, plain_only=True)
            if "value" in element:
                self.string(element["value"], f"{at}/value", 2000)
            if "url" in element:
                self.string(element["url"], f"{at}/url", 3000)
            if "style" in element and element["style"] not in ("primary", "danger"):
                self.error("must be a valid enum value", f"{at}/style")
        elif element_type in OPTION_LIMITS:
            self.choice(element, at, element_type)
        elif element_type == "plain_text_input":
            for key in ("min_length", "max_length"):
                value = element.get(key)
                if value is not None and (not isinstance(value, int) or not 0 <= value <= 3000):
                    self.error("must be an integer between 0 and 3000", f"{at}/{key}")
        elif element_type == "file_input":
            max_files = element.get("max_files")
            if max_files is not None and (not isinstance(max_files, int)
                                          or not 1 <= max_files <= 10):
                self.error("must be an integer between 1 and 10", f"{at}/max_files")
        elif element_type == "number_input" and "is_decimal_allowed" not in element:
            self.error("missing required field: is_decimal_allowed", at)
        if "confirm" in element:
            self.confirm(element["confirm"], f"{at}/confirm")

    def choice(self, element: dict[str, Any], at: str, element_type: str) -> None:
        limit = OPTION_LIMITS[element_type]
        plain_only = element_type in ("static_select", "multi_static_select", "overflow")
        if "option_groups" in element and element_type.endswith("static_select"):
            options = self.option_groups(element["option_groups"], f"{at}/option_groups", limit)
        else:
            options = self.options(element.get("options"), f"{at}/options", limit,
                                   plain_only=plain_only)
        values = [o.get("value") for o in options if isinstance(o, dict)]
        initial = element.get("initial_option")
        if initial is not None and (not isinstance(initial, dict)
                                    or initial.get("value") not in values):
            self.error("must match one of the options", f"{at}/initial_option")
        for i, chosen in enumerate(element.get("initial_options") or []):
            if not isinstance(chosen, dict) or chosen.get("value") not in values:
                self.error("must match one of the options", f"{at}/initial_options/{i}")

    def options(self, options: Any, at: str, limit: int, *, plain_only: bool) -> list[Any]:
        items = self.array(options, at, limit)
        for i, option in enumerate(items):
            pointer = f"{at}/{i}"
            if not isinstance(option, dict):
                self.error("must provide an object", pointer)
                continue
            self.text(option.get("text"), f"{pointer}/text", 75, plain_only=plain_only)
            self.string(option.get("value"), f"{pointer}/value", 150)
            if "description" in option:
                self.text(option["description"], f"{pointer}/description", 75)
            if "url" in option:
                self.string(option["url"], f"{pointer}/url", 3000)
        return items

    def option_groups(self, groups: Any, at: str, limit: int) -> list[Any]:
        found: list[Any] = []
        for i, group in enumerate(self.array(groups, at, 100)):
            pointer = f"{at}/{i}"
            if not isinstance(group, dict):
                self.error("must provide an object", pointer)
                continue
            self.text(group.get("label"), f"{pointer}/label", 75, plain_only=True)
            found += self.options(group.get("options"), f"{pointer}/options", limit,
                                  plain_only=True)
        return found

    def confirm(self, confirm: Any, at: str) -> None:
        if not isinstance(confirm, dict):
            self.error("must provide an object", at)
            return
        self.text(confirm.get("title"), f"{at}/title", 100, plain_only=True)
        self.text(confirm.get("text"), f"{at}/text", 300)
        self.text(confirm.get("confirm"), f"{at}/confirm", 30, plain_only=True)
        self.text(confirm.get("deny"), f"{at}/deny", 30, plain_only=True)
