"""Signed commands (身份核验): the workflow believes an actor only as its deployment says.

Domain checks of `prove` without a server, then the same cases through a real workflow on the
time-skipping server: valid, missing, forged, replayed with another payload, replayed as is,
and signed by an untrusted key -> accepted, or refused and recorded, as the policy says.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from domain.commands import Rejection
from domain.events import ActorProof
from domain.identity import ASSERTION_KEY, AuthPolicy, prove, split_assertion
from infra.signing import Signer, new_signer
from tests.conftest import WORKFLOW_QUEUE as QUEUE
from tests.scenario import make_spec
from workflows.inputs import KeyTaskInput
from workflows.keytask import WORKFLOW_NAME
from workflows.search import initial_search_attributes

NOW = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)
WEB = new_signer("web")
ROGUE = new_signer("rogue")
IMPOSTOR = new_signer("web")  # claims to be "web" but holds another key
REQUIRED = AuthPolicy(require_signed=True, trusted=(WEB.trusted(),))
ALLOWED = AuthPolicy(require_signed=False, trusted=(WEB.trusted(),))
TASK = "plan/T1/v01"


def check(policy: AuthPolicy | None, payload: dict[str, Any], *, command: str = "progress",
          task: str = TASK, now: dt.datetime = NOW,
          seen: frozenset[str] = frozenset()) -> ActorProof | Rejection:
    own, raw = split_assertion(payload)
    assert isinstance(own, dict)
    return prove(policy, workflow_id=task, command=command, payload=own, raw_assertion=raw,
                 actor=str(own["actor"]), now=now, seen=seen)


def progress(percent: int = 10, actor: str = "unit.member") -> dict[str, Any]:
    return {"actor": actor, "percent": percent, "note": "进度"}


def refused(result: ActorProof | Rejection, *words: str) -> str:
    assert isinstance(result, Rejection), result
    assert result.code == "unauthenticated"
    for w in words:
        assert w in result.reason, result.reason
    return result.reason


# --- the rule, without a server --------------------------------------------------------------

def test_a_signed_command_is_proven_by_its_sender_and_key() -> None:
    proof = check(REQUIRED, WEB.sign(TASK, "progress", progress(), NOW))
    assert isinstance(proof, ActorProof)
    assert proof.method == "signed" and proof.sender == "web"
    assert proof.key == WEB.fingerprint and proof.signed_at == NOW
    assert proof.assertion is not None and len(proof.assertion) == 32


def test_unsigned_is_self_asserted_where_allowed_and_refused_where_required() -> None:
    assert check(ALLOWED, progress()) == ActorProof(method="self_asserted")
    assert check(None, progress()) == ActorProof(method="self_asserted")
    refused(check(REQUIRED, progress()), "only signed commands", "unit.member")


@pytest.mark.parametrize("policy", [REQUIRED, ALLOWED], ids=["required", "allowed"])
def test_a_bad_signature_is_refused_whatever_the_policy(policy: AuthPolicy) -> None:
    refused(check(policy, IMPOSTOR.sign(TASK, "progress", progress(), NOW)), "does not verify")
    refused(check(policy, ROGUE.sign(TASK, "progress", progress(), NOW)), "'rogue'",
            "does not trust")
    signed = WEB.sign(TASK, "progress", progress(10), NOW)
    refused(check(policy, {**signed, "percent": 90}), "another payload")
    refused(check(policy, {**signed, "actor": "lead.head"}), "another actor")
    refused(check(policy, signed, task="plan/T1/v02"), "another workflow_id")
    refused(check(policy, signed, command="claim"), "another command")
    refused(check(policy, {**signed, ASSERTION_KEY: "garbage"}), "malformed")


def test_an_assertion_counts_once_and_only_while_fresh() -> None:
    signed = WEB.sign(TASK, "progress", progress(), NOW)
    proof = check(REQUIRED, signed)
    assert isinstance(proof, ActorProof) and proof.assertion is not None
    refused(check(REQUIRED, signed, seen=frozenset({proof.assertion})), "already used")
    late = NOW + dt.timedelta(seconds=REQUIRED.max_age_seconds + 1)
    refused(check(REQUIRED, signed, now=late), "signed 901 s ago")
    early = NOW - dt.timedelta(seconds=REQUIRED.max_skew_seconds + 1)
    refused(check(REQUIRED, signed, now=early), "ahead of the task's clock")


@settings(max_examples=60, deadline=None)
@given(percent=st.integers(0, 100), other=st.integers(0, 100),
       note=st.text(max_size=40), seconds=st.integers(0, 900))
def test_any_change_to_a_signed_payload_breaks_its_proof(percent: int, other: int, note: str,
                                                         seconds: int) -> None:
    signed = WEB.sign(TASK, "progress", {**progress(percent), "note": note}, NOW)
    later = NOW + dt.timedelta(seconds=seconds)
    assert isinstance(check(REQUIRED, signed, now=later), ActorProof)
    if other != percent:
        refused(check(REQUIRED, {**signed, "percent": other}, now=later), "another payload")


# --- through the workflow ----------------------------------------------------------------------

async def start(env: WorkflowEnvironment, policy: AuthPolicy | None) -> WorkflowHandle[Any, Any]:
    now = await env.get_current_time()
    spec = make_spec(now, plan_code=f"s{uuid.uuid4().hex[:8]}")
    return await env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec, auth=policy), id=spec.task_id, task_queue=QUEUE,
        search_attributes=initial_search_attributes(spec))


async def send(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], payload: dict[str, Any],
               signer: Signer | None = None, name: str = "progress") -> dict[str, Any]:
    if signer is not None:
        payload = signer.sign(handle.id, name, payload, await env.get_current_time())
    answer: dict[str, Any] = await handle.execute_update(name, payload)
    return answer


async def refusal(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any],
                  payload: dict[str, Any], signer: Signer | None = None) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await send(env, handle, payload, signer)
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "Rejected.unauthenticated", cause.type
    return cause.message


async def recorded(handle: WorkflowHandle[Any, Any], kind: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await handle.query("events")
    return [e for e in events if e["type"] == kind]


async def test_a_deployment_that_requires_signatures(ts_env: WorkflowEnvironment,
                                                     worker: None) -> None:
    handle = await start(ts_env, REQUIRED)
    # valid: accepted, and the event says how the actor was proven
    answer = await send(ts_env, handle, progress(20), WEB)
    assert answer["accepted"] is True
    [reported] = await recorded(handle, "ProgressReported")
    assert reported["actor"] == "unit.member" and reported["percent"] == 20
    assert reported["proof"]["method"] == "signed"
    assert reported["proof"]["sender"] == "web" and reported["proof"]["key"] == WEB.fingerprint
    # missing, forged, untrusted: refused, and each attempt recorded with its reason
    assert "only signed commands" in await refusal(ts_env, handle, progress(30))
    assert "does not verify" in await refusal(ts_env, handle, progress(30), IMPOSTOR)
    assert "does not trust" in await refusal(ts_env, handle, progress(30), ROGUE)
    # replayed with another payload
    signed = WEB.sign(handle.id, "progress", progress(40), await ts_env.get_current_time())
    assert "another payload" in await refusal(ts_env, handle, {**signed, "percent": 90})
    # replayed as it was: the first use counts, the second is refused
    assert (await send(ts_env, handle, signed))["accepted"] is True
    assert "already used" in await refusal(ts_env, handle, signed)

    rejected = await recorded(handle, "CommandRejected")
    assert [r["code"] for r in rejected] == ["unauthenticated"] * 5
    assert all(r["actor"] == "unit.member" and "proof" not in r for r in rejected)
    state = await handle.query("state")
    assert state["progress"] == 40  # only the two proven reports changed the task


async def test_a_demo_deployment_marks_unsigned_actors_as_self_asserted(
        ts_env: WorkflowEnvironment, worker: None) -> None:
    handle = await start(ts_env, ALLOWED)
    assert (await send(ts_env, handle, progress(20)))["accepted"] is True
    assert (await send(ts_env, handle, {"actor": "unit.member", "note": "收到"}, WEB,
                       name="acknowledge"))["accepted"] is True
    assert "does not verify" in await refusal(ts_env, handle, progress(30), IMPOSTOR)
    [reported] = await recorded(handle, "ProgressReported")
    assert reported["proof"] == {"method": "self_asserted"}
    [acked] = await recorded(handle, "Acknowledged")
    assert acked["proof"]["method"] == "signed"
    # an authorisation refusal of a proven actor keeps the proof: who was refused is proven
    with pytest.raises(WorkflowUpdateFailedError):
        await send(ts_env, handle, {"actor": "unit.member", "node": "N1"}, WEB, name="accept")
    rejected = await recorded(handle, "CommandRejected")
    assert [(r["code"], r.get("proof", {}).get("method")) for r in rejected] == [
        ("unauthenticated", None), ("unauthorised", "signed")]


async def test_a_signed_signal_is_proven_too(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle = await start(ts_env, REQUIRED)
    now = await ts_env.get_current_time()
    await handle.signal("progress", WEB.sign(handle.id, "progress", progress(15), now))
    await handle.signal("progress", progress(25))  # unsigned: refused and recorded
    await handle.signal("progress", {**WEB.sign(handle.id, "progress", progress(35), now),
                                     "percent": 95})
    # An update is decided after every signal sent before it: then all three are decided.
    await send(ts_env, handle, {"actor": "unit.member"}, WEB, name="acknowledge")
    state = await handle.query("state")
    rejected = await recorded(handle, "CommandRejected")
    assert state["progress"] == 15
    assert [r["code"] for r in rejected] == ["unauthenticated", "unauthenticated"]
    [reported] = await recorded(handle, "ProgressReported")
    assert reported["proof"]["method"] == "signed"


def test_the_auditors_timeline_says_how_each_actor_was_proven() -> None:
    from audit.timeline import timeline
    from domain.decide import assign
    from domain.events import Acknowledged, ProgressReported

    spec = make_spec(NOW)
    proof = check(REQUIRED, WEB.sign(TASK, "progress", progress(), NOW))
    assert isinstance(proof, ActorProof)
    events = [assign(spec, NOW),
              Acknowledged(task_id=spec.task_id, seq=2, at=NOW, actor="unit.member",
                           proof=ActorProof(method="self_asserted")),
              ProgressReported(task_id=spec.task_id, seq=3, at=NOW, actor="unit.member",
                               percent=10, proof=proof)]
    assert [x.proven for x in timeline(events)] == [
        "", "self-asserted (unsigned)", f"signed by web (key {WEB.fingerprint})"]
