"""The project's custom search attributes as typed keys.

Imported by workflows, so it must stay sandbox-safe: only `temporalio.common`.
Search attributes are stored unencrypted: ids and codes only, never personal data.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

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

DEV_SERVER_ARGS: list[str] = [
    arg for name, typ in DEFINITIONS.items() for arg in ("--search-attribute", f"{name}={typ}")
]
