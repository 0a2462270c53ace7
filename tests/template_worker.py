"""A child process that validates and renders templates, for the tests of hostile templates.

A template that hangs or allocates gigabytes (as they all did before renders were bounded)
then fails its test after a timeout, under a memory cap, instead of stalling or swelling the
test run; the next test gets a fresh child.
"""

from __future__ import annotations

import multiprocessing
import resource
from collections.abc import Iterator, Mapping
from multiprocessing.connection import Connection
from typing import Any

TIMEOUT_SECONDS = 15.0  # generous: bounded renders take milliseconds; this only catches hangs
MEMORY_CAP = 2 * 1024**3


def _serve(connection: Connection) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    from services.personalisation import PersonalisationError, render_text, template_problem

    while True:
        try:
            kind, source, values = connection.recv()
        except EOFError:
            return
        try:
            if kind == "problem":
                answer: tuple[str, Any] = ("ok", template_problem(source))
            else:
                text = render_text(source, values)
                answer = ("ok", text if len(text) <= 10_000 else f"<{len(text)} characters>")
        except PersonalisationError as exc:
            answer = ("refused", str(exc))
        except BaseException as exc:  # reported to the test, which fails
            answer = ("crashed", f"{type(exc).__name__}: {exc}")
        connection.send(answer)


class TemplateWorker:
    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._connection, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child,), daemon=True)
        self._process.start()
        child.close()

    def _ask(self, kind: str, source: str, values: Mapping[str, Any] | None) -> tuple[str, Any]:
        self._connection.send((kind, source, dict(values or {})))
        if not self._connection.poll(TIMEOUT_SECONDS):
            self.close()
            self._start()
            raise AssertionError(f"still working on the template after {TIMEOUT_SECONDS} s")
        return self._connection.recv()  # type: ignore[no-any-return]

    def problem(self, source: str) -> str | None:
        """`template_problem(source)`, in the child; fails the test if that crashes."""
        status, answer = self._ask("problem", source, None)
        assert status == "ok", answer
        return answer  # type: ignore[no-any-return]

    def render(self, source: str, values: Mapping[str, Any]) -> tuple[str, str]:
        """("ok", the text) or ("refused", why) for `render_text`, in the child."""
        status, answer = self._ask("render", source, values)
        assert status != "crashed", answer
        return status, answer

    def close(self) -> None:
        self._process.kill()
        self._process.join()
        self._connection.close()


def running_worker() -> Iterator[TemplateWorker]:
    """For a module-scoped fixture: one child for the module's tests."""
    worker = TemplateWorker()
    yield worker
    worker.close()
