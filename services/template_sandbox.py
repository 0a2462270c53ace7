"""The Jinja2 sandbox that keeps the limits of template_bounds.py: bounded filters and tests,
the sandbox's call/operator/attribute hooks, and `_Bounder`, which rewrites each parsed
template so that what the hooks cannot see (`~`, comparisons, loop iterations, macro and
block bodies) passes through them too."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import Any

from jinja2 import (
    StrictUndefined,
    nodes,
    pass_context,
)
from jinja2.runtime import (
    BlockReference,
    Context,
    LoopContext,
    Macro,
    Undefined,
    markup_join,
    str_join,
)
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from services.template_bounds import (
    _FILTER_SIZES,
    _ITERATING_FILTERS,
    _MATERIALISED_FILTERS,
    _NON_TEXT_FILTERS,
    DIGITS_MAX,
    ITEMS_MAX,
    MAX_REPEAT,
    TEXT_MAX,
    _budget,
    _checked_method,
    _fits,
    _length,
    _made,
    _printf_size,
)


def _passing(func: Callable[..., Any]) -> str | None:
    """Which first argument Jinja hands a filter or test (`pass_context` and friends)."""
    return getattr(getattr(func, "jinja_pass_arg", None), "name", None)


def _call_as_jinja(func: Callable[..., Any], passes: str | None, context: Context, *args: Any,
                   **kwargs: Any) -> Any:
    if passes == "context":
        return func(context, *args, **kwargs)
    if passes == "eval_context":
        return func(context.eval_ctx, *args, **kwargs)
    if passes == "environment":
        return func(context.environment, *args, **kwargs)
    return func(*args, **kwargs)


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    passes, size_of = _passing(func), _FILTER_SIZES.get(name)

    # pass_context also keeps Jinja from running the filter at compile time, unbudgeted.
    @pass_context
    def bounded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if name in _MATERIALISED_FILTERS and not isinstance(value, Sized | Undefined):
            value = list(value)  # a one-shot iterable, to be measured then used
        steps = _length(value) if name in _ITERATING_FILTERS else 0
        budget.step(1 + (steps // 8 if isinstance(value, str) else steps))
        if name not in _NON_TEXT_FILTERS:
            budget.text(value)
        if size_of is not None:
            _fits(size_of(value, *args, **kwargs))
        return _made(_call_as_jinja(func, passes, context, value, *args, **kwargs))

    return bounded


def _weighed_test(func: Callable[..., Any]) -> Callable[..., Any]:
    passes = _passing(func)

    @pass_context
    def weighed(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        for operand in (value, *args, *kwargs.values()):  # `in`, `eq`: they compare them all
            budget.text(operand)
        return _call_as_jinja(func, passes, context, value, *args, **kwargs)

    return weighed


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    """Every `{{ … }}` output, measured before it becomes text."""
    # Short texts (a patient's name) go free: this runs for every output of every email,
    # and the loop steps that could repeat them are paid for already.
    if value.__class__ is not str or len(value) > 100:
        _budget().text(value)
    return value


# --- Internal filters the rewritten template calls (names no template can spell) ------------


def _weigh(value: Any) -> Any:
    _budget().text(value)
    return value


def _charge(steps: int, chars: int) -> str:
    budget = _budget()
    budget.step(steps)
    budget.spend(chars)
    return ""


def _loop(iterable: Any, per_item: int) -> Any:
    budget = _budget()
    for item in iterable:
        budget.step(per_item)
        yield item


@pass_context
def _concat(context: Context, parts: tuple[Any, ...]) -> str:
    _fits(sum(_budget().text(part) for part in parts))
    return _made((markup_join if context.eval_ctx.autoescape else str_join)(parts))


_INTERNAL_FILTERS = {"@weigh": _weigh, "@charge": _charge, "@loop": _loop, "@concat": _concat}


def _internal(name: str, node: nodes.Expr, *args: int) -> nodes.Filter:
    return nodes.Filter(node, name, [nodes.Const(a) for a in args], [], None, None,
                        lineno=node.lineno)


def _weight(body: Iterable[nodes.Node]) -> tuple[int, int]:
    """Steps (nodes) and characters (template text) one run of `body` costs."""
    steps = chars = 0
    for statement in body:
        for node in (statement, *statement.find_all(nodes.Node)):
            steps += 1
            if isinstance(node, nodes.TemplateData):
                chars += len(node.data)
    return steps, chars


class _Bounder(NodeTransformer):
    """Routes what the sandbox's hooks cannot see through them: `~`, comparisons, loops and
    the bodies of macros, call blocks and blocks, which may run any number of times."""

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _internal("@concat", nodes.Tuple(node.nodes, "load", lineno=node.lineno))

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        self.generic_visit(node)
        node.expr = _internal("@weigh", node.expr)
        for operand in node.ops:
            operand.expr = _internal("@weigh", operand.expr)
        return node

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        # Items the `if` of the loop skips cost a step (and the test) too.
        per_item = 1 + (_weight([node.test])[0] if node.test is not None else 0)
        node.iter = _internal("@loop", node.iter, per_item)
        return self._charged_body(node)

    def _charged_body(self, node: Any) -> nodes.Node:
        if not isinstance(node, nodes.For):
            self.generic_visit(node)
        # A macro's defaults are evaluated on every call that leaves them out; and even an
        # empty macro costs a step, since `l.sort(key=m)` calls it without the sandbox seeing.
        steps, chars = _weight([*node.body, *getattr(node, "defaults", ())])
        charge = _internal("@charge", nodes.Const(1 + steps, lineno=node.lineno), chars)
        node.body.insert(0, nodes.ExprStmt(charge, lineno=node.lineno))
        return node

    visit_Macro = visit_CallBlock = visit_Block = _charged_body


class _Sandbox(SandboxedEnvironment):
    """The sandbox, bounded: see the module docstring."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        # Not optimized: the optimizer would evaluate constant parts at compile time, unbudgeted.
        super().__init__(undefined=StrictUndefined, autoescape=autoescape,
                         keep_trailing_newline=True, optimized=False, finalize=_finalize)
        self.globals.clear()  # no range(), lipsum(), …: a message needs only its variables
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(_INTERNAL_FILTERS)
        self.tests = {name: _weighed_test(f) for name, f in self.tests.items()}

    def compile(self, source: Any, name: str | None = None, filename: str | None = None,
                raw: bool = False, defer_init: bool = False) -> Any:
        tree = self.parse(source, name, filename) if isinstance(source, str) else source
        tree = _Bounder().visit(tree)
        tree.set_environment(self)
        return super().compile(tree, name, filename, raw, defer_init)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        if isinstance(obj, LoopContext):  # a recursive loop runs over its argument
            budget.step(sum(_length(a) for a in args))
        elif not isinstance(obj, Macro | BlockReference | Undefined):
            # Macros and blocks pay for their bodies as they run; an undefined name raises.
            args = _checked_method(budget, obj, args, kwargs)
        budget.spend(sum(_length(a) for a in (*args, *kwargs.values())))  # `f(*list)`, too
        return _made(super().call(context, obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _budget().step()
        if operator == "**":
            raise SecurityError("the ** operator is not allowed")
        texts = (str, bytes, list, tuple)
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, texts) and isinstance(times, int) and (
                    len(sequence) * times > MAX_REPEAT
                ):
                    raise SecurityError("the repetition is too large")
            if isinstance(left, int) and isinstance(right, int):
                _fits(_length(left) + _length(right), DIGITS_MAX)
        elif operator == "+" and isinstance(left, texts) and isinstance(right, texts):
            limit = TEXT_MAX if isinstance(left, str | bytes) else ITEMS_MAX
            _fits(len(left) + len(right), limit)
        elif operator == "%" and isinstance(left, str | bytes):
            _fits(_printf_size(left, right))
        return _made(super().call_binop(context, operator, left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _budget().step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _budget().step()
        value = super().getitem(obj, argument)
        return _made(value) if isinstance(argument, slice) else value  # a slice is a copy


_TEXT = _Sandbox(autoescape=False)
_HTML = _Sandbox(autoescape=True)
