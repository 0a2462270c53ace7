"""Personalisation: a campaign's subject and message are Jinja2 templates, rendered in a sandbox.

Only a fixed set of variables exists (VARIABLES); any other name, a syntax error or an unsafe
operation is found when the campaign is validated (`template_problem`), never at send time.
Compiled templates are cached: a campaign of 500 patients compiles its message once.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from services.models import Patient

VARIABLES: tuple[str, ...] = ("first_name", "last_name", "full_name", "patient_type", "clinic_name")
MAX_REPEAT = 10_000  # `"x" * n` beyond this is a mistake or an attack, not a message

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


class PersonalisationError(ValueError):
    """A template that cannot be rendered; the message names the problem."""


class _Sandbox(SandboxedEnvironment):
    """The sandbox, also refusing `**` and huge repetitions (memory exhaustion)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            raise SecurityError("the ** operator is not allowed")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(times, int)
                    and len(sequence) * times > MAX_REPEAT
                ):
                    raise SecurityError("the repetition is too large")
        return super().call_binop(context, operator, left, right)


def _environment(*, autoescape: bool) -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True)
    env.globals.clear()  # no range(), lipsum(), …: a message needs only its variables
    return env


_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


@lru_cache(maxsize=256)
def _compiled(source: str, *, as_html: bool) -> Template:
    if not as_html:
        return _TEXT.from_string(source)
    # The message is plain text: in HTML its own characters are escaped too (not only the
    # patient data that autoescape covers), and its line breaks are kept.
    tree = _HTML.parse(source)
    for node in tree.find_all(nodes.TemplateData):
        node.data = html.escape(node.data, quote=False).replace("\n", "<br>\n")
    return _HTML.from_string(tree)


def _values(patient_vars: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(patient_vars.get(name) or "") for name in VARIABLES}


def _render(source: str, patient_vars: Mapping[str, Any], *, as_html: bool) -> str:
    try:
        return _compiled(source, as_html=as_html).render(_values(patient_vars))
    except Exception as exc:
        raise PersonalisationError(_describe(exc)) from exc


def render_text(template_source: str, patient_vars: Mapping[str, Any]) -> str:
    """The template rendered as plain text (SMS, email subject and text part)."""
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
        tree = _TEXT.parse(source)
        unknown = sorted(meta.find_undeclared_variables(tree) - set(VARIABLES))
    except TemplateSyntaxError as exc:  # also unknown filters and tests
        return _describe(exc)
    if unknown:
        names = ", ".join(f"{{{{ {name} }}}}" for name in unknown)
        known = ", ".join(VARIABLES)
        plural = "s" if len(unknown) > 1 else ""
        return f"uses unknown variable{plural} {names}; the variables are {known}"
    try:
        for sample in _SAMPLES:
            render_text(source, sample)
            render_html(source, sample)
    except PersonalisationError as exc:
        return str(exc)
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"has a template error on line {exc.lineno}: {exc.message}"
    if isinstance(exc, SecurityError):
        return f"does something a template may not do: {exc}"
    if isinstance(exc, TemplateError):
        return f"cannot be personalised: {exc.message or exc}"
    return f"cannot be personalised: {type(exc).__name__}: {exc}"
