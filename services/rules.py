"""Notification rules: on an event, if a condition on the campaign's numbers holds, notify.

A rules file (`RULES_FILE`, YAML) is a list of rules (or a mapping with a `rules:` list):

    - on: completed                 # scheduled started completed failed cancelled missed opt_out
      if: failed_pct > 10 or unknown > 0          # optional
      notify: notify_channel        # campaign_channel | notify_channel | C0123… | U0123…
      message: "Campaign #{campaign_id} ({subject}): {failed_pct}% failed"

Conditions are a small language parsed here, never evaluated by Python: comparisons
(`< <= > >= == !=`) of the snapshot's numbers (services/snapshot.NUMBER_NAMES; `patients`
for opt_out) and numbers, joined by `and` / `or` (`and` binds tighter), `not`, parentheses.
Where events come from: the delivery engine reports started, completed, failed and missed;
the Slack handlers report scheduled and cancelled for campaigns scheduled and cancelled in
Slack (a campaign created or cancelled from the command line is seen from `started` on);
webhooks report opt_out. Pure: no I/O but reading the file, no Slack (bot/notifier.py posts).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.errors import CampaignBotError, ConfigFileError
from services.snapshot import NUMBER_NAMES

CAMPAIGN_EVENTS = ("scheduled", "started", "completed", "failed", "cancelled", "missed")
EVENTS = (*CAMPAIGN_EVENTS, "opt_out")
OPT_OUT_NUMBERS = frozenset({"patients"})
CAMPAIGN_TEXTS = frozenset({"campaign_id", "subject", "status", "event", "reason", "channel"})
OPT_OUT_TEXTS = frozenset({"event", "channel", "source"})
CAMPAIGN_CHANNEL, NOTIFY_CHANNEL = "campaign_channel", "notify_channel"
_SLACK_ID = re.compile(r"^#?([CGUW][A-Z0-9]{2,})$")
_KEYS = ("on", "if", "notify", "message")
MAX_MESSAGE = 2000


class RuleError(CampaignBotError):
    """A rule or condition that cannot be used; `line` is 1-based within the file."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(reason)


class RulesFileError(ConfigFileError):
    """A rules file that cannot be used: names the file, the line and the reason."""


# --- the condition language ----------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op><=|>=|==|!=|<|>)|(?P<paren>[()]))")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}
_WORDS = {"and", "or", "not"}


@dataclass(frozen=True)
class Compare:
    left: str | float
    op: str
    right: str | float

    def holds(self, numbers: Mapping[str, float]) -> bool:
        return _COMPARE[self.op](_value(self.left, numbers), _value(self.right, numbers))


@dataclass(frozen=True)
class Both:
    left: Condition
    right: Condition

    def holds(self, numbers: Mapping[str, float]) -> bool:
        return self.left.holds(numbers) and self.right.holds(numbers)


@dataclass(frozen=True)
class Either:
    left: Condition
    right: Condition

    def holds(self, numbers: Mapping[str, float]) -> bool:
        return self.left.holds(numbers) or self.right.holds(numbers)


@dataclass(frozen=True)
class Not:
    inner: Condition

    def holds(self, numbers: Mapping[str, float]) -> bool:
        return not self.inner.holds(numbers)


Condition = Compare | Both | Either | Not


