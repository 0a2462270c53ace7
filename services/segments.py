"""Smart segments: saved rules over the patients catalog, built in or from `segments.yml`.

Every segment, built-in or clinic-defined, is data in one condition language
(services/segment_rules.py) compiled to one SQL WHERE clause: counting or resolving a
segment is one query. File segments are synced into the `segments` table at start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import ColumnElement, Select, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from services.errors import ConfigFileError, NotFound
from services.models import Patient, PatientTag, Segment, utcnow
from services.segment_rules import Definition, RuleError, line_of, parse_conditions, scalar
from services.segment_rules import where_clause as compile_where

SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
FAMILIES = ("type:", "tag:")
FIELDS = ("slug", "name", "description", "conditions")

BUILTIN_YAML = """\
- slug: all
  name: All patients
  description: Every patient in the catalog.
  conditions: []
- slug: recent-study-30d
  name: Study in the last 30 days
  description: Patients whose last study was in the last 30 days.
  conditions:
    - last_study_at: {within_days: 30}
- slug: no-study-12m
  name: No study in 12 months
  description: Patients with no study in the last 12 months, including those never studied.
  conditions:
    - any:
        - last_study_at: {is_null: true}
        - last_study_at: {older_than_days: 365}
- slug: birthday-this-month
  name: Birthday this month
  description: Patients whose birthday falls in the current month.
  conditions:
    - birth_month: current
"""


class SegmentsFileError(ConfigFileError):
    """A segments file that cannot be used: names the file, the line and the reason."""


@dataclass(frozen=True)
class SegmentDefinition:
    slug: str
    name: str
    description: str
    definition: Definition
    source: str = "file"  # builtin | file | family
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SegmentSummary:
    slug: str
    name: str
    description: str
    size: int | None  # None when listed without counts


def _parse_definitions(root: yaml.Node, *, source: str) -> list[SegmentDefinition]:
    if not isinstance(root, yaml.SequenceNode):
        raise RuleError("the file must be a list of segments, each starting with `- slug:`",
                        line_of(root))
    seen: dict[str, int] = {}
    out = []
    for item in root.value:
        if not isinstance(item, yaml.MappingNode):
            raise RuleError("each segment must be a mapping with slug, name and conditions",
                            line_of(item))
        fields: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in item.value:
            key = scalar(key_node)
            if key not in FIELDS:
                raise RuleError(f"unknown field {key!r}; a segment has {', '.join(FIELDS)}",
                                line_of(key_node))
            fields[key] = (key_node, value_node)
        for required in ("slug", "name", "conditions"):
            if required not in fields:
                raise RuleError(f"this segment has no {required}", line_of(item))
        slug = _text(fields["slug"][1], "slug", 80)
        line = line_of(fields["slug"][1])
        if source == "file":
            _check_slug(slug, line, seen)
        seen[slug] = line
        definition = parse_conditions(fields["conditions"][1])
        if source == "file" and not definition["all"]:
            raise RuleError("conditions must list at least one condition "
                            "(the built-in `all` segment has every patient)",
                            line_of(fields["conditions"][1]))
        description = fields.get("description")
        out.append(SegmentDefinition(
            slug=slug,
            name=_text(fields["name"][1], "name", 120),
            description=_text(description[1], "description", 500) if description else "",
            definition=definition,
            source=source,
            line=line,
        ))
    return out


def _text(node: yaml.Node, what: str, max_length: int) -> str:
    value = scalar(node)
    if not isinstance(value, str) or not value.strip():
        raise RuleError(f"{what} must be text", line_of(node))
    if len(value.strip()) > max_length:
        raise RuleError(f"{what} is longer than {max_length} characters", line_of(node))
    return value.strip()


def _check_slug(slug: str, line: int, seen: dict[str, int]) -> None:
    if slug in BUILTIN_SLUGS or slug.startswith(FAMILIES):
        raise RuleError(f"slug {slug!r} is a built-in segment; choose another slug", line)
    if not SLUG.fullmatch(slug):
        raise RuleError(f"slug {slug!r} may only use a-z, 0-9, - and _ "
                        "(start with a letter or digit, at most 80 characters)", line)
    if slug in seen:
        raise RuleError(f"slug {slug!r} is already used on line {seen[slug]}", line)


BUILTINS: list[SegmentDefinition] = _parse_definitions(
    yaml.compose(BUILTIN_YAML, Loader=yaml.SafeLoader), source="builtin"
)
BUILTIN_SLUGS = frozenset(d.slug for d in BUILTINS)
_BUILTINS_BY_SLUG = {d.slug: d for d in BUILTINS}


def load_segments_file(path: Path | str) -> list[SegmentDefinition]:
    """The clinic's segments from a YAML file ([] when there is no file); no database needed."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SegmentsFileError(path, None, "is not UTF-8 text") from None
    except OSError as exc:
        raise SegmentsFileError(path, None, f"cannot be read ({exc.strerror})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise SegmentsFileError(path, mark.line + 1 if mark else None,
                                f"YAML syntax error: {reason}") from None
    except yaml.YAMLError as exc:
        raise SegmentsFileError(path, None, f"YAML syntax error: {exc}") from None
    if root is None:
        return []
    try:
        return _parse_definitions(root, source="file")
    except RuleError as exc:
        raise SegmentsFileError(path, exc.line, exc.reason) from None


