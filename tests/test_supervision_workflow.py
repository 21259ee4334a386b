"""The supervisor's loop on the time-skipping server: inspections, rectification, 虚报,
extensions, 回头看, and the bulk import of an inspection round."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from service.inspection_import import import_inspections
from tests.test_keytask_workflow import events, near, of_type, start, ts, update

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


async def refused(why: str, handle: Any, name: str, **payload: Any) -> None:
    """The update is refused, and the caller is told why."""
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, name, **payload)
    assert why in str(info.value.cause), str(info.value.cause)


async def rejections(handle: Any, n: int) -> list[dict[str, Any]]:
    """The task's CommandRejected events once there are `n` (a signal is recorded when the
    workflow next runs, so the caller may get there first)."""
    async def wait() -> list[dict[str, Any]]:
        while len(got := of_type(await events(handle), "CommandRejected")) < n:
            await asyncio.sleep(0.05)
        return got

    got = await asyncio.wait_for(wait(), timeout=30)
    assert len(got) == n, got
    return got


async def visit(env: WorkflowEnvironment) -> str:
    """The visit time: the server's now (a visit may not be in the future, nor before the task)."""
    return (await env.get_current_time()).isoformat()


async def test_clean_inspection_confirms_a_claim(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle, _ = await start(ts_env)
    await update(handle, "claim", actor="unit.member", node="N1", evidence=[{"sha256": SHA}])
    await ts_env.sleep(dt.timedelta(hours=1))
    await update(
        handle,
        "inspect",
        actor="supervisor",
        inspection_id="r1",
        visited_at=await visit(ts_env),
        place="一村党群服务中心",
        nodes=["N1"],
        outcome="达标",
    )
    evts = await events(handle)
    accepted = of_type(evts, "NodeAccepted")
    assert accepted[0]["via"] == "inspection" and accepted[0]["inspection_id"] == "r1"
    assert (await handle.query("state"))["nodes"][0]["status"] == "done"


async def test_findings_rectified_verified_and_closed(
    ts_env: WorkflowEnvironment, worker: None
) -> None:
    handle, _ = await start(ts_env, due_days=(10,), progress=(100,))
    await update(handle, "claim", actor="unit.member", node="N1")
    await update(
        handle,
        "inspect",
        actor="supervisor",
        inspection_id="r1",
        visited_at=await visit(ts_env),
        place="一村",
        nodes=["N1"],
        outcome="基本达标",
        findings=[
            {
                "severity": "一般",
                "description": "台账不全",
                "node": "N1",
                "evidence": [{"sha256": SHA, "geo": "30.12,120.5"}],
            }
        ],
    )
    state = await handle.query("state")
    assert state["nodes"][0]["status"] == "done" and state["status"] == "in_progress"
    fid = state["findings"][0]["finding_id"]
    assert state["findings"][0]["status"] == "open"
    # Every node is done, but the finding is open: time passes (the loop ticks) and the task
    # neither completes nor closes.
    await ts_env.sleep(dt.timedelta(days=2))
    state = await handle.query("state")
    assert state["status"] == "in_progress" and state["completed_at"] is None
    assert not of_type(await events(handle), "TaskCompleted", "TaskClosed")
    assert (await handle.describe()).status.name == "RUNNING"  # type: ignore[union-attr]
    await refused(
        "reports its rectification first",
        handle,
        "verify_rectification",
        actor="supervisor",
        finding_id=fid,
        passed=True,
    )
    await refused(
        "may not check its own work",
        handle,
        "verify_rectification",
        actor="unit.head",
        finding_id=fid,
        passed=True,
    )
    await update(handle, "report_rectification", actor="unit.member", finding_id=fid, note="已补齐")
    await update(
        handle,
        "verify_rectification",
        actor="supervisor",
        finding_id=fid,
        passed=False,
        note="仍缺两户",
    )
    assert (await handle.query("state"))["findings"][0]["status"] == "open"
    assert not of_type(await events(handle), "TaskCompleted")  # sent back: still open
    await update(handle, "report_rectification", actor="unit.member", finding_id=fid, note="补齐")
    await update(handle, "verify_rectification", actor="supervisor", finding_id=fid, passed=True)
    result = await asyncio.wait_for(handle.result(), 20)
    assert result["status"] == "closed"
    evts = await events(handle)
    verified = [e["seq"] for e in evts if e["type"] == "RectificationVerified" and e["passed"]]
    completed = of_type(evts, "TaskCompleted")
    assert len(completed) == 1 and completed[0]["seq"] > verified[0]  # only once it was closed


async def test_late_rectification_runs_its_own_ladder(
    ts_env: WorkflowEnvironment, worker: None
) -> None:
    handle, spec = await start(ts_env, due_days=(60,), progress=(100,))
    await update(handle, "progress", actor="unit.member", percent=100)
    await update(
        handle,
        "inspect",
        actor="supervisor",
        inspection_id="r1",
        visited_at=await visit(ts_env),
        place="一村",
        nodes=[],
        outcome="基本达标",
        findings=[{"severity": "严重", "description": "网格员未到岗"}],
    )
    ordered = of_type(await events(handle), "RectificationOrdered")[0]
    deadline = ts(ordered["deadline"])
    rect = spec.ladders["rectification"]
    expected = {s.code: s.after.after(deadline, spec.timezone)[0] for s in rect.steps}
    await ts_env.sleep(
        max(expected.values()) - await ts_env.get_current_time() + dt.timedelta(hours=1)
    )
    fired = [
        f for f in of_type(await events(handle), "EscalationFired") if f["target_kind"] == "finding"
    ]
    assert [f["step"] for f in fired] == [s.code for s in rect.steps]
    assert all(near(f["at"], expected[f["step"]]) for f in fired)


async def test_false_report_is_escalated(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle, spec = await start(ts_env, due_days=(30,), progress=(100,))
    await update(handle, "claim", actor="unit.member", node="N1", note="已完成")
    await update(
        handle,
        "inspect",
        actor="supervisor",
        inspection_id="r1",
        visited_at=await visit(ts_env),
        place="一村",
        nodes=["N1"],
        outcome="不达标",
        findings=[{"severity": "较重", "description": "4户村民不知情", "node": "N1"}],
    )
    await ts_env.sleep(dt.timedelta(minutes=5))
    evts = await events(handle)
    false = of_type(evts, "FalseReportFound")
    assert false and false[0]["node"] == "N1" and false[0]["claimed_at"] is not None
    fired = [f for f in of_type(evts, "EscalationFired") if f["target_kind"] == "false_report"]
    assert fired and fired[0]["ladder"] == "false-report" and fired[0]["level"] == 4
    state = await handle.query("state")
    assert state["light"] == "red" and state["false_reports"] == 1
    assert state["nodes"][0]["status"] == "open"


async def test_extension_paths(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle, spec = await start(ts_env, due_days=(5, 20), progress=(50, 100))
    due1 = spec.nodes[0].due
    # refused: the due time stands, the record keeps the request and the refusal
    await update(
        handle,
        "request_extension",
        actor="unit.member",
        node="N1",
        reason="人手不足",
        proposed_due=(due1 + dt.timedelta(days=7)).isoformat(),
    )
    await refused(
        "only the lead unit",
        handle,
        "decide_extension",
        actor="supervisor",
        node="N1",
        approve=True,
    )
    await update(
        handle, "decide_extension", actor="lead.head", node="N1", approve=False, reason="不同意"
    )
    assert ts((await handle.query("state"))["nodes"][0]["due"]) == due1
    # asked again in time, granted with another date than proposed (a bare local date)
    await update(
        handle,
        "request_extension",
        actor="unit.member",
        node="N1",
        reason="选举推迟",
        proposed_due=(due1 + dt.timedelta(days=10)).isoformat(),
    )
    granted_day = (
        (due1 + dt.timedelta(days=3)).astimezone(dt.timezone(dt.timedelta(hours=8))).date()
    )
    ans = await update(
        handle,
        "decide_extension",
        actor="leader",
        node="N1",
        approve=True,
        granted_due=granted_day.isoformat(),
    )
    decided = ans["events"][0]
    assert ts(decided["original_due"]) == due1 and decided["approved"] is True
    granted = ts(decided["granted_due"])
    assert granted.astimezone(dt.timezone(dt.timedelta(hours=8))).time() == dt.time(0, 0)
    node = (await handle.query("state"))["nodes"][0]
    assert ts(node["original_due"]) == due1 and ts(node["due"]) == granted
    # too late: after the (granted) due time
    await ts_env.sleep(granted - await ts_env.get_current_time() + dt.timedelta(hours=2))
    await refused(
        "before the node's due time",
        handle,
        "request_extension",
        actor="unit.member",
        node="N1",
        reason="再延",
        proposed_due="2099-01-01",
    )
    fired = of_type(await events(handle), "EscalationFired")
    assert [f["step"] for f in fired] == ["remind"] and near(fired[0]["at"], granted)


async def test_recheck_drawn_failed_reopens_node(ts_env: WorkflowEnvironment, worker: None) -> None:
    handle, spec = await start(ts_env, due_days=(5,), progress=(100,), recheck_percent=100)
    await update(handle, "claim", actor="unit.member", node="N1")
    await update(handle, "accept", actor="supervisor", node="N1")
    await ts_env.sleep(dt.timedelta(minutes=1))
    state = await handle.query("state")
    assert state["status"] == "completed" and state["recheck_due"] is not None
    completed = of_type(await events(handle), "TaskCompleted")[0]
    drawn = of_type(await events(handle), "RecheckScheduled")[0]
    # Drawn (100 % of completed tasks), due `after` the completion, open for `window` after that.
    assert drawn["seq"] == completed["seq"] + 1
    assert ts(drawn["due_at"]) == ts(completed["at"]) + dt.timedelta(days=28)
    assert ts(drawn["until"]) == ts(drawn["due_at"]) + dt.timedelta(days=14)
    assert ts(state["recheck_due"]) == ts(drawn["due_at"])
    await ts_env.sleep(ts(drawn["due_at"]) - await ts_env.get_current_time() + dt.timedelta(days=1))
    await update(
        handle,
        "recheck",
        actor="supervisor",
        visited_at=await visit(ts_env),
        passed=False,
        nodes=["N1"],
        note="7户抽查4户不知情",
    )
    state = await handle.query("state")
    assert state["status"] == "in_progress" and state["nodes"][0]["status"] == "open"
    reopened = of_type(await events(handle), "NodeReopened")[0]
    assert ts(reopened["new_due"]) > ts(drawn["due_at"])
    # done again, and this time the re-check passes: closed
    await update(handle, "claim", actor="unit.member", node="N1")
    await update(handle, "accept", actor="supervisor", node="N1")
    await ts_env.sleep(dt.timedelta(minutes=1))
    # Completed again: drawn again (100 %), so a second 回头看 is due and this one passes.
    state = await handle.query("state")
    assert state["status"] == "completed" and state["recheck_due"] is not None
    assert len(of_type(await events(handle), "TaskCompleted", "RecheckScheduled")) == 4
    await ts_env.sleep(ts(state["recheck_due"]) - await ts_env.get_current_time()
                       + dt.timedelta(hours=1))
    await update(handle, "recheck", actor="supervisor", visited_at=await visit(ts_env), passed=True)
    assert (await handle.result())["status"] == "closed"
    closed = of_type(await events(handle), "TaskClosed")
    assert [c["reason"] for c in closed] == ["回头看 passed"]
    assert len(of_type(await events(handle), "RecheckRecorded")) == 2


async def test_not_drawn_for_recheck_closes_at_completion(
    ts_env: WorkflowEnvironment, worker: None
) -> None:
    handle, _ = await start(ts_env, due_days=(5,), progress=(100,), recheck_percent=0)
    await update(handle, "claim", actor="unit.member", node="N1")
    await update(handle, "accept", actor="supervisor", node="N1")
    assert (await asyncio.wait_for(handle.result(), 20))["status"] == "closed"
    evts = await events(handle)
    assert not of_type(evts, "RecheckScheduled")
    assert [e["type"] for e in evts][-2:] == ["TaskCompleted", "TaskClosed"]
    assert "not drawn for 回头看" in of_type(evts, "TaskClosed")[0]["reason"]


def write_sheet(path: Path, rows: list[dict[str, str]]) -> None:
    headers = [
        "任务ID",
        "检查编号",
        "督查人",
        "检查时间",
        "地点",
        "检查节点",
        "结果",
        "严重程度",
        "问题描述",
        "证据SHA256",
    ]
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=headers)
        w.writeheader()
        for r in rows:
            w.writerow({h: r.get(h, "") for h in headers})


async def test_bulk_import_per_row_verdicts_and_idempotence(
    ts_env: WorkflowEnvironment, worker: None, wf_store: Any, tmp_path: Path
) -> None:
    h1, s1 = await start(ts_env)
    h2, s2 = await start(ts_env)
    await update(h1, "claim", actor="unit.member", node="N1")
    # Not the server's "now": the test server's clock runs ahead of the importer's wall clock,
    # and a visit at the later task's start is neither before either task nor in the future.
    when = max(s1.started_at, s2.started_at).isoformat()
    base = {"检查时间": when, "地点": "一村"}
    rows = [
        {
            **base,
            "任务ID": s1.task_id,
            "检查编号": "A1",
            "督查人": "supervisor",
            "检查节点": "N1",
            "结果": "基本达标",
            "严重程度": "一般",
            "问题描述": "台账不全",
            "证据SHA256": SHA,
        },
        {
            **base,
            "任务ID": s1.task_id,
            "检查编号": "A1",
            "督查人": "supervisor",
            "检查节点": "N1",
            "结果": "基本达标",
            "严重程度": "较重",
            "问题描述": "公示未上墙",
        },
        {**base, "任务ID": s2.task_id, "检查编号": "B1", "督查人": "supervisor", "结果": "达标"},
        {**base, "任务ID": s2.task_id, "检查编号": "B2", "督查人": "supervisor", "结果": "很好"},
        {
            **base,
            "任务ID": s2.task_id,
            "检查编号": "B3",
            "督查人": "supervisor",
            "结果": "基本达标",
            "严重程度": "一般",
            "问题描述": "x",
            "证据SHA256": "not-a-hash",
        },
        {**base, "任务ID": "nope/none/x", "检查编号": "C1", "督查人": "supervisor", "结果": "达标"},
        {**base, "任务ID": s2.task_id, "检查编号": "D1", "督查人": "nobody", "结果": "达标"},
        {**base, "任务ID": s2.task_id, "检查编号": "E1", "督查人": "unit.member", "结果": "达标"},
        {**base, "任务ID": s2.task_id, "检查编号": "", "督查人": "supervisor", "结果": "达标"},
    ]
    sheet = tmp_path / "round.csv"
    write_sheet(sheet, rows)
    first = {v.row: v for v in await import_inspections(ts_env.client, sheet)}
    assert [first[r].verdict for r in range(2, 11)] == [
        "accepted",
        "accepted",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert "outcome" in first[5].reason
    assert "sha256" in first[6].reason
    assert "unknown task" in first[7].reason
    assert "not on this plan's roster" in first[8].reason
    assert "may not check its own work" in first[9].reason
    assert "empty inspection_id" in first[10].reason
    # A refused row leaves its trace on its task, as the same command by signal or update does:
    # who tried what, and why. A row naming no existing task is reported only.
    tried = await rejections(h2, 5)
    assert [(e["actor"], e["command"], e["code"]) for e in tried] == [
        ("supervisor", "inspect", "malformed"),  # row 5: outcome 很好
        ("supervisor", "inspect", "malformed"),  # row 6: not a sha256
        ("nobody", "inspect", "unauthorised"),  # row 8
        ("unit.member", "inspect", "unauthorised"),  # row 9
        ("supervisor", "inspect", "malformed"),  # row 10: no inspection id
    ]
    assert '"B2"' in tried[0]["payload_excerpt"] and "很好" in tried[0]["payload_excerpt"]
    assert "not on this plan's roster" in tried[2]["reason"]
    assert "may not check its own work" in tried[3]["reason"]
    assert "inspection_id" in tried[4]["reason"]
    assert not of_type(await events(h1), "CommandRejected")  # task 1's rows were all accepted
    assert all("recorded on the task" in first[r].reason for r in (5, 6, 8, 9, 10))
    assert "recorded on the task" not in first[7].reason

    seqs_before = {t: (await h.query("state"))["last_seq"] for t, h in ((1, h1), (2, h2))}
    second = {v.row: v for v in await import_inspections(ts_env.client, sheet)}
    assert [second[r].verdict for r in (2, 3, 4)] == ["already recorded"] * 3
    assert all(second[r].verdict == "rejected" for r in range(5, 11))
    await rejections(h2, 10)
    seqs_after = {t: (await h.query("state"))["last_seq"] for t, h in ((1, h1), (2, h2))}
    # nothing accepted twice; each refused row is a new attempt, and recorded as one
    assert seqs_after == {1: seqs_before[1], 2: seqs_before[2] + 5}
    state = await h1.query("state")
    assert len(state["inspections"]) == 1 and len(state["findings"]) == 2
    assert state["nodes"][0]["status"] == "done"  # 基本达标 confirmed the claim


async def test_check_judges_a_visit_by_the_callers_clock(
    ts_env: WorkflowEnvironment, worker: None
) -> None:
    handle, _ = await start(ts_env)
    await ts_env.sleep(dt.timedelta(hours=1))  # the task sleeps: no activation in that hour
    now = await ts_env.get_current_time()
    payload = {"actor": "supervisor", "inspection_id": "q1", "visited_at": now.isoformat(),
               "place": "一村", "outcome": "达标"}
    # In a query, workflow.now() is the last activation (an hour ago): the visit looks future.
    stale = await handle.query("check", args=["inspect", payload])
    assert not stale["ok"] and "in the future" in stale["reason"]
    fresh = await handle.query("check", args=["inspect", payload, now.isoformat()])
    assert fresh["ok"] and fresh["events"] == ["InspectionRecorded"]
    assert (await handle.query("state"))["inspections"] == []  # a check records nothing
