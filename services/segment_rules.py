"""The smart-segment condition language: parsed from YAML (with line numbers), compiled to SQL.

A definition is plain JSON, stored in `segments.definition`:
`{"all": [condition, ...]}` where a condition is `{"column": c, "op": o, "value": v}`,
`{"any": [condition, ...]}` or `{"all": [condition, ...]}`. Compiling one yields a
SQLAlchemy WHERE clause over `patients`; nothing is evaluated and no SQL is built from text.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import ColumnElement, and_, false, not_, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute
from yaml.constructor import SafeConstructor

from services.models import Patient, PatientTag

Definition = dict[str, Any]

# Column → kind; the kind decides which operators and values are allowed.
COLUMNS: dict[str, str] = {
    "patient_type": "text",
    "email": "text",
    "phone": "text",
    "timezone": "text",
    "external_id": "text",
    "last_study_at": "datetime",
    "birth_date": "date",
    "birth_month": "month",
    "email_opt_in": "bool",
    "sms_opt_in": "bool",
    "tags": "tags",
}
NULLS = ("is_null", "not_null")
OPERATORS: dict[str, tuple[str, ...]] = {
    "text": ("eq", "ne", "in", "not_in", *NULLS),
    "datetime": ("gt", "gte", "lt", "lte", "within_days", "older_than_days", *NULLS),
    "date": ("eq", "ne", "gt", "gte", "lt", "lte", *NULLS),
    "month": ("eq", "ne", "in", "not_in", *NULLS),
    "bool": ("eq", "ne"),
    "tags": ("has_tag", "lacks_tag"),
}
GROUPS = ("any", "all")


class RuleError(ValueError):
    """A condition that cannot be used; `line` is 1-based where known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def scalar(node: yaml.Node) -> Any:
    """The Python value of a YAML node (safe types only)."""
    return SafeConstructor().construct_object(node, deep=True)


def parse_conditions(node: yaml.Node) -> Definition:
    """A YAML list of conditions → a normalized definition; RuleError names the line."""
    return {"all": _parse_list(node, "conditions")}


def _parse_list(node: yaml.Node, what: str) -> list[dict[str, Any]]:
    if not isinstance(node, yaml.SequenceNode):
        raise RuleError(f"{what} must be a list of conditions", line_of(node))
    conditions: list[dict[str, Any]] = []
    for item in node.value:
        conditions.extend(_parse_item(item))
    return conditions


def _parse_item(node: yaml.Node) -> list[dict[str, Any]]:
    if not isinstance(node, yaml.MappingNode) or not node.value:
        raise RuleError(
            "a condition must be a mapping such as `last_study_at: {within_days: 30}`",
            line_of(node),
        )
    out: list[dict[str, Any]] = []
    for key_node, value_node in node.value:
        key = scalar(key_node)
        if key in GROUPS:
            members = _parse_list(value_node, f"`{key}`")
            if not members:
                raise RuleError(f"`{key}` needs at least one condition", line_of(value_node))
            out.append({key: members})
        elif key in COLUMNS:
            out.extend(_parse_column(str(key), value_node))
        else:
            raise RuleError(
                f"unknown column {key!r}; use one of {', '.join(COLUMNS)} (or any/all)",
                line_of(key_node),
            )
    return out


def _parse_column(column: str, node: yaml.Node) -> list[dict[str, Any]]:
    kind = COLUMNS[column]
    if isinstance(node, yaml.MappingNode):
        pairs = [(scalar(k), v, line_of(k)) for k, v in node.value]
        if not pairs:
            raise RuleError(f"{column} needs an operator, e.g. {OPERATORS[kind][0]}",
                            line_of(node))
    else:  # shorthand: `column: value` is eq (has_tag for tags), `column: [a, b]` is in
        listed = isinstance(node, yaml.SequenceNode)
        shorthand = "has_tag" if kind == "tags" else "in" if listed else "eq"
        pairs = [(shorthand, node, line_of(node))]
    out = []
    for op, value_node, line in pairs:
        if op not in OPERATORS[kind]:
            raise RuleError(
                f"unknown operator {op!r} for {column}; use one of {', '.join(OPERATORS[kind])}",
                line,
            )
        try:
            value = check_value(column, str(op), scalar(value_node))
        except RuleError as exc:
            raise RuleError(exc.reason, line_of(value_node)) from None
        out.append({"column": column, "op": str(op), "value": value})
    return out


def check_value(column: str, op: str, value: Any) -> Any:
    """The JSON form of a condition's value, or RuleError saying what was expected."""
    kind = COLUMNS[column]
    where = f"{column} {op}"
    if op in NULLS:
        if not isinstance(value, bool):
            raise RuleError(f"{where} takes true or false")
        return value
    if op in ("within_days", "older_than_days"):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 36_500:
            raise RuleError(f"{where} takes a whole number of days, such as 30")
        return value
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise RuleError(f"{where} takes a non-empty list, such as [a, b]")
        return [_check_one(kind, where, v) for v in value]
    if kind == "tags":
        tags = value if isinstance(value, list) else [value]
        if not tags or not all(isinstance(t, str) and t.strip() for t in tags):
            raise RuleError(f"{where} takes a tag or a non-empty list of tags")
        return [t.strip().lower() for t in tags]
    return _check_one(kind, where, value)


