"""`audit export`: one self-contained report an auditor can file (JSON, or one HTML page).

It holds the task's spec, the rules in force (the ladder snapshot the task carried), the
timeline, the rule verdicts, the state, and the hash chain's head with the chain's verdict.
The HTML page has inline CSS, no scripts and no external assets; every text is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any

from audit.chain_check import verify_task_chain
from audit.rules_check import DEFAULT_GRACE, rules_for_task
from audit.timeline import fmt_local, load_events, offset_text, show
from domain.ladder import Ladder, Offset
from domain.plan import TaskSpec

__all__ = ["REPORT_FORMAT", "build_report", "render_html", "render_json", "rules_in_force"]

REPORT_FORMAT = "duban-audit-report/v1"


def _offset(o: Offset | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"text": offset_text(o) or "at once", "label": o.label(),
            **o.model_dump(exclude_defaults=True)}


def _ladder(lad: Ladder, role: str) -> dict[str, Any]:
    return {
        "code": lad.code, "title": lad.title, "role": role, "description": lad.description,
        "yellow_before": _offset(lad.yellow_before),
        "progress_yellow_behind": lad.progress_yellow_behind,
        "progress_red_behind": lad.progress_red_behind,
        "steps": [{"code": s.code, "title": s.title, "level": s.level,
                   "after": _offset(s.after), "action": s.action,
                   "recipients": list(s.recipients), "demand": s.demand,
                   "reply_within": _offset(s.reply_within)} for s in lad.steps],
        "rectification_within": {k: _offset(v) for k, v in lad.rectification_within.items()},
        "rectification_ladder": lad.rectification_ladder,
        "false_report_ladder": lad.false_report_ladder,
        "reopen_within": _offset(lad.reopen_within),
    }


def rules_in_force(spec: TaskSpec) -> dict[str, Any]:
    """The ladders the task carried (a snapshot frozen at plan load), main ladder first."""
    main = spec.ladders[spec.ladder]
    roles = {spec.ladder: "main"}
    roles.setdefault(main.rectification_ladder, "rectification")
    roles.setdefault(main.false_report_ladder, "false report")
    ordered = [spec.ladder] + sorted(k for k in spec.ladders if k != spec.ladder)
    return {
        "main_ladder": spec.ladder, "start_level": spec.start_level,
        "recheck": spec.recheck.model_dump(),
        "ladders": [_ladder(spec.ladders[k], roles.get(k, "other")) for k in ordered],
    }


def build_report(store: Any, task_id: str, as_of: str | dt.datetime | None = None,
                 grace: dt.timedelta = DEFAULT_GRACE) -> dict[str, Any]:
    events = load_events(store, task_id)
    view = show(store, task_id, as_of, events=events)
    rules = rules_for_task(store, task_id, view.as_of, grace, events=events)
    head = store.head(task_id)
    verdict = verify_task_chain(store, task_id)
    return {
        "format": REPORT_FORMAT,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "task_id": task_id,
        "as_of": view.as_of.isoformat() if view.as_of else None,
        "timezone": view.spec.timezone,
        "spec": view.to_json()["spec"],
        "rules_in_force": rules_in_force(view.spec),
        "timeline": [e.to_json() for e in view.entries],
        "rules": rules.to_json(),
        "state": view.to_json()["state"],
        "chain": {
            "head_seq": head.seq, "head_hash": head.hash, "events": len(events),
            "verdict": "intact" if verdict.ok else "broken", "ok": verdict.ok,
            "checked": verdict.checked, "first_bad_seq": verdict.first_bad_seq,
            "reason": verdict.reason,
            "note": ("the chain proves nothing inside it changed; compare its head with a "
                     "signed checkpoint (audit checkpoint-verify) to show nothing was cut off"),
        },
    }


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, ensure_ascii=False, indent=2, sort_keys=False) + "\n"


# --- HTML -------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Noto Sans CJK SC","PingFang SC",sans-serif;
margin:2em auto;max-width:1200px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;
border-bottom:2px solid #ddd;padding-bottom:.2em}h3{font-size:1em;margin-bottom:.3em}
table{border-collapse:collapse;width:100%;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;white-space:nowrap}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
.ok{color:#176b1e;font-weight:600}.bad{color:#b00020;font-weight:600}
.muted{color:#777}.warn{color:#9a6700;font-weight:600}
.light-green{color:#176b1e}.light-yellow{color:#9a6700}.light-red{color:#b00020}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
dd{margin:0}footer{margin-top:3em;font-size:.8em;color:#777}
@media print{body{margin:0;max-width:none}}
"""

