"""Plan files (重点任务分解清单): YAML for engineers, XLSX for the task office, chosen by suffix.

`load_plan` also runs `validate_plan` and points each issue back at its row or line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from domain.ladder import Ladder
from domain.plan import Plan, PlanIssue, validate_plan
from planfiles.errors import PlanReadError, SourceMap
from planfiles.ladders import load_ladders
from planfiles.xlsx_format import read_xlsx_with_sources, write_plan_xlsx
from planfiles.yaml_format import read_yaml_with_sources, write_plan_yaml

__all__ = ["PlanReadError", "load_ladders", "load_plan", "read_plan", "write_plan"]


def read_plan(path: Path | str) -> Plan:
    """A plan from `.yaml`/`.yml` or `.xlsx`, by suffix. Raises `PlanReadError`."""
    return _read_with_sources(Path(path))[0]


def load_plan(path: Path | str, ladders: Mapping[str, Ladder] | None = None) -> Plan:
    """`read_plan`, then `validate_plan`: every issue located in the file (sheet/row or line)."""
    p = Path(path)
    plan, sources = _read_with_sources(p)
    lads = dict(ladders) if ladders is not None else load_ladders()
    issues = validate_plan(plan, lads)
    if issues:
        raise PlanReadError(p, [_locate(i, sources) for i in issues], issues)
    return plan


def write_plan(plan: Plan, path: Path | str) -> None:
    """Write as YAML or XLSX, by suffix."""
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml"):
        write_plan_yaml(plan, p)
    elif p.suffix.lower() == ".xlsx":
        write_plan_xlsx(plan, p)
    else:
        raise ValueError(f"{p}: unknown plan format {p.suffix!r} (use .yaml, .yml or .xlsx)")


def _read_with_sources(path: Path) -> tuple[Plan, SourceMap]:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return read_yaml_with_sources(path)
    if suffix == ".xlsx":
        return read_xlsx_with_sources(path)
    raise PlanReadError(path, [f"unknown plan format {path.suffix!r} (use .yaml, .yml or .xlsx)"])


def _locate(issue: PlanIssue, sources: SourceMap) -> str:
    where = issue.where
    while where and where not in sources:
        where = where.rpartition(".")[0]
    if where:
        return f"{' / '.join(sources[where])}: {issue}"
    return str(issue)
