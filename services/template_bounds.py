"""The limits every personalisation render keeps (see personalisation.py): what a template may
make (text, items, digits) and how much work one render may do, and the size of what each
operation would make, estimated before it runs."""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sized
from contextvars import ContextVar
from typing import Any

from jinja2.runtime import (
    LoopContext,
    Undefined,
)
from jinja2.sandbox import SecurityError

from services.limits import TEMPLATE_TEXT_MAX

MAX_REPEAT = 10_000  # `"x" * n` beyond this is a mistake or an attack, not a message
TEXT_MAX = TEMPLATE_TEXT_MAX  # characters: the rendered message, or any text made on the way
ITEMS_MAX = 10_000  # items in any list or mapping a template makes
STEPS_MAX = 10_000  # a message needs a few dozen; nested loops over its text need millions
CHARS_MAX = 5 * TEXT_MAX  # characters made along the way, all values together
DIGITS_MAX = 1_000  # digits of any number a template computes
DEADLINE_SECONDS = 0.5  # the last resort; the budgets above end every render long before

class PersonalisationError(ValueError):
    """A template that cannot be rendered; the message names the problem."""


# --- What stops a render --------------------------------------------------------------------
# Not ValueError or TypeError: filters such as `int` and `float` swallow those.


class _Refused(Exception):
    """A render stopped by one of the bounds; `explain` says so, naming where if known."""

    def explain(self, spot: str | None) -> str:
        raise NotImplementedError


class _TooLong(_Refused):
    what = f"text of more than {TEXT_MAX:,} characters"

    def explain(self, spot: str | None) -> str:
        return f"would grow too long when personalised ({spot or 'the message'} makes {self.what})"


class _TooMany(_TooLong):
    what = f"a list of more than {ITEMS_MAX:,} items"


class _TooBig(_TooLong):
    what = f"a number of more than {DIGITS_MAX:,} digits"


class _TooMuchWork(_Refused):
    what = f"loops or calls more than {STEPS_MAX:,} times"

    def explain(self, spot: str | None) -> str:
        return f"takes too much work to personalise ({spot or 'it'} {self.what}); simplify it"


class _TooMuchText(_TooMuchWork):
    what = f"makes more than {CHARS_MAX:,} characters of text on the way"


class _TooSlow(_Refused):
    def explain(self, spot: str | None) -> str:
        return (f"takes too long to personalise ({spot or 'it'} runs past {DEADLINE_SECONDS} "
                "seconds); simplify it")


class _Budget:
    """What one render may still spend: steps, characters, time."""

    __slots__ = ("chars", "deadline", "steps")

    def __init__(self) -> None:
        self.steps, self.chars = STEPS_MAX, CHARS_MAX
        self.deadline = time.monotonic() + DEADLINE_SECONDS

    def step(self, n: int = 1) -> None:
        self.steps -= n
        if self.steps < 0:
            raise _TooMuchWork()
        if time.monotonic() > self.deadline:
            raise _TooSlow()

    def spend(self, chars: int) -> None:
        self.chars -= chars
        if self.chars < 0:
            raise _TooMuchText()

    def text(self, value: Any) -> int:
        """Spends what turning `value` into text (or comparing it) costs; returns that size."""
        size = _text_size(value, min(self.chars, TEXT_MAX))
        if size > TEXT_MAX:
            raise _TooLong()
        self.spend(size)
        return size


_current: ContextVar[_Budget | None] = ContextVar("personalisation_budget", default=None)


def _budget() -> _Budget:
    # Outside `_render` (a caller using the environment directly) each operation still gets
    # a fresh budget, so the per-value limits hold everywhere.
    return _current.get() or _Budget()


def _text_size(value: Any, cap: int, depth: int = 0) -> int:
    """About len(str(value)), counting no further than just past `cap`."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, bool) or value is None or isinstance(value, Undefined):
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if isinstance(value, float):
        return 24
    if isinstance(value, Mapping):
        items: Iterable[Any] = value.items()
    elif isinstance(value, Collection):  # lists, tuples, dict views
        items = value
    else:
        return 16  # a macro, a loop, a generator: a short repr
    if depth > 16:
        return cap + 1  # a list holding itself: never worth printing
    total = 2
    for item in items:
        total += 4 + _text_size(item, cap - total, depth + 1)
        if total > cap:
            break
    return total


def _length(value: Any) -> int:
    """What a value holds, shallowly: characters, items or digits (allocation, not printing)."""
    if isinstance(value, Undefined):
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 1
    return len(value) if isinstance(value, Sized) else 0


def _made(value: Any) -> Any:
    """`value`, once checked against the limits and paid for."""
    if isinstance(value, Undefined):
        return value
    size = _length(value)
    if isinstance(value, str | bytes):
        if size > TEXT_MAX:
            raise _TooLong()
    elif isinstance(value, int) and not isinstance(value, bool):
        if size > DIGITS_MAX:
            raise _TooBig()
    elif size > ITEMS_MAX:
        raise _TooMany()
    _budget().spend(size)
    return value


def _fits(size: int, limit: int = TEXT_MAX) -> None:
    if size > limit:
        raise {ITEMS_MAX: _TooMany, DIGITS_MAX: _TooBig}.get(limit, _TooLong)()


def _int(value: Any) -> int:
    """A width or count argument; anything else is Python's to refuse when the call runs."""
    return value if isinstance(value, int) else 0


