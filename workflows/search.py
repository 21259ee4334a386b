"""Duban's custom search attributes: their keys, their types for registration, and the values a
KeyTask carries from its start, so a freshly loaded plan is listable by plan, task, unit and
light before its first wake-up.

Sandbox-safe (only `temporalio.common` and pure domain models). Search attributes are stored
unencrypted: ids and codes only, never personal data.
"""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from domain.plan import TaskSpec

PLAN = SearchAttributeKey.for_keyword("DubanPlan")
TASK = SearchAttributeKey.for_keyword("DubanTask")
UNIT = SearchAttributeKey.for_keyword("DubanUnit")
PARENT_UNIT = SearchAttributeKey.for_keyword("DubanParentUnit")
LIGHT = SearchAttributeKey.for_keyword("DubanLight")
STATUS = SearchAttributeKey.for_keyword("DubanStatus")
NEXT_DUE = SearchAttributeKey.for_datetime("DubanNextDue")
LEVEL = SearchAttributeKey.for_int("DubanLevel")

ALL = (PLAN, TASK, UNIT, PARENT_UNIT, LIGHT, STATUS, NEXT_DUE, LEVEL)

# {"DubanPlan": "Keyword", ...}: the names `temporal server start-dev --search-attribute NAME=TYPE`
# takes, and what a cluster operator registers in production.
DEFINITIONS: dict[str, str] = {
    **{k.name: "Keyword" for k in (PLAN, TASK, UNIT, PARENT_UNIT, LIGHT, STATUS)},
    NEXT_DUE.name: "Datetime",
    LEVEL.name: "Int",
}


def initial_search_attributes(spec: TaskSpec) -> TypedSearchAttributes:
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(PLAN, spec.plan_code),
        SearchAttributePair(TASK, spec.task_code),
        SearchAttributePair(UNIT, spec.unit.code),
        SearchAttributePair(LIGHT, "green"),
        SearchAttributePair(STATUS, "assigned"),
        SearchAttributePair(LEVEL, 0),
    ]
    if spec.parent_unit is not None:
        pairs.append(SearchAttributePair(PARENT_UNIT, spec.parent_unit.code))
    return TypedSearchAttributes(pairs)
