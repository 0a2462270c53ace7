"""Personalisation: sandboxed Jinja2 with a fixed set of variables, checked before sending."""

from __future__ import annotations

import pytest

from services.models import Patient
from services.personalisation import (
    PersonalisationError,
    render_html,
    render_text,
    template_problem,
    variables_for,
)

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