def _number(digits: str) -> int:
    return int(digits) if len(digits) < 10 else TEXT_MAX + 1


# --- Size of formatting, before it runs -------------------------------------------------------

_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.DOTALL)


def _biggest(values: Collection[Any]) -> int:
    budget = _budget()
    budget.spend(4 * len(values))  # measuring thousands of values is work too
    return max((budget.text(v) for v in values), default=0)


def _printf_size(fmt: str | bytes, args: Any) -> int:
    """At most how long `fmt % args` is: each conversion's width, precision and largest value."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    values = (args.values() if isinstance(args, Mapping)
              else args if isinstance(args, tuple) else (args,))
    biggest, size = _biggest(values), len(text)
    for width, precision, _conversion in _PRINTF.findall(text):
        if "*" in (width, precision):
            return TEXT_MAX + 1  # a width taken from the data is not worth checking
        size += _number(width or "0") + _number(precision or "0") + biggest
        if size > TEXT_MAX:
            break
    return size


def _format_size(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """At most how long `fmt.format(...)` is: each field's width and largest value."""
    biggest, size = _biggest([*args, *kwargs.values()]), 0
    for literal, field, spec, _conversion in string.Formatter().parse(fmt):
        size += len(literal)
        if field is not None:
            if "{" in (spec or ""):
                return TEXT_MAX + 1  # a width taken from the data, as above
            size += biggest + sum(_number(n) for n in re.findall(r"\d+", spec or ""))
    return size


# --- Methods a template may call (str, bytes, list, dict, numbers), with their sizes ----------

_LINEAR_TEXT_METHODS = frozenset((
    "capitalize", "casefold", "count", "decode", "encode", "endswith", "escape", "find",
    "hex", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier",
    "islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "lower", "lstrip",
    "partition", "removeprefix", "removesuffix", "rfind", "rindex", "rpartition", "rsplit",
    "rstrip", "split", "splitlines", "startswith", "strip", "striptags", "swapcase", "title",
    "unescape", "upper"
))
_COLLECTION_METHODS = {
    list: frozenset((
        "append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove",
        "reverse", "sort"
    )),
    tuple: frozenset(("count", "index")),
    dict: frozenset((
        "clear", "copy", "fromkeys", "get", "items", "keys", "pop", "popitem", "setdefault",
        "update", "values"
    )),
    int: frozenset((
        "as_integer_ratio", "bit_count", "bit_length", "conjugate", "from_bytes",
        "is_integer", "to_bytes"
    )),
    float: frozenset((
        "as_integer_ratio", "conjugate", "fromhex", "hex", "is_integer"
    )),
}


def _replaced_size(text: Any, old: Any, new: Any, count: Any = -1) -> int:
    text, old, new = str(text), str(old), str(new)
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(len(new) - len(old), 0)


def _joined_size(separator: Any, items: Sized) -> int:
    size = len(str(separator)) * max(len(items) - 1, 0)
    if isinstance(items, str | bytes):
        return size + len(items)
    return size + _budget().text(items)  # a little more than the items' own text