_VERDICT_CLASS = {"on time": "ok", "late": "bad", "missing": "bad", "unexpected": "bad",
                  "early": "bad", "pending": "warn", "not due": "muted",
                  "not required": "muted", "open": "bad", "claimed": "warn", "closed": "ok"}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], raw: bool = False) -> str:
    """rows hold already-escaped HTML cells when raw, else plain values (escaped here)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _v(verdict: str, text: str) -> str:
    return f'<span class="{_VERDICT_CLASS.get(verdict, "")}">{_e(text)}</span>'


def _loc(iso: str | None, tz: str) -> str:
    return fmt_local(dt.datetime.fromisoformat(iso), tz) if iso else "-"


def render_html(report: dict[str, Any]) -> str:
    tz = report["timezone"]
    spec, state, rules, chain = report["spec"], report["state"], report["rules"], report["chain"]
    parts: list[str] = []
    add = parts.append
    title = f"督办审计报告 · {spec['title']} · {spec['unit']['name']}"
    add("<!DOCTYPE html>")
    add('<html lang="zh-CN"><head><meta charset="utf-8">')
    add('<meta name="viewport" content="width=device-width, initial-scale=1">')
    add(f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>")
    add(f"<h1>{_e(title)}</h1>")
    as_of = f"as of {_loc(report['as_of'], tz)} ({tz})" if report["as_of"] else "full record"
    add(f'<p class="muted">Task <span class="mono">{_e(report["task_id"])}</span> · {_e(as_of)}'
        f" · generated {_e(report['generated_at'])}</p>")

    # summary
    add("<h2>Summary (任务概要)</h2><dl>")
    for label, value in (
        ("Plan", f"{spec['plan_title']} ({spec['plan']})"),
        ("Task", f"{spec['title']} ({spec['task']})"),
        ("Responsible unit", f"{spec['unit']['name']} ({spec['unit']['code']})"),
        ("Lead unit", f"{spec['lead_unit']['name']} ({spec['lead_unit']['code']})"),
        ("Standard", spec["standard"] or "-"),
        ("Started", _loc(spec["started_at"], tz)),
        ("Status", state["status"]),
        ("Light", state["light"]),
        ("Level", state["level"]),
        ("Progress", f"{state['progress']}%"),
        ("Escalations", state["escalations"]),
        ("False reports", state["false_reports"]),
        ("Refused commands", state["rejected_commands"]),
    ):
        cls = f' class="light-{_e(value)}"' if label == "Light" else ""
        add(f"<dt>{_e(label)}</dt><dd{cls}>{_e(value)}</dd>")
    add("</dl>")
    add(_table(["node", "title", "kind", "planned due", "planned progress"],
               [[n["code"], n["title"], n["kind"], n["due_local"], f"{n['planned_progress']}%"]
                for n in spec["nodes"]]))

    # chain
    ok = chain["ok"]
    add("<h2>Record integrity (哈希链)</h2><dl>")
    add(f"<dt>Chain verdict</dt><dd class=\"{'ok' if ok else 'bad'}\">{_e(chain['verdict'])}"
        + ("" if ok else f" at seq {_e(chain['first_bad_seq'])}: {_e(chain['reason'])}")
        + "</dd>")
    add(f"<dt>Events</dt><dd>{_e(chain['events'])}</dd>")
    add(f"<dt>Head</dt><dd>seq {_e(chain['head_seq'])} · "
        f"<span class=\"mono\">{_e(chain['head_hash'])}</span></dd>")
    add(f"<dt>Note</dt><dd class=\"muted\">{_e(chain['note'])}</dd></dl>")

    # rules in force
    rif = report["rules_in_force"]
    add("<h2>Rules in force (督办规则)</h2>")
    add(f"<p>Main ladder <b>{_e(rif['main_ladder'])}</b>"
        + (f", starting at level {_e(rif['start_level'])}" if rif["start_level"] else "")
        + f". 回头看: {_e(rif['recheck'].get('percent'))}% of completed tasks drawn.</p>")
    for lad in rif["ladders"]:
        yb = lad["yellow_before"]
        add(f"<h3>{_e(lad['title'])} ({_e(lad['code'])}, {_e(lad['role'])})</h3>")
        if lad["description"]:
            add(f"<p class=\"muted\">{_e(lad['description'])}</p>")
        light = (f"Yellow {yb['text']} before a due time" if yb and yb["text"] != "at once"
                 else "No yellow warning before a due time")
        if lad["role"] == "main":
            light += (f"; yellow at {lad['progress_yellow_behind']} points behind the planned "
                      f"progress, red beyond {lad['progress_red_behind']}")
        add(f"<p>{_e(light)}.</p>")
        add(_table(["level", "step", "after it falls due", "action", "recipients", "demand",
                    "reply within"],
                   [[s["level"], f"{s['title']} ({s['code']})", s["after"]["text"], s["action"],
                     ", ".join(s["recipients"]), s["demand"],
                     s["reply_within"]["text"] if s["reply_within"] else "-"]
                    for s in lad["steps"]]))

    # timeline
    add(f"<h2>Timeline (时间线, {_e(tz)})</h2>")
    add(_table(["#", "time", "actor", "event", "effect"],
               [[str(x["seq"]), x["local"], x["actor"], x["type"], x["effect"]]
                for x in report["timeline"]]))

    # rules verdicts
    add("<h2>Rule verdicts (督办是否按时)</h2>")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(rules["counts"].items())) or "no rungs"
    add(f"<p>Judged as of {_e(rules['as_of_local'])} (grace {_e(rules['grace_seconds'])} s). "
        f"{_v('on time' if rules['ok'] else 'missing', 'all rungs as required' if rules['ok'] else 'rungs late or missing')}"
        f" — {_e(counts)}</p>")
    add(_table(["target", "step", "required", "happened", "verdict", "note"],
               [[_e(f"{r['target_kind']} {r['target']} (cycle {r['cycle']})"),
                 _e(f"{r['title']} (level {r['level']})"),
                 _e(r["required_local"] or _loc(r["rung_time"], tz)),
                 _e(r["fired_local"] or "never"), _v(r["verdict"], r["text"]), _e(r["note"])]
                for r in rules["rungs"]], raw=True))
    add("<h3>Node deadlines</h3>")
    add(_table(["node", "original due", "due", "extensions", "status", "verdict"],
               [[_e(n["node"]), _e(_loc(n["original_due"], tz)), _e(n["due_local"]),
                 _e(n["extensions_granted"]), _e(n["status"]), _v(n["verdict"], n["text"])]
                for n in rules["nodes"]], raw=True))
    add(f"<h3>签收</h3><p>{_e(rules['acknowledgement']['text'])}</p>")
    add("<h3>Claims and acceptances (申请销号 / 验收)</h3>")
    add(_table(["node", "claimed", "by", "in time", "outcome"],
               [[c["node"], _loc(c["claimed_at"], tz), c["by"], "yes" if c["in_time"] else "no",
                 c["text"]] for c in rules["claims"]]))
    add("<h3>Extensions (延期)</h3>")
    add(_table(["node", "requested", "by", "reason", "decision"],
               [[x["node"], _loc(x.get("requested_at"), tz), x.get("by", "-"),
                 x.get("reason", "-"), x["text"]] for x in rules["extensions"]]))
    add("<h3>Rectification (整改)</h3>")
    add(_table(["finding", "severity", "description", "deadline", "status", "verdict"],
               [[_e(f["finding"]), _e(f["severity"]), _e(f["description"]),
                 _e(_loc(f["deadline"], tz)), _e(f["status"]), _v(f["verdict"], f["text"])]
                for f in rules["rectifications"]], raw=True))
    if rules["false_reports"]:
        add("<h3>False reports (虚报)</h3>")
        add(_table(["node", "inspection", "found", "resolution"],
                   [[f["node"], f["inspection"], _loc(f["found_at"], tz), f["text"]]
                    for f in rules["false_reports"]]))

    # final state
    add("<h2>State (状态)</h2>")
    add(_table(["node", "title", "status", "due", "claimed", "done", "on time", "rungs fired"],
               [[n["code"], n["title"], n["status"], _loc(n["due"], tz),
                 _loc(n["claimed_at"], tz), _loc(n["done_at"], tz),
                 "-" if n["on_time"] is None else ("yes" if n["on_time"] else "no"),
                 ", ".join(n["fired"]) or "-"] for n in state["nodes"]]))
    if state["findings"]:
        add(_table(["finding", "severity", "status", "deadline", "closed"],
                   [[f["finding_id"], f["severity"], f["status"], _loc(f["deadline"], tz),
                     _loc(f["closed_at"], tz)] for f in state["findings"]]))
    add(f"<footer>{_e(report['format'])} · Duban (督办)</footer></body></html>")
    return "\n".join(parts) + "\n"