def _check_one(kind: str, where: str, value: Any) -> Any:
    if kind == "text":
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RuleError(f"{where} takes text")
        return str(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise RuleError(f"{where} takes true or false")
        return value
    if kind == "month":
        if value == "current" or (type(value) is int and 1 <= value <= 12):
            return value
        raise RuleError(f"{where} takes a month number 1-12 or `current`")
    if kind == "date":
        if isinstance(value, date) and not isinstance(value, datetime):
            return value.isoformat()
        raise RuleError(f"{where} takes a date such as 2024-01-31")
    # datetime: a date (whole days in the clinic's time zone) or a date and time
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            if len(value) == 10:
                return date.fromisoformat(value).isoformat()
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise RuleError(f"{where} takes a date such as 2024-01-31 or a date and time")


# ---- compiling -------------------------------------------------------------------------


def zone(clinic_tz: str | tzinfo) -> tzinfo:
    return ZoneInfo(clinic_tz) if isinstance(clinic_tz, str) else clinic_tz


def where_clause(
    definition: Definition, *, now: datetime, clinic_tz: str | tzinfo
) -> ColumnElement[bool]:
    """The SQL condition selecting a definition's patients (true() for no conditions)."""
    context = _Context(now, zone(clinic_tz))
    return _compile(definition, context)


class _Context:
    def __init__(self, now: datetime, tz: tzinfo) -> None:
        self.tz = tz
        self.today = now.astimezone(tz).date()

    def start_of(self, day: date) -> datetime:
        """Local midnight of `day` in the clinic's zone, as UTC."""
        return datetime.combine(day, time(0), tzinfo=self.tz).astimezone(UTC)


def _compile(node: dict[str, Any], context: _Context) -> ColumnElement[bool]:
    if "all" in node:
        return and_(true(), *(_compile(child, context) for child in node["all"]))
    if "any" in node:
        return or_(false(), *(_compile(child, context) for child in node["any"]))
    return _condition(node["column"], node["op"], node["value"], context)


_COLUMN_ATTRS: dict[str, InstrumentedAttribute[Any]] = {
    "patient_type": Patient.patient_type,
    "email": Patient.email,
    "phone": Patient.phone,
    "timezone": Patient.timezone,
    "external_id": Patient.external_id,
    "last_study_at": Patient.last_study_at,
    "birth_date": Patient.birth_date,
    "birth_month": Patient.birth_month,
    "email_opt_in": Patient.email_opt_in,
    "sms_opt_in": Patient.sms_opt_in,
}


def _condition(column: str, op: str, value: Any, context: _Context) -> ColumnElement[bool]:
    if column == "tags":
        tagged = Patient.id.in_(select(PatientTag.patient_id).where(PatientTag.tag.in_(value)))
        return tagged if op == "has_tag" else not_(tagged)
    col = _COLUMN_ATTRS[column]
    if op in NULLS:
        return col.is_(None) if (op == "is_null") == value else col.is_not(None)
    kind = COLUMNS[column]
    if op == "within_days":
        return col >= context.start_of(context.today - timedelta(days=value))
    if op == "older_than_days":
        return col < context.start_of(context.today - timedelta(days=value))
    convert = _converter(kind, context)
    if op in ("in", "not_in"):
        values = [convert(v) for v in value]
        # NOT IN keeps the patients whose column is empty: "not of type X" includes "no type".
        return col.in_(values) if op == "in" else or_(col.is_(None), col.not_in(values))
    if kind == "datetime" and len(value) == 10:  # a date: whole days in the clinic's zone
        day = date.fromisoformat(value)
        after = context.start_of(day + timedelta(days=1))
        return {"gt": col >= after, "gte": col >= context.start_of(day),
                "lt": col < context.start_of(day), "lte": col < after}[op]
    bound = convert(value)
    if op == "ne":
        return or_(col.is_(None), col != bound)
    compare: Callable[[Any, Any], ColumnElement[bool]] = _COMPARE[op]
    return compare(col, bound)


_COMPARE = {"eq": operator.eq, "gt": operator.gt, "gte": operator.ge,
            "lt": operator.lt, "lte": operator.le}


def _converter(kind: str, context: _Context) -> Callable[[Any], Any]:
    if kind == "month":
        return lambda v: context.today.month if v == "current" else int(v)
    if kind == "date":
        return date.fromisoformat
    if kind == "datetime":
        return lambda v: _aware(datetime.fromisoformat(v), context.tz)
    return lambda v: v


def _aware(value: datetime, tz: tzinfo) -> datetime:
    return value.replace(tzinfo=tz) if value.tzinfo is None else value
