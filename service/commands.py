"""The one path a command takes from a front door (starter.py, the web app) to its task.

Checked here first, so a bad command gets a clear error and nothing is sent: its size (before
anything else reads it), then its fields. Then it is signed (when the sender holds a key) for
the actor it names, and sent as a Temporal update, whose refusal comes back as CommandRefused.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from domain.commands import Rejection, parse_command, size_rejection
from domain.identity import ASSERTION_KEY
from infra.signing import Signer
from infra.temporal.client import command_size


class CommandRefused(Exception):
    """Why a command was not accepted: refused here (nothing sent) or by the task."""

    def __init__(self, code: str, reason: str, field: str | None = None,
                 sent: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.field = field  # the payload field at fault, when one is ("findings.0.description")
        self.sent = sent  # True: the task refused it (and recorded the attempt)


def prepare(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as JSON values (None fields dropped), checked as the task would check it."""
    own = {k: v for k, v in payload.items() if v is not None and k != ASSERTION_KEY}
    data: dict[str, Any] = json.loads(json.dumps(own, default=str))
    too_large = size_rejection(name, command_size(data))
    if too_large is not None:
        raise CommandRefused(too_large.code, too_large.reason)
    parsed = parse_command(name, data)
    if isinstance(parsed, Rejection):
        raise CommandRefused(parsed.code, parsed.reason, _field_of(name, data))
    return data


def _field_of(name: str, data: dict[str, Any]) -> str | None:
    """The first field pydantic names in its refusal of `data`."""
    from pydantic import ValidationError

    from domain.commands import COMMANDS

    model = COMMANDS.get(name)
    if model is None:
        return None
    try:
        model.model_validate(data, context={"lax": False})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors and errors[0]["loc"]:
            return ".".join(str(x) for x in errors[0]["loc"])
    return None


async def send_command(client: Any, task_id: str, name: str, payload: dict[str, Any], *,
                       signer: Signer | None = None, as_signal: bool = False,
                       now: dt.datetime | None = None) -> dict[str, Any]:
    """Send one command to a task and return the task's answer (the events it caused).

    `now`: the time the signature is dated (default the wall clock; the task refuses one far
    from its own clock)."""
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError

    data = prepare(name, payload)
    if signer is not None:
        data = signer.sign(task_id, name, data, now)
    handle = client.get_workflow_handle(task_id)
    try:
        if as_signal:
            await handle.signal(name, data)
            return {"signalled": name, "task_id": task_id}
        answer: dict[str, Any] = await handle.execute_update(name, data)
        return answer
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        kind = str(getattr(cause, "type", "") or "")
        code = kind.removeprefix("Rejected.") if kind.startswith("Rejected.") else "refused"
        message = getattr(cause, "message", None) or str(cause or exc)
        raise CommandRefused(code, message, sent=True) from None
    except RPCError as exc:
        raise CommandRefused("unavailable", f"{task_id}: {exc.message}") from None