def family_definition(slug: str) -> SegmentDefinition | None:
    """`type:<patient_type>` and `tag:<tag>`, resolved from the slug itself."""
    kind, _, value = slug.partition(":")
    if not value.strip():
        return None
    if kind == "type":
        return SegmentDefinition(
            slug=slug, name=f"Patient type: {value}", source="family",
            description=f"Patients whose type is {value}.",
            definition={"all": [{"column": "patient_type", "op": "eq", "value": value}]},
        )
    if kind == "tag":
        tag = value.strip().lower()
        return SegmentDefinition(
            slug=slug, name=f"Tag: {tag}", source="family",
            description=f"Patients tagged {tag}.",
            definition={"all": [{"column": "tags", "op": "has_tag", "value": [tag]}]},
        )
    return None


def where_clause(
    definition: SegmentDefinition | Definition, *, now: datetime, clinic_tz: str | tzinfo
) -> ColumnElement[bool]:
    """The SQL condition selecting a segment's patients."""
    rules = definition.definition if isinstance(definition, SegmentDefinition) else definition
    return compile_where(rules, now=now, clinic_tz=clinic_tz)


async def sync_segments(session: AsyncSession, definitions: list[SegmentDefinition]) -> None:
    """Store the built-ins and the file's segments; remove those no longer defined."""
    wanted = {d.slug: d for d in [*BUILTINS, *definitions]}
    existing = {s.slug: s for s in (await session.execute(select(Segment))).scalars()}
    for slug, segment in existing.items():
        if slug not in wanted:
            await session.delete(segment)
    for slug, d in wanted.items():
        row = existing.get(slug)
        values = {"name": d.name, "description": d.description,
                  "definition": d.definition, "source": d.source}
        if row is None:
            session.add(Segment(slug=slug, **values))
        elif any(getattr(row, k) != v for k, v in values.items()):
            for key, value in values.items():
                setattr(row, key, value)
    await session.flush()


async def get_definition(session: AsyncSession, slug: str) -> SegmentDefinition:
    """A segment by slug: built-in, `type:`/`tag:` family, or stored from the file."""
    found = _BUILTINS_BY_SLUG.get(slug) or family_definition(slug)
    if found is not None:
        return found
    row = await session.get(Segment, slug)
    if row is None:
        raise NotFound("segment", slug)
    return SegmentDefinition(slug=row.slug, name=row.name, description=row.description,
                             definition=row.definition, source=row.source)


def _count_query(definition: SegmentDefinition, now: datetime, tz: str | tzinfo,
                 cap: int | None = None) -> Select[Any]:
    rules = definition.definition.get("all", [])
    tag_only = len(rules) == 1 and rules[0].get("op") == "has_tag" and len(rules[0]["value"]) == 1
    if tag_only and cap is None:  # (patient_id, tag) is unique and every row has its patient
        return select(func.count()).select_from(PatientTag).where(
            PatientTag.tag == rules[0]["value"][0])
    # No WHERE at all for `all`: SQLite then counts the smallest b-tree.
    condition = where_clause(definition, now=now, clinic_tz=tz) if rules else None
    if cap is not None:
        members = select(Patient.id)
        members = members.where(condition) if condition is not None else members
        return select(func.count()).select_from(members.limit(cap + 1).subquery())
    query = select(func.count()).select_from(Patient)
    return query.where(condition) if condition is not None else query


