"""Search attributes a KeyTask carries from its start, so a freshly loaded plan is listable by
plan, task, unit and light before its first wake-up."""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributePair, TypedSearchAttributes

from domain.plan import TaskSpec
from infra import search_attributes as sa


def initial_search_attributes(spec: TaskSpec) -> TypedSearchAttributes:
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.PLAN, spec.plan_code),
        SearchAttributePair(sa.TASK, spec.task_code),
        SearchAttributePair(sa.UNIT, spec.unit.code),
        SearchAttributePair(sa.LIGHT, "green"),
        SearchAttributePair(sa.STATUS, "assigned"),
        SearchAttributePair(sa.LEVEL, 0),
    ]
    if spec.parent_unit is not None:
        pairs.append(SearchAttributePair(sa.PARENT_UNIT, spec.parent_unit.code))
    return TypedSearchAttributes(pairs)
