"""The KeyTask workflow's input: kept outside the workflow module so the sandbox passes it
through and the pydantic data converter sees one class, not a per-sandbox copy."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from domain.identity import AuthPolicy
from domain.plan import TaskSpec
from domain.state import TaskState


class Carried(BaseModel):
    """What a continued run starts from: the folded state and the latest events (for queries).

    `pending`: events the previous run decided but did not record, in seq order; `state` is
    then the state as recorded (at `recorded_seq`), and the new run folds and records
    `pending` first. Runs before this field carried the whole state and no pending events."""

    model_config = ConfigDict(frozen=True)
    state: TaskState
    recent: list[dict[str, Any]]
    recorded_seq: int
    pending: list[dict[str, Any]] = []
    # Signals the previous run received but had not decided, oldest first: {"name", "payloads"}
    # (each argument as sent, base64 of its protobuf), decided by the new run before later ones.
    signals: list[dict[str, Any]] = []


class KeyTaskInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    spec: TaskSpec
    carried: Carried | None = None
    # Tests lower this to exercise continue-as-new; production follows the engine's suggestion.
    continue_after_events: int | None = None
    # Who may be believed about a command's actor (trusted senders' keys, whether unsigned
    # commands are refused): recorded here so a replay needs no key file. None: unsigned
    # commands are taken as self-asserted (tasks started before signed commands existed).
    auth: AuthPolicy | None = None