def _value(term: str | float, numbers: Mapping[str, float]) -> float:
    return float(term) if isinstance(term, float) else float(numbers.get(term, 0))


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    at = 0
    text = text.rstrip()
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            bad = text[at:].strip()[:20]
            raise RuleError(f"unexpected {bad!r} in condition {text.strip()!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "name" and value.lower() in _WORDS:
            kind, value = "word", value.lower()
        out.append((kind, value))
        at = match.end()
    return out


class _Parser:
    """Recursive descent: or → and → not → comparison | ( or )."""

    def __init__(self, text: str, names: frozenset[str]) -> None:
        self.text = text.strip()
        self.names = names
        self.tokens = _tokens(text)
        self.at = 0

    def fail(self, reason: str) -> RuleError:
        return RuleError(f"{reason} in condition {self.text!r}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise self.fail("unexpected end")
        self.at += 1
        return token

    def parse(self) -> Condition:
        if not self.tokens:
            raise RuleError("the condition is empty")
        condition = self.either()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return condition

    def either(self) -> Condition:
        condition = self.both()
        while self.peek() == ("word", "or"):
            self.take()
            condition = Either(condition, self.both())
        return condition

    def both(self) -> Condition:
        condition = self.negation()
        while self.peek() == ("word", "and"):
            self.take()
            condition = Both(condition, self.negation())
        return condition

    def negation(self) -> Condition:
        if self.peek() == ("word", "not"):
            self.take()
            return Not(self.negation())
        if self.peek() == ("paren", "("):
            self.take()
            inner = self.either()
            if self.peek() != ("paren", ")"):
                raise self.fail("missing ')'")
            self.take()
            return inner
        left = self.term()
        kind, op = self.peek() or ("end", "")
        self.at += 1
        if kind != "op":
            raise self.fail(f"expected a comparison (<, <=, >, >=, ==, !=) after {left!r}")
        return Compare(left, op, self.term())

    def term(self) -> str | float:
        kind, value = self.take()
        if kind == "number":
            return float(value)
        if kind == "name":
            if value not in self.names:
                raise self.fail(f"unknown name {value!r} (known: {_known(self.names)})")
            return value
        raise self.fail(f"expected a name or a number, not {value!r}")


def _known(names: frozenset[str]) -> str:
    short = sorted(n for n in names if not n.startswith(("email_", "sms_")))
    return ", ".join(short) + (", and email_…/sms_… of each" if len(short) < len(names) else "")


def parse_condition(text: str, *, event: str = "completed") -> Condition:
    """The condition, or RuleError naming what is wrong (unknown names, bad syntax)."""
    return _Parser(text, OPT_OUT_NUMBERS if event == "opt_out" else NUMBER_NAMES).parse()


# --- rules ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    on: str
    notify: str  # campaign_channel | notify_channel | a channel or user id
    message: str
    condition: Condition | None = None
    condition_text: str | None = None
    line: int | None = None  # where it starts in its file (None: a default rule)

    def applies(self, event: str, numbers: Mapping[str, float]) -> bool:
        return self.on == event and (self.condition is None or self.condition.holds(numbers))

    def render(self, values: Mapping[str, Any]) -> str:
        """The message with its `{placeholders}` filled in (names were checked at load)."""
        shown = {k: _shown(v) for k, v in values.items()}
        return string.Formatter().vformat(self.message, (), _Blank(shown))[:MAX_MESSAGE]

    def describe(self) -> str:
        where = f"line {self.line}" if self.line else "default"
        return f"{where}: on {self.on}" + (f" if {self.condition_text}" if self.condition_text
                                            else "")


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def _shown(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def make_rule(*, on: Any, notify: Any, message: Any, condition: Any = None,
              line: int | None = None) -> Rule:
    """A checked rule, or RuleError with the reason."""
    if on not in EVENTS:
        raise RuleError(f"`on` must be one of {', '.join(EVENTS)}, not {on!r}")
    if not isinstance(notify, str) or not (
        notify in (CAMPAIGN_CHANNEL, NOTIFY_CHANNEL) or _SLACK_ID.match(notify.strip())
    ):
        raise RuleError("`notify` must be campaign_channel, notify_channel, a channel id "
                        f"(C…) or a user id (U…), not {notify!r}")
    target = notify.strip().lstrip("#")
    if not isinstance(message, str) or not message.strip():
        raise RuleError("`message` must be some text")
    _check_placeholders(message, on)
    parsed = None
    if condition is not None:
        if not isinstance(condition, str | int | float) or isinstance(condition, bool):
            raise RuleError(f"`if` must be a condition such as `failed_pct > 10`, "
                            f"not {condition!r}")
        parsed = parse_condition(str(condition), event=on)
    return Rule(on=on, notify=target, message=message.strip(), condition=parsed,
                condition_text=str(condition).strip() if condition is not None else None,
                line=line)


def _check_placeholders(message: str, event: str) -> None:
    allowed = (OPT_OUT_NUMBERS | OPT_OUT_TEXTS) if event == "opt_out" else (
        NUMBER_NAMES | CAMPAIGN_TEXTS)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(message) if f is not None]
    except ValueError as exc:
        raise RuleError(f"`message` is not a valid template ({exc}); write {{{{ and }}}} "
                        "for literal braces") from None
    for name in fields:
        if name not in allowed:
            raise RuleError(f"`message` uses {{{name}}}, which is not known for {event} "
                            f"(known: {_known(frozenset(allowed))})")


def default_rules() -> list[Rule]:
    """The rules when there is no rules file (SPEC: completed → the campaign's channel;
    over 10% failed or any unknown → SLACK_NOTIFY_CHANNEL)."""
    alarm = ("Campaign #{campaign_id} “{subject}” {event}: {failed} failed ({failed_pct}%), "
             "{unknown} unknown of {sent} sent. `/campaign stats {campaign_id}` has the reasons.")
    return [
        make_rule(on="completed", notify=CAMPAIGN_CHANNEL,
                  message="Campaign #{campaign_id} “{subject}” completed: {sent} sent, "
                          "{failed} failed, {skipped} skipped."),
        *(make_rule(on=event, notify=NOTIFY_CHANNEL, condition="failed_pct > 10 or unknown > 0",
                    message=alarm) for event in ("completed", "failed")),
    ]


def load_rules_file(path: Path | str) -> list[Rule] | None:
    """The rules in `path` (None when there is no such file: use `default_rules()`)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RulesFileError(path, None, "is not UTF-8 text") from None
    except OSError as exc:
        raise RulesFileError(path, None, f"cannot be read ({exc.strerror})") from None
    try:
        return parse_rules(text)
    except RuleError as exc:
        raise RulesFileError(path, exc.line, exc.reason) from None


def parse_rules(text: str) -> list[Rule]:
    """Rules from YAML text; RuleError with the (1-based) line of the first problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise RuleError(f"YAML syntax error: {reason}", mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise RuleError(f"YAML syntax error: {exc}") from None
    if root is None:
        return []
    if isinstance(root, yaml.MappingNode):
        found = {k.value: v for k, v in root.value if isinstance(k, yaml.ScalarNode)}
        unknown = [k for k in found if k != "rules"]
        if unknown or "rules" not in found:
            raise RuleError("the file must be a list of rules, or `rules:` followed by one",
                            root.start_mark.line + 1)
        root = found["rules"]
    if not isinstance(root, yaml.SequenceNode):
        raise RuleError("the file must be a list of rules", root.start_mark.line + 1)
    return [_rule(node) for node in root.value]


def _rule(node: yaml.Node) -> Rule:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        raise RuleError("each rule must be a mapping with on, notify and message", line)
    values: dict[str, Any] = {}
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        at = key.start_mark.line + 1
        if name not in _KEYS:
            raise RuleError(f"unknown key {name!r} (a rule has {', '.join(_KEYS)})", at)
        if not isinstance(value, yaml.ScalarNode):
            raise RuleError(f"`{name}` must be a single value", value.start_mark.line + 1)
        # YAML reads `on` as a boolean in YAML 1.1; here every value is taken as written.
        values[name] = (value.value, value.start_mark.line + 1)
    for required in ("on", "notify", "message"):
        if required not in values:
            raise RuleError(f"the rule has no `{required}`", line)
    try:
        return make_rule(on=values["on"][0], notify=values["notify"][0],
                         message=values["message"][0],
                         condition=values["if"][0] if "if" in values else None, line=line)
    except RuleError as exc:
        key = _key_of(exc.reason)
        raise RuleError(exc.reason, values[key][1] if key in values else line) from None


def _key_of(reason: str) -> str:
    if "condition" in reason or reason.startswith("`if`"):
        return "if"
    for key in _KEYS:
        if reason.startswith(f"`{key}`"):
            return key
    return "on"


def matching(rules: list[Rule], event: str, numbers: Mapping[str, float]) -> list[Rule]:
    """The rules that fire for `event` with these numbers, in file order."""
    return [rule for rule in rules if rule.applies(event, numbers)]
