"""Recorded models that can grow: a field added after a model was first recorded is left out of
the JSON while it holds its "absent" value.

Events, and the task spec inside `TaskAssigned`, are compared byte for byte when an auditor
replays an old history with new code. A new optional field that always serialised (even as
`null`) would make every old event "differ" from what the same code now produces; leaving it
out while absent keeps old and new records of the same fact identical, and an old record
without the field still parses (the field takes its default).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

_ADDED = "duban_added"


def added(default: Any = None, **kwargs: Any) -> Any:
    """A field added to an already-recorded model: omitted from its JSON while it equals
    `default` (None unless told), so records made before it existed stay byte-identical."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[_ADDED] = True
    return Field(default, json_schema_extra=extra, **kwargs)


class Record(BaseModel):
    """Base of recorded models whose later fields are declared with `added()`."""

    _added_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        found: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and extra.get(_ADDED):
                found[name] = info.default
        cls._added_defaults = found

    @model_serializer(mode="wrap")
    def _omit_absent_added_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name, default in type(self)._added_defaults.items():
                if name in data and getattr(self, name) == default:
                    del data[name]
        return data