def _text_method_size(owner: str | bytes, name: str, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> int:
    """At most how long `owner.name(*args)` is, for the methods whose size the caller picks."""
    tab = b"\t" if isinstance(owner, bytes) else "\t"
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(len(owner), _int(args[0]) if args else 0)
    if name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        return len(owner) + owner.count(tab) * max(_int(tabsize), 0)  # type: ignore[arg-type]
    if name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        if isinstance(owner, bytes):
            return len(owner) * (1 + len(args[1])) + len(args[1])
        return _replaced_size(owner, args[0], args[1], count)
    if name == "join" and args:
        return _joined_size(owner, args[0])
    if name == "translate" and args:
        table = args[0]
        widest = _biggest(table.values()) if isinstance(table, Mapping) else 1
        return len(owner) * max(widest, 1)
    if name in ("format", "format_map") and isinstance(owner, str):
        if name == "format_map":
            return _format_size(owner, (), args[0] if args and isinstance(args[0], Mapping) else {})
        return _format_size(owner, args, kwargs)
    return 0


def _checked_method(budget: _Budget, obj: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuses a call the template may not make, or whose result would pass the limits."""
    method = getattr(obj, "__wrapped__", obj)  # the sandbox hands out str.format wrapped
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    kind = owner if isinstance(owner, type) else type(owner)
    if isinstance(owner, LoopContext) and name in ("cycle", "changed"):
        return args
    if issubclass(kind, str | bytes):
        allowed = name in _LINEAR_TEXT_METHODS or name in (
            "center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "translate",
            "format", "format_map")
    else:
        base = next((t for t in _COLLECTION_METHODS if issubclass(kind, t)), None)
        allowed = base is not None and name in _COLLECTION_METHODS[base]
    if not allowed:
        raise SecurityError(f"{name or type(obj).__name__}() cannot be used in a message")
    if name in ("join", "extend", "update", "fromkeys") and args and not isinstance(
        args[0], Sized
    ):
        args = (list(args[0]), *args[1:])  # a one-shot iterable, to be measured then used
    budget.spend(_length(owner))
    if name in ("sort", "count", "index", "remove") and not isinstance(owner, str | bytes):
        budget.text(owner)  # they compare the items, which may be long texts
    if isinstance(owner, str | bytes):
        _fits(_text_method_size(owner, name, args, kwargs))
    elif name == "to_bytes":
        _fits(_int(args[0]) if args else _int(kwargs.get("length", 1)))
    elif name in ("append", "insert", "extend", "update", "fromkeys", "setdefault"):
        added = _length(args[0]) if name in ("extend", "update", "fromkeys") and args else 1
        _fits(_length(owner) + added + len(kwargs), ITEMS_MAX)
    return args


# --- Filters and tests, wrapped ---------------------------------------------------------------


def _center(value: Any, width: Any = 80) -> int:
    return max(len(str(value)), _int(width))


def _indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> int:
    text = str(s)
    pad = len(width) if isinstance(width, str) else _int(width)
    return len(text) + (text.count("\n") + 1) * pad


def _format(value: Any, *args: Any, **kwargs: Any) -> int:
    return _printf_size(str(value), kwargs or args)


def _join(value: list[Any], d: Any = "", attribute: Any = None) -> int:
    return _joined_size(d, value)


def _replace(s: Any, old: Any, new: Any, count: Any = None) -> int:
    return _replaced_size(s, old, new, -1 if count is None else count)


def _wordwrap(s: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None,
              break_on_hyphens: bool = True) -> int:
    text = str(s)
    lines = len(text) // max(_int(width), 1) + text.count("\n") + 1
    _budget().step(lines)  # textwrap works line by line, in Python
    return len(text) + lines * (len(wrapstring) if isinstance(wrapstring, str) else 1)


def _urlize(value: Any, trim_url_limit: Any = None, nofollow: bool = False, target: Any = None,
            rel: Any = None, extra_schemes: Any = None) -> int:
    words = str(value).split()
    _budget().step(len(words))  # urlize looks at every word, in Python
    links = sum(1 for word in words if any(c in word for c in ".@:"))
    extra = 80 + len(str(target or "")) + len(str(rel or ""))
    return 2 * sum(len(word) + 1 for word in words) + links * extra


def _tojson(value: Any, indent: Any = None) -> int:
    size = _text_size(value, TEXT_MAX)  # an item is at least 4 of these characters
    pad = len(indent) if isinstance(indent, str) else _int(indent)
    return 6 * size + (size // 4 + 1) * 16 * pad  # "<" is "\u003c"; a line per item, ≤ 16 deep


def _pprint(value: Any) -> int:
    size = _text_size(value, TEXT_MAX)
    _budget().step(size // 10)  # pprint formats item by item, in Python
    return size


def _batch(value: Any, linecount: Any, fill_with: Any = None) -> int:
    _fits(_int(linecount), ITEMS_MAX)
    return 0


def _slice(value: Any, slices: Any, fill_with: Any = None) -> int:
    _fits(_int(slices), ITEMS_MAX)
    _budget().step(_int(slices))
    return 0


def _sum(iterable: Any, attribute: Any = None, start: Any = 0) -> int:
    if not isinstance(start, int | float):
        raise SecurityError("sum() adds up numbers only")  # sums of lists copy quadratically
    return 0


# What a filter's output can grow to, checked before it runs (they share Jinja's parameters).
# Filters not listed grow their input by a small factor at most; their result is checked after.
_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "center": _center, "indent": _indent, "format": _format, "join": _join,
    "replace": _replace, "wordwrap": _wordwrap, "urlize": _urlize, "tojson": _tojson,
    "pprint": _pprint, "batch": _batch, "slice": _slice, "sum": _sum,
}
# Filters that work item by item (or word by word) in Python: a step per item.
_ITERATING_FILTERS = frozenset((
    "batch", "dictsort", "groupby", "items", "join", "map", "max", "min", "reject",
    "rejectattr", "select", "selectattr", "slice", "sort", "sum", "title", "unique", "xmlattr"
))
# Filters that neither turn their input into text nor compare its items (the rest are
# charged for the whole text, which also bounds the work of sorting long texts).
_NON_TEXT_FILTERS = frozenset((
    "abs", "attr", "batch", "count", "d", "default", "first", "float", "int", "items", "last",
    "length", "list", "map", "random", "reject", "rejectattr", "reverse", "round", "select",
    "selectattr", "slice", "sum"
))
_MATERIALISED_FILTERS = frozenset(("join", "sum"))


