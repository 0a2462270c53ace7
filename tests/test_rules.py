"""Notification rules: the file (good and bad, with line numbers), the condition language,
the defaults, and `campaign-bot run` refusing a bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services import rules
from services.rules import (
    Both,
    Compare,
    Either,
    Not,
    RuleError,
    RulesFileError,
    load_rules_file,
    matching,
    parse_condition,
)
from tests.bot.test_settings import clean_env

ROOT = Path(__file__).resolve().parents[1]
GOOD = """\
# comments are fine
- on: completed
  notify: campaign_channel
  message: "Campaign #{campaign_id} done: {sent} sent"
- on: completed
  if: failed_pct > 10 or unknown > 0
  notify: "#C0ALERTS"
  message: "{failed_pct}% failed"
- on: opt_out
  if: patients >= 5
  notify: U0BOSS
  message: "{patients} opted out of {channel} ({source})"
"""


def test_a_good_file_loads_with_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(GOOD)
    loaded = load_rules_file(path)
    assert loaded is not None
    assert [(r.on, r.notify, r.line) for r in loaded] == [
        ("completed", "campaign_channel", 2), ("completed", "C0ALERTS", 5),
        ("opt_out", "U0BOSS", 9)]
    assert loaded[1].condition == Either(Compare("failed_pct", ">", 10.0),
                                         Compare("unknown", ">", 0.0))
    # The `rules:` mapping form is the same thing.
    path.write_text("rules:\n" + "".join(f"  {line}\n" for line in GOOD.splitlines()))
    assert [r.on for r in load_rules_file(path) or []] == ["completed", "completed", "opt_out"]


def test_no_file_means_the_defaults_and_an_empty_file_means_none(tmp_path: Path) -> None:
    assert load_rules_file(tmp_path / "missing.yml") is None
    (tmp_path / "empty.yml").write_text("# nothing yet\n")
    assert load_rules_file(tmp_path / "empty.yml") == []


def test_the_example_file_loads() -> None:
    loaded = load_rules_file(ROOT / "rules.example.yml")
    assert loaded and {r.on for r in loaded} >= {"completed", "failed", "missed", "opt_out"}


@pytest.mark.parametrize("text, line, words", [
    ("- on: finished\n  notify: campaign_channel\n  message: hi\n", 1, "`on` must be one of"),
    ("- on: completed\n  notify: campaign_channel\n  message: hi\n- on: failed\n"
     "  if: failed_pct >> 3\n  notify: notify_channel\n  message: x\n", 5,
     "expected a name or a number, not '>'"),
    ("- on: completed\n  if: bogus > 1\n  notify: notify_channel\n  message: x\n", 2,
     "unknown name 'bogus'"),
    ("- on: completed\n  if: (sent > 1\n  notify: notify_channel\n  message: x\n", 2,
     "missing ')'"),
    ("- on: completed\n  notify: '#general'\n  message: x\n", 2, "`notify` must be"),
    ("- on: completed\n  notify: notify_channel\n  message: 'hi {first_name}'\n", 3,
     "{first_name}"),
    ("- on: completed\n  notify: notify_channel\n", 1, "no `message`"),
    ("- on: completed\n  notify: notify_channel\n  message: x\n  colour: red\n", 4,
     "unknown key 'colour'"),
    ("- on: completed\n  notify: [a, b]\n  message: x\n", 2, "single value"),
    ("- on: completed\n  notify: notify_channel\n  message: x\n - oops: [\n", 4, "YAML"),
    ("just a string\n", 1, "must be a list"),
    ("- on: opt_out\n  if: failed_pct > 1\n  notify: notify_channel\n  message: x\n", 2,
     "unknown name 'failed_pct'"),
])
def test_a_bad_file_names_the_line_and_the_reason(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(text)
    with pytest.raises(RulesFileError) as caught:
        load_rules_file(path)
    assert caught.value.line == line, str(caught.value)
    assert words in caught.value.reason
    assert str(caught.value).startswith(f"{path}, line {line}: ")


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_bytes("- on: completed\n  message: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RulesFileError, match="UTF-8"):
        load_rules_file(path)


# --- the condition language -----------------------------------------------------------------

def holds(text: str, **numbers: float) -> bool:
    return parse_condition(text).holds(numbers)


def test_and_binds_tighter_than_or() -> None:
    condition = parse_condition("sent > 1 or failed > 1 and unknown > 1")
    assert condition == Either(Compare("sent", ">", 1.0),
                               Both(Compare("failed", ">", 1.0), Compare("unknown", ">", 1.0)))
    assert holds("sent > 1 or failed > 1 and unknown > 1", sent=5, failed=0, unknown=0)
    assert not holds("(sent > 1 or failed > 1) and unknown > 1", sent=5, failed=0, unknown=0)


@pytest.mark.parametrize("text, expected", [
    ("failed_pct > 10", True), ("failed_pct >= 12.5", True), ("failed_pct < 12.5", False),
    ("failed_pct <= 12.5", True), ("unknown == 0", True), ("unknown != 0", False),
    ("not unknown > 0", True), ("not (sent >= 100 and failed > 0)", True),
    ("((sent >= 100))", False), ("10 < failed_pct", True), ("email_sent > sms_sent", True),
    ("sent >= 100 or (failed_pct > 10 and not unknown > 0)", True),
    ("FAILED_PCT > 10".lower(), True), ("sent > 1 AND failed > 1", True),
])
def test_comparisons_of_the_numbers(text: str, expected: bool) -> None:
    numbers = {"failed_pct": 12.5, "unknown": 0, "sent": 40, "failed": 5, "email_sent": 30,
               "sms_sent": 10}
    assert parse_condition(text).holds(numbers) is expected


@pytest.mark.parametrize("text, words", [
    ("", "empty"), ("sent", "expected a comparison"), ("sent >", "unexpected end"),
    ("> 3", "expected a name or a number"), ("sent > 1 and", "unexpected end"),
    ("(sent > 1", "missing ')'"), ("sent > 1)", "unexpected ')'"),
    ("sent > 1 sent", "unexpected 'sent'"), ("patients > 1", "unknown name 'patients'"),
    ("__import__('os').system('true')", "unexpected \"'os')"),
    ("__import__ > 1", "unknown name '__import__'"),
    ("sent.__class__ > 1", "unexpected '.__class__"), ("sent > 1; x", "unexpected ';"),
    ("sent + 1 > 2", "unexpected '+"), ("sent > -1", "unexpected '-1'"),
    ("sent = 1", "unexpected '= 1'"),
])
def test_bad_conditions_are_rejected_without_eval(text: str, words: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_condition(text)
    assert words in caught.value.reason


def test_the_tree_is_data_not_code() -> None:
    condition = parse_condition("not (sent > 1)")
    assert condition == Not(Compare("sent", ">", 1.0))
    # A missing number counts as 0 (a channel the campaign does not use).
    assert parse_condition("sms_failed == 0").holds({})


# --- defaults and firing ------------------------------------------------------------------------

def test_the_defaults() -> None:
    defaults = rules.default_rules()
    calm = {"failed_pct": 2.0, "unknown": 0}
    assert [r.notify for r in matching(defaults, "completed", calm)] == ["campaign_channel"]
    bad = {"failed_pct": 10.5, "unknown": 0}
    assert [r.notify for r in matching(defaults, "completed", bad)] == [
        "campaign_channel", "notify_channel"]
    assert [r.notify for r in matching(defaults, "completed", {"failed_pct": 0, "unknown": 1})
            ] == ["campaign_channel", "notify_channel"]
    assert [r.notify for r in matching(defaults, "failed", {"failed_pct": 100})] == [
        "notify_channel"]
    assert matching(defaults, "failed", {"failed_pct": 10, "unknown": 0}) == []
    assert matching(defaults, "started", bad) == []


def test_messages_are_filled_in() -> None:
    [rule] = rules.parse_rules(
        "- on: completed\n  notify: notify_channel\n"
        "  message: '#{campaign_id} {subject}: {failed_pct}% of {sent}, {{literal}}'\n")
    text = rule.render({"campaign_id": 7, "subject": "Check-up", "failed_pct": 12.5,
                        "sent": 40.0})
    assert text == "#7 Check-up: 12.5% of 40, {literal}"


def test_run_with_a_bad_rules_file_exits_2_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(
        "- on: completed\n  notify: campaign_channel\n  message: ok\n"
        "- on: completed\n  if: failed_pct > 10 or nonsense > 1\n  notify: notify_channel\n"
        "  message: bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path,
        env=clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/x.db"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "RULES_FILE" in lines[0] and "line 5" in lines[0] and "nonsense" in lines[0]
    assert "Traceback" not in result.stderr
