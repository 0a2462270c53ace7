"""Personalisation: sandboxed Jinja2 with a fixed set of variables, checked before sending."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services import template_bounds
from services.models import Patient
from services.personalisation import (
    PersonalisationError,
    render_html,
    render_text,
    template_problem,
    variables_for,
)
from tests.template_worker import TemplateWorker, running_worker

ANA = {"first_name": "Ana", "last_name": "López", "full_name": "Ana López",
       "patient_type": "adult", "clinic_name": "Clínica Sol"}


def test_render_text_fills_the_variables() -> None:
    text = render_text("Hola {{ first_name }} ({{ full_name }}), de {{ clinic_name }}.", ANA)
    assert text == "Hola Ana (Ana López), de Clínica Sol."


def test_missing_patient_data_renders_empty_not_undefined() -> None:
    assert render_text("Hola {{ first_name }}!", {"first_name": None}) == "Hola !"
    template = "{% if first_name %}Hola {{ first_name }}{% else %}Hola{% endif %}"
    assert render_text(template, {}) == "Hola"


def test_render_html_escapes_patient_data_and_the_text_itself() -> None:
    evil = {**ANA, "first_name": "<script>alert(1)</script>"}
    html = render_html("Dear {{ first_name }} & <b>friends</b>\nSee you", evil)
    assert html == (
        "Dear &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;friends&lt;/b&gt;<br>\nSee you"
    )
    assert render_text("{{ first_name }}", evil) == "<script>alert(1)</script>"


def test_variables_for_a_patient() -> None:
    patient = Patient(first_name=" Ana ", last_name="López", patient_type=None)
    assert variables_for(patient, "Clínica Sol") == {
        "first_name": "Ana", "last_name": "López", "full_name": "Ana López",
        "patient_type": "", "clinic_name": "Clínica Sol",
    }


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("Hola {{ first_name ", "has a template error on line 1:"),
        ("Hola\n{% if first_name %}", "has a template error on line 2:"),
        ("Hola {{ frist_name }}", "uses unknown variable {{ frist_name }}; the variables are "
                                  "first_name, last_name, full_name, patient_type, clinic_name"),
        ("{{ a }} {{ b }}", "uses unknown variables {{ a }}, {{ b }};"),
        ("{{ first_name | shout }}", "has a template error on line 1: No filter named 'shout'"),
        ("{{ first_name.__class__ }}", "does something a template may not do:"),
        ("{{ 'x' * 100000 }}", "does something a template may not do: the repetition"),
        ("{{ lipsum(100000) }}", "uses unknown variable {{ lipsum }}"),
        ("{{ first_name[0] }}", "cannot be personalised:"),  # a patient without a first name
        ("{{ first_name.nope }}", "cannot be personalised:"),
    ],
)
def test_template_problems_are_named(template: str, problem: str) -> None:
    found = template_problem(template)
    assert found is not None and found.startswith(problem), found


@pytest.mark.parametrize(
    "template",
    ["Plain text, no variables at all.", "{{ first_name | title }} {{ last_name | upper }}",
     "{% if patient_type == 'child' %}Kids{% else %}Adults{% endif %}"],
)
def test_good_templates_have_no_problem(template: str) -> None:
    assert template_problem(template) is None


def test_render_errors_are_typed() -> None:
    with pytest.raises(PersonalisationError, match="has a template error"):
        render_text("{{ oops", ANA)


# --- Bounded renders (SPEC §7): hostile templates are refused fast, in plain words ------------
# Each runs in a child process (tests/template_worker.py): before renders were bounded these
# hung or allocated gigabytes, and must fail their test rather than stall the run.

TOO_LONG = "would grow too long when personalised ("
TOO_MUCH_WORK = "takes too much work to personalise ("


@pytest.fixture(scope="module")
def template_worker() -> Iterator[TemplateWorker]:
    yield from running_worker()


DOUBLING = '{% set s = "x" * 10000 %}' + "{% set s = s ~ s %}" * 30 + "{{ s|length }}"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ('{{ "x"|center(150000000) }}', TOO_LONG + '{{ "x"|center(150000000) }} makes text of '
                                                  "more than 200,000 characters)"),
        ('{{ "x".center(150000000) }}', TOO_LONG + '{{ "x".center(150000000) }} makes text'),
        ('{{ "%999999999d" % 1 }}', TOO_LONG + '{{ "%999999999d" % 1 }} makes text'),
        ('{{ "%999999999s"|format(1) }}', TOO_LONG),
        ('{{ "{:>999999999}".format(1) }}', TOO_LONG),
        ('{{ "{:{w}}".format(1, w=999999999) }}', TOO_LONG),
        ('{{ "a\\nb"|indent(150000000, true) }}', TOO_LONG),
        ('{{ ("x" * 10000)|replace("x", "x" * 10000) }}', TOO_LONG),
        ('{{ ("x" * 10000)|join("y" * 10000) }}', TOO_LONG),
        ('{{ ("x" * 10000)|wordwrap(1, wrapstring="y" * 10000) }}', TOO_MUCH_WORK),
        ('{{ (1).to_bytes(999999999, "big")|length }}', TOO_LONG),
        (DOUBLING, TOO_LONG + "line 1 makes text of more than 200,000 characters)"),
        ('{% set s = "x" * 10000 %}' + "{% set s = s + s %}" * 30, TOO_LONG),
        ('{% set l = ["x"] %}' + "{% set l = l + l %}" * 30,
         TOO_LONG + "line 1 makes a list of more than 10,000 items)"),
        ("{% set n = 99999999 %}" + "{% set n = n * n %}" * 30,
         TOO_LONG + "line 1 makes a number of more than 1,000 digits)"),
        ('{% set s = "x" * 10000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}',
         TOO_MUCH_WORK + "line 1 loops or calls more than 10,000 times); simplify it"),
        ('{% set l = [] %}{% for i in "x" * 10000 %}{{ l.extend(l) if l else l.append(1) }}'
         "{% endfor %}", TOO_LONG),
        ('{% set s %}{% for i in "x" * 10000 %}{{ "y" * 10000 }}{% endfor %}{% endset %}'
         "{{ s|length }}", TOO_MUCH_WORK),
        ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
         "{{ f(40) }}", TOO_MUCH_WORK),
        ('{% set y = "y" * 10000 %}' + "{{ y }}" * 25,
         TOO_LONG + "the message makes text of more than 200,000 characters)"),
        ('{{ first_name.maketrans("a", "b") }}',
         "does something a template may not do: maketrans() cannot be used in a message"),
        ("{{ " + "9" * 5000 + " }}", "has a number of more than 1,000 digits"),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "is nested too deeply"),
        ("{% block b %}{{ self.b() }}{% endblock %}", "is nested too deeply"),
    ],
)
def test_hostile_templates_are_refused_in_plain_words(
    template_worker: TemplateWorker, template: str, problem: str
) -> None:
    found = template_worker.problem(template)
    assert found is not None and found.startswith(problem), found


def test_send_time_renders_keep_the_same_bounds(template_worker: TemplateWorker) -> None:
    # Only one patient's data makes it explode: validation cannot see it, sending must stop it.
    template = ('{% if first_name == "Zed" %}{{ "x"|center(150000000) }}{% endif %}'
                "Hi {{ first_name }}")
    assert template_worker.problem(template) is None
    assert template_worker.render(template, {"first_name": "Ana"}) == ("ok", "Hi Ana")
    status, reason = template_worker.render(template, {"first_name": "Zed"})
    assert (status, reason) == ("refused", TOO_LONG + "line 1 makes text of more than 200,000 "
                                                      "characters)")


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("{{ first_name }} {{ last_name }}", "ana López"),
        ("{{ first_name|title }} {{ last_name|upper }} {{ clinic_name|lower }}",
         "Ana LÓPEZ clínica sol"),
        ("{{ first_name|capitalize }}|{{ '  x  '|trim }}|", "Ana|x|"),
        ("{{ patient_type|default('friend', true) }} {{ first_name|d('you') }}", "friend ana"),
        ("{% if patient_type == 'child' %}Kids{% elif first_name %}Hi {{ first_name|title }}"
         "{% else %}Hi{% endif %}", "Hi Ana"),
        ("{{ first_name ~ ' ' ~ last_name }}", "ana López"),
        ("{% for word in ['a', 'b'] %}{{ loop.index }}{{ word }}{% endfor %}", "1a2b"),
        ("{% macro hi(n) %}Hi {{ n }}{% endmacro %}{{ hi(first_name) }}", "Hi ana"),
        ("{{ '%s!' % first_name }} {{ '{}?'.format(first_name) }} {{ '%d%%'|format(20) }}",
         "ana! ana? 20%"),
        ("[{{ 'ab'|center(6) }}] {{ 'a b c'|replace(' ', '-') }} {{ ['x', 'y']|join(', ') }}",
         "[  ab  ] a-b-c x, y"),
        ("{{ 'one two three'|truncate(9, true, '…', 0) }} {{ 'a'|indent(2, true) }}",
         "one two … " + "  a"),
        ("{{ '-' * 10 }}{{ 'abc'|length }}{{ first_name in full_name }}", "----------3False"),
    ],
)
def test_the_filters_and_tags_people_use_still_work(template: str, text: str) -> None:
    values = {**ANA, "first_name": "ana", "full_name": "Ana López", "patient_type": ""}
    assert template_problem(template) is None
    assert render_text(template, values) == text


def test_the_deadline_is_a_last_resort(monkeypatch: pytest.MonkeyPatch) -> None:
    # The budgets end every render long before; a machine slower than any seen still stops.
    monkeypatch.setattr(template_bounds, "DEADLINE_SECONDS", -1.0)
    assert template_problem("Hola {{ first_name|title }}, here is your offer.") == (
        "takes too long to personalise ({{ first_name|title }} runs past -1.0 seconds); "
        "simplify it"
    )
