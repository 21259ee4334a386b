"""Refusal reasons say what is required and what the actor has, once, and a refusal is final.

The update tests run on the time-skipping server: what a caller of `execute_update` sees.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from domain import commands as c
from domain.decide import decide
from tests.conftest import WORKFLOW_QUEUE as QUEUE
from tests.domain_strategies import Sim, build_spec, local
from tests.scenario import make_spec
from workflows.inputs import KeyTaskInput
from workflows.keytask import WORKFLOW_NAME
from workflows.search import initial_search_attributes

T0 = local(2026, 3, 2, 9)


def claimed() -> Sim:
    sim = Sim(build_spec(T0, due_days=(10, 20)), T0)
    sim.ok(c.ClaimNode(actor="unit.member", node="N1"), T0)
    return sim


def test_an_office_member_of_the_lead_unit_is_told_the_role_it_lacks() -> None:
    sim = claimed()
    refusal = decide(sim.state, c.AcceptNode(actor="office.staff", node="N1"), T0)
    assert isinstance(refusal, c.Rejection) and refusal.code == "unauthorised"
    why = refusal.reason
    # what is required: a supervisor, or the lead unit's lead/head/member ...
    assert "supervisor" in why and "lead, head or member" in why, why
    # ... and what the actor has: it is in the lead unit, as office
    assert "office.staff belongs to office (the lead unit) as office" in why, why


def test_the_extension_refusal_names_the_actor_and_its_roles() -> None:
    sim = claimed()
    sim.ok(c.RequestExtension(actor="unit.member", node="N2", reason="推迟",
                              proposed_due=sim.spec.nodes[1].due.date()), T0)
    refusal = decide(sim.state, c.DecideExtension(actor="lead.member", node="N2", approve=True), T0)
    assert isinstance(refusal, c.Rejection)
    assert "lead.member belongs to office (the lead unit) as member" in refusal.reason


# --- on the server -------------------------------------------------------------------------------

async def start(env: WorkflowEnvironment) -> WorkflowHandle[Any, Any]:
    now = await env.get_current_time()
    spec = make_spec(now, plan_code=f"p{uuid.uuid4().hex[:8]}")
    return await env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec), id=spec.task_id, task_queue=QUEUE,
        search_attributes=initial_search_attributes(spec))


def failure(info: pytest.ExceptionInfo[WorkflowUpdateFailedError]) -> ApplicationError:
    cause = info.value.cause
    assert isinstance(cause, ApplicationError), repr(cause)
    return cause


def messages(err: BaseException | None) -> list[str]:
    """The message of the failure and of every cause under it: what a caller can be shown."""
    out = []
    while err is not None:
        out.append(getattr(err, "message", None) or str(err))
        err = err.__cause__ or getattr(err, "cause", None)
    return out


async def test_a_validator_refusal_is_final_and_typed(ts_env: WorkflowEnvironment,
                                                      worker: None) -> None:
    handle = await start(ts_env)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("progress", {"actor": "unit.member", "percent": 150})
    err = failure(info)
    assert err.non_retryable is True
    assert err.type == "Rejected.malformed"
    assert "percent" in err.message
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("no_such_command", {"actor": "unit.member"})
    err = failure(info)
    assert err.non_retryable is True and err.type == "Rejected.unknown_command"


async def test_a_two_argument_update_says_so_once(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle = await start(ts_env)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("acknowledge", args=[{"actor": "unit.member"}, {"note": "x"}])
    err = failure(info)
    assert err.non_retryable is True and err.type == "Rejected.malformed"
    assert "exactly one" in err.message and "got 2" in err.message
    assert "undecodable" not in err.message  # it decoded fine; it had one argument too many
    shown = messages(err)
    assert sum(m.count("got 2") for m in shown) == 1, shown


async def test_an_undecodable_update_payload_is_refused_once(ts_env: WorkflowEnvironment,
                                                             worker: None) -> None:
    handle = await start(ts_env)
    raw = Payload(metadata={"encoding": b"json/plain"}, data=b"{not json")
    from temporalio.common import RawValue

    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("acknowledge", RawValue(raw))
    err = failure(info)
    assert err.non_retryable is True and err.type == "Rejected.malformed"
    assert err.message.startswith("undecodable payload")
    assert len(messages(err)) == 1, messages(err)