async def count(
    session: AsyncSession, slug: str, *, now: datetime | None = None,
    clinic_tz: str | tzinfo = "UTC", cap: int | None = None,
) -> int:
    """How many patients the segment has (one query); with `cap`, at most cap + 1."""
    definition = await get_definition(session, slug)
    query = _count_query(definition, now or utcnow(), clinic_tz, cap)
    return int(await session.scalar(query) or 0)


async def resolve(
    session: AsyncSession, slug: str, *, limit: int | None = None, now: datetime | None = None,
    clinic_tz: str | tzinfo = "UTC",
) -> list[int]:
    """The ids of the segment's patients, in id order (one query)."""
    definition = await get_definition(session, slug)
    query = select(Patient.id).order_by(Patient.id).limit(limit)
    if definition.definition.get("all"):
        query = query.where(where_clause(definition, now=now or utcnow(), clinic_tz=clinic_tz))
    return list((await session.execute(query)).scalars())


async def _file_segments(session: AsyncSession) -> list[SegmentDefinition]:
    rows = (await session.execute(
        select(Segment).where(Segment.source == "file").order_by(Segment.name, Segment.slug)
    )).scalars()
    return [SegmentDefinition(slug=r.slug, name=r.name, description=r.description,
                              definition=r.definition, source=r.source) for r in rows]


async def list_segments(
    session: AsyncSession, *, with_counts: bool = True, now: datetime | None = None,
    clinic_tz: str | tzinfo = "UTC", cap: int | None = None,
) -> list[SegmentSummary]:
    """Every segment a user can pick, with its size: one `type:`/`tag:` per value present.

    With `cap`, the built-in and file segments count no further than cap + 1 (faster for
    big segments when the UI only needs "more than MAX_AUDIENCE").
    """
    fixed = [*BUILTINS, *await _file_segments(session)]
    now = now or utcnow()
    sizes: dict[tuple[str, str], int] = {}
    if with_counts:
        # One round trip: each fixed segment's count, then per-type and per-tag counts.
        arms: list[Select[Any]] = [
            select(literal("seg").label("kind"), literal(d.slug).label("key"),
                   _count_query(d, now, clinic_tz, cap).scalar_subquery().label("n"))
            for d in fixed
        ]
        arms.append(select(literal("type"), Patient.patient_type, func.count())
                    .where(Patient.patient_type.is_not(None)).group_by(Patient.patient_type))
        arms.append(select(literal("tag"), PatientTag.tag, func.count()).group_by(PatientTag.tag))
        for kind, key, n in (await session.execute(union_all(*arms))).all():
            sizes[(kind, key)] = int(n)
        types = sorted(k for kind, k in sizes if kind == "type")
        tags = sorted(k for kind, k in sizes if kind == "tag")
    else:
        types, tags = await _distinct_types_and_tags(session)
    summaries = [SegmentSummary(d.slug, d.name, d.description, sizes.get(("seg", d.slug)))
                 for d in fixed]
    for kind, prefix, values in (("type", "type:", types), ("tag", "tag:", tags)):
        for value in values:
            family = family_definition(prefix + value)
            if family is not None:
                summaries.append(SegmentSummary(family.slug, family.name, family.description,
                                                sizes.get((kind, value))))
    return summaries


def _distinct(column: Any, table: Any, label: str) -> Select[Any]:
    """Distinct values by hopping the index (a loose index scan): one seek per value."""
    start = select(func.min(column).label("v")).select_from(table)
    values = start.cte(f"{label}_values", recursive=True)
    step = select(func.min(column)).select_from(table).where(column > values.c.v)
    values = values.union_all(select(step.scalar_subquery()).where(values.c.v.is_not(None)))
    return select(literal(label).label("kind"), values.c.v).where(values.c.v.is_not(None))


async def _distinct_types_and_tags(session: AsyncSession) -> tuple[list[str], list[str]]:
    query = union_all(_distinct(Patient.patient_type, Patient, "type"),
                      _distinct(PatientTag.tag, PatientTag, "tag"))
    rows = (await session.execute(query)).all()
    return (sorted(v for kind, v in rows if kind == "type"),
            sorted(v for kind, v in rows if kind == "tag"))
