"""Errors from reading plan and ladder files: every problem as one readable line, located in the file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from domain.plan import (
    PlanIssue,
)


class PlanReadError(ValueError):
    """A plan (or ladder) file that cannot be used; `problems` has one readable line each.

    `issues` holds the `validate_plan` issues when the file was read but the plan is invalid.
    """

    def __init__(
        self,
        path: Path | str,
        problems: Sequence[str],
        issues: Sequence[PlanIssue] = (),
        what: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        self.issues = list(issues)
        what = what or ("plan is invalid" if issues else "cannot read plan")
        super().__init__(f"{what}: {path}\n" + "\n".join(f"  - {p}" for p in self.problems))


SourceMap = dict[str, list[str]]
"""`validate_plan` locations ("tasks.lwzb.nodes.gs") → where they are in the file."""


def pydantic_lines(
    exc: ValidationError | Sequence[ErrorDetails], where: Callable[[tuple[int | str, ...]], str]
) -> list[str]:
    out = []
    for err in exc.errors() if isinstance(exc, ValidationError) else exc:
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        inp = err.get("input")
        if err.get("type") == "string_type" and isinstance(inp, int | float):
            msg += f" (write it as text, e.g. '{inp}')"
        elif not isinstance(inp, dict | list | tuple) and inp is not None:
            shown = repr(inp)
            msg += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
        out.append(f"{where(loc)}: {msg}")
    return out


def dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
