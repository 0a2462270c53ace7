"""The one way the bot writes CSV for people: cells a spreadsheet would run are neutralised.

Staff open the rejected-rows report and the audit export in Excel or LibreOffice, which
treat a cell starting with `=`, `+`, `-` or `@` (or a tab or carriage return before one) as
a formula: `=HYPERLINK(…)` in an imported external_id would become a live link, `@cmd`
could run a command. A leading `'` makes the spreadsheet show the text as typed, so the
report still shows the rejected value (SPEC §7).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

# What spreadsheets read as the start of a formula (OWASP's "CSV injection" list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralised(value: Any) -> Any:
    """The cell as written: text a spreadsheet would evaluate gets a leading `'`.

    A NUL (which many CSV readers refuse) is shown as U+FFFD, the replacement character.
    """
    if not isinstance(value, str):
        return value
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeWriter:
    """csv.writer with every text cell neutralised; numbers pass as they are."""

    def __init__(self, out: TextIO) -> None:
        self._writer = csv.writer(out)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([neutralised(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        self._writer.writerows([neutralised(cell) for cell in row] for row in rows)


def writer(out: TextIO) -> SafeWriter:
    """A CSV writer for a file people will open in a spreadsheet."""
    return SafeWriter(out)
