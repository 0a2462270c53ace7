"""Personalisation: a campaign's subject and message are Jinja2 templates, rendered in a sandbox.

Only a fixed set of variables exists (VARIABLES); any other name, a syntax error or an unsafe
operation is found when the campaign is validated (`template_problem`), never at send time.
Compiled templates are cached: a campaign of 500 patients compiles its message once.

Every render is bounded by construction, the same at validation and at send time (SPEC §7).
No text a template makes, and no rendered message, passes TEXT_MAX characters; no list passes
ITEMS_MAX items; and each render has a budget of steps (calls, filters, loop iterations, each
weighed by the template code it runs) and of characters made along the way. An operation whose
result would pass a limit is refused *before* it runs (`"x"|center(10**8)` never allocates),
so every render ends in milliseconds. A deadline backs this up, but only as a last resort: a
render runs in some thread, and nothing can stop a thread from outside.

The sandbox's hooks (`call`, `call_binop`, `getattr`, `getitem`, every filter and test,
`finalize`) see most of what a template does; `_Bounder` rewrites each parsed template so that
the rest (`~`, comparisons, loop iterations, macro and block bodies) passes through them too.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from contextlib import closing
from functools import lru_cache
from typing import Any

from jinja2 import (
    Template,
    TemplateError,
    TemplateSyntaxError,
    meta,
    nodes,
)
from jinja2.sandbox import SecurityError

from services.models import Patient
from services.template_bounds import (
    DIGITS_MAX,
    TEXT_MAX,
    PersonalisationError,
    _Budget,
    _current,
    _Refused,
    _TooLong,
)
from services.template_sandbox import _HTML, _TEXT

VARIABLES: tuple[str, ...] = ("first_name", "last_name", "full_name", "patient_type", "clinic_name")
# Rendered during validation: once with typical values and once with every value empty
# (a patient with no name on file), so a template that fails for either fails early.
SAMPLE_VALUES: dict[str, str] = {
    "first_name": "Ana",
    "last_name": "García",
    "full_name": "Ana García",
    "patient_type": "adult",
    "clinic_name": "Clinic",
}
_SAMPLES: tuple[dict[str, str], ...] = (SAMPLE_VALUES, dict.fromkeys(VARIABLES, ""))


@lru_cache(maxsize=256)
def _compiled(source: str, *, as_html: bool) -> tuple[Template, list[str]]:
    """The template, and the names it uses that are not VARIABLES (parsed once for both:
    parsing and compiling are most of what validating a long message costs)."""
    environment = _HTML if as_html else _TEXT
    tree = environment.parse(source)
    unknown = sorted(meta.find_undeclared_variables(tree) - set(VARIABLES))
    if as_html:
        # The message is plain text: in HTML its own characters are escaped too (not only
        # the patient data that autoescape covers), and its line breaks are kept.
        for node in tree.find_all(nodes.TemplateData):
            node.data = html.escape(node.data, quote=False).replace("\n", "<br>\n")
    return environment.from_string(tree), unknown


def _values(patient_vars: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(patient_vars.get(name) or "") for name in VARIABLES}


def _render(source: str, patient_vars: Mapping[str, Any], *, as_html: bool) -> str:
    try:
        template, _unknown = _compiled(source, as_html=as_html)
        token = _current.set(_Budget())  # after compiling: only the render is on the clock
        try:
            pieces, length = [], 0
            with closing(template.generate(_values(patient_vars))) as generated:
                for piece in generated:  # a bounded buffer, whatever the pieces cost
                    length += len(piece)
                    if length > TEXT_MAX:
                        raise _TooLong()
                    pieces.append(piece)
            return "".join(pieces)
        finally:
            _current.reset(token)
    except Exception as exc:
        raise PersonalisationError(_describe(exc, source)) from exc


def render_text(template_source: str, patient_vars: Mapping[str, Any]) -> str:
    """The template rendered as plain text (SMS, email subject and text part), bounded."""
    return _render(template_source, patient_vars, as_html=False)


def render_html(template_source: str, patient_vars: Mapping[str, Any]) -> str:
    """The template rendered as an HTML fragment: text and patient data escaped, `<br>` lines."""
    return _render(template_source, patient_vars, as_html=True)


def variables_for(patient: Patient, clinic_name: str) -> dict[str, str]:
    """The template variables for one patient."""
    first, last = (patient.first_name or "").strip(), (patient.last_name or "").strip()
    return {
        "first_name": first,
        "last_name": last,
        "full_name": f"{first} {last}".strip(),
        "patient_type": patient.patient_type or "",
        "clinic_name": clinic_name,
    }


def template_problem(source: str) -> str | None:
    """Why `source` is not a usable template (for a field error), or None when it is."""
    try:
        _template, unknown = _compiled(source, as_html=False)
    except Exception as exc:  # syntax, unknown filters and tests, nesting, huge numbers
        return _describe(exc, source)
    if unknown:
        names = ", ".join(f"{{{{ {name} }}}}" for name in unknown)
        known = ", ".join(VARIABLES)
        plural = "s" if len(unknown) > 1 else ""
        return f"uses unknown variable{plural} {names}; the variables are {known}"
    try:
        for sample in _SAMPLES:  # as sending renders it: the email's HTML part comes from this
            render_text(source, sample)
    except PersonalisationError as exc:
        return str(exc)
    return None


# A tag, skipping what its quoted strings hold (`{{ "{:{w}}".format(…) }}` is one tag).
_TAG = re.compile(r"""\{([{%])(?:"[^"]*"|'[^']*'|[^"'}%]|[}%](?!\}))*[}%]\}""")


def _spot(exc: BaseException, source: str | None) -> str | None:
    """Where in the template `exc` happened, in words: the tag itself if it can be told."""
    line = None
    traceback = exc.__traceback__
    while traceback is not None:  # Jinja maps the template's frames to its own line numbers
        if traceback.tb_frame.f_code.co_filename == "<template>":
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    if line is None or source is None:
        return None
    lines = re.split(r"\r\n|\r|\n", source)  # the line breaks Jinja counts
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    tags = [m.group() for m in _TAG.finditer(text)] if len(text) <= 500 else []
    if len(tags) == 1 and len(tags[0]) <= 80:
        return tags[0]
    return f"line {line}"


def _describe(exc: BaseException, source: str | None = None) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"has a template error on line {exc.lineno}: {exc.message}"
    if isinstance(exc, _Refused):
        return exc.explain(_spot(exc, source))
    if isinstance(exc, MemoryError):
        return _TooLong().explain(_spot(exc, source))
    if isinstance(exc, RecursionError | SyntaxError):  # Python's own limits on nesting
        return "is nested too deeply, or calls itself without end; simplify it"
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return f"has a number of more than {DIGITS_MAX:,} digits"
    if isinstance(exc, SecurityError):
        return f"does something a template may not do: {exc}"
    if isinstance(exc, TemplateError):
        return f"cannot be personalised: {exc.message or exc}"
    return f"cannot be personalised: {type(exc).__name__}: {exc}"
