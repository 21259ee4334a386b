"""Escalation ladders (督办阶梯) from YAML files: `domain/ladders/*.yaml` by default."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

import domain
from domain.ladder import Ladder, parse_ladder
from planfiles.errors import PlanReadError, dotted, pydantic_lines

LADDER_DIR = Path(domain.__file__).resolve().parent / "ladders"


def load_ladders(dir: Path = LADDER_DIR) -> dict[str, Ladder]:
    """Every `*.yaml` ladder in `dir`, by code. A bad file is named in the error."""
    directory = Path(dir)
    if not directory.is_dir():
        raise PlanReadError(directory, ["directory not found"], what="cannot load ladders")
    ladders: dict[str, Ladder] = {}
    origin: dict[str, Path] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            problems.append(f"{path}: not valid YAML: {e}")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path}: a ladder file must be a mapping (code, title, steps, ...)")
            continue
        try:
            ladder = parse_ladder(data)
        except ValidationError as e:
            problems.extend(f"{path}: {line}" for line in pydantic_lines(e, _ladder_where))
            continue
        if ladder.code in ladders:
            problems.append(
                f"{path}: ladder code {ladder.code!r} already defined in {origin[ladder.code]}"
            )
            continue
        ladders[ladder.code] = ladder
        origin[ladder.code] = path
    if problems:
        raise PlanReadError(directory, problems, what="cannot load ladders")
    return ladders


def _ladder_where(loc: tuple[int | str, ...]) -> str:
    return dotted(loc) or "ladder"
