"""甘特图: the nodes of a page of task instances as a server-rendered SVG (no script).

Each task is a heading row and one lane per node: the node's bar ends at its due time; an
approved extension draws the original due (原定) and the granted one (延至) and the stretch
between them; an open node past due runs red up to today; rungs fired (督办层级) are diamonds
at the time they fired, on the lane of the node they concern (rectification rungs on the
task's row); accepted nodes get a tick. A vertical line marks today.

The page's tasks come in urgency order with the board's filters; what is drawn besides the
nodes is read for the whole page in two queries (`board_data.history`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup, escape

from web import board_data as bd
from web.access import task_url
from web.auth import ViewerDep, ctx_of
from web.templating import LIGHT_LABELS, LOCAL_TZ, STATUS_LABELS, local_date, local_time, render

router = APIRouter()

GANTT_PAGE_SIZE = 20
LABEL_W = 320  # the label column
CHART_W = 900  # the time axis
RIGHT_PAD = 20
HEAD_H = 40  # axis labels above the first row
TASK_H = 26
LANE_H = 24
BAR_H = 12
EXT_LINE = 14  # the extra line under an extended node's bar
YELLOW_WITHIN = dt.timedelta(days=3)


def _when(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, dt.datetime):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Axis:
    start: dt.datetime
    end: dt.datetime

    def x(self, moment: dt.datetime) -> float:
        span = (self.end - self.start).total_seconds() or 1.0
        frac = (moment - self.start).total_seconds() / span
        return round(LABEL_W + max(0.0, min(1.0, frac)) * CHART_W, 1)

    def ticks(self) -> list[tuple[float, str]]:
        """Local midnights, every 1, 2, 7, 14 or 30 days: at most about a dozen labels."""
        days = max(1, (self.end - self.start).days)
        step = next((s for s in (1, 2, 7, 14, 30, 61) if days / s <= 12), 92)
        first = self.start.astimezone(LOCAL_TZ).replace(hour=0, minute=0, second=0,
                                                        microsecond=0) + dt.timedelta(days=1)
        if step >= 7:  # weeks start on Monday, months on the 1st
            while (first.weekday() if step < 30 else first.day - 1) != 0:
                first += dt.timedelta(days=1)
        out = []
        moment = first
        while moment < self.end:
            label = moment.strftime("%m-%d") if step < 30 else moment.strftime("%Y-%m")
            out.append((self.x(moment), label))
            if step >= 30:
                month = moment.month % 12 + 1
                year = moment.year + (1 if month == 1 else 0)
                moment = moment.replace(year=year, month=month, day=1)
                if step > 31:
                    month = moment.month % 12 + 1
                    moment = moment.replace(year=moment.year + (1 if month == 1 else 0),
                                            month=month, day=1)
            else:
                moment += dt.timedelta(days=step)
        return out


@dataclass
class Svg:
    parts: list[str] = field(default_factory=list)

    def add(self, tag: str, text: str | None = None, tip: str | None = None,
            **attrs: Any) -> None:
        attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{escape(str(v))}"'
                       for k, v in attrs.items() if v is not None)
        inner = (f"<title>{escape(tip)}</title>" if tip else "") + (
            str(escape(text)) if text is not None else "")
        self.parts.append(f"<{tag}{attr}>{inner}</{tag}>" if inner else f"<{tag}{attr}/>")

    def raw(self, markup: str) -> None:
        self.parts.append(markup)


def _axis(rows: list[dict[str, Any]], hist: dict[str, dict[str, Any]],
          today: dt.datetime) -> Axis:
    moments = [today]
    for r in rows:
        h = hist.get(r["task_id"], {})
        if h.get("assigned_at"):
            moments.append(h["assigned_at"])
        for n in r["nodes"] or []:
            moments += [m for m in (_when(n.get("original_due")), _when(n.get("due"))) if m]
        moments += [m for m in (_when(x.get("at")) for x in h.get("rungs", [])) if m]
    start, end = min(moments), max(moments)
    pad = max(dt.timedelta(days=1), (end - start) * 0.04)
    return Axis(start=start - pad, end=end + pad)


def _extended(node: dict[str, Any]) -> bool:
    return bool(node.get("original_due") and node.get("due")
                and _when(node["original_due"]) != _when(node["due"]))


def _lane_height(node: dict[str, Any]) -> int:
    """An extended node's lane has a second line for its two dates."""
    return LANE_H + EXT_LINE if _extended(node) else LANE_H


def _task_height(r: dict[str, Any]) -> int:
    nodes = r["nodes"] or []
    return TASK_H + (sum(_lane_height(n) for n in nodes) if nodes else LANE_H)


def _node_class(node: dict[str, Any], due: dt.datetime | None, today: dt.datetime) -> str:
    status = node.get("status")
    if status == "done":
        return "done" if node.get("on_time") is not False else "done-late"
    if status == "claimed":
        return "claimed"
    if due is not None and due < today:
        return "late"
    if due is not None and due - today <= YELLOW_WITHIN:
        return "soon"
    return "open"


NODE_STATUS = {"open": "未完成", "claimed": "已申报待验收", "done": "已完成"}


def draw(rows: list[dict[str, Any]], hist: dict[str, dict[str, Any]],
         today: dt.datetime) -> Markup:
    """The page's SVG."""
    axis = _axis(rows, hist, today)
    height = HEAD_H + sum(_task_height(r) for r in rows) + 10
    width = LABEL_W + CHART_W + RIGHT_PAD
    svg = Svg()
    svg.raw(f'<svg xmlns="http://www.w3.org/2000/svg" class="gantt" role="img" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'font-family="WenQuanYi Zen Hei, Noto Sans CJK SC, sans-serif" font-size="12">')
    svg.add("title", "节点甘特图")
    svg.raw('<defs><pattern id="ext-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#1a73e8" stroke-width="3"/>'
            '</pattern></defs>')
    for x, label in axis.ticks():
        svg.add("line", x1=x, y1=HEAD_H - 6, x2=x, y2=height, class_="tick")
        svg.add("text", label, x=x + 2, y=HEAD_H - 10, class_="tick-label")
    y: float = HEAD_H
    for r in rows:
        y = _task(svg, axis, r, hist.get(r["task_id"], {}), today, y)
    tx = axis.x(today)
    svg.add("line", x1=tx, y1=14, x2=tx, y2=height, class_="today-line", id="today-line")
    svg.add("text", f"今天 {local_date(today)}", x=tx + 3, y=12, class_="today-label")
    svg.raw("</svg>")
    return Markup("".join(svg.parts))


def _task(svg: Svg, axis: Axis, r: dict[str, Any], h: dict[str, Any], today: dt.datetime,
          y: float) -> float:
    nodes = r["nodes"] or []
    svg.add("rect", x=0, y=y, width=LABEL_W + CHART_W + RIGHT_PAD, height=_task_height(r),
            class_=f"task-band light-{r['light']}")
    unit = r.get("unit_name") or r["unit_code"]
    svg.raw(f'<a href="{escape(task_url(r["task_id"]))}">')
    # The unit first: a page often holds one task for many units, and titles are long.
    svg.add("text", _short(f"{unit} · {r['title']}", 25), x=6, y=y + 17, class_="task-label",
            tip=f"{r['title']}（{unit}）{r['task_id']}")
    svg.raw("</a>")
    svg.add("circle", cx=LABEL_W - 12, cy=y + TASK_H / 2, r=6,
            class_=f"light light-{r['light']}", tip=_light_tip(r))
    start = h.get("assigned_at") or min((m for m in (_when(n.get("original_due"))
                                                     for n in nodes) if m), default=None)
    extensions: dict[str, list[dict[str, Any]]] = {}
    for e in h.get("extensions", []):
        extensions.setdefault(str(e.get("node", "")), []).append(e)
    accepted = {a.get("node"): a for a in h.get("accepted", [])}
    lane_mid: dict[str, float] = {}
    ly = y + TASK_H
    prev_end = start
    for n in nodes:
        due, original = _when(n.get("due")), _when(n.get("original_due"))
        cls = _node_class(n, due, today)
        mid = ly + LANE_H / 2
        lane_mid[n["code"]] = mid
        bar_y = mid - BAR_H / 2
        status = NODE_STATUS.get(n.get("status", ""), n.get("status"))
        svg.add("text", _short(f"{n['code']} {n.get('title', '')}", 22), x=22, y=mid + 4,
                class_="node-label", tip=f"{n.get('title', '')}（{status}）")
        bar_start = prev_end or original or due
        planned_end = original or due
        if bar_start and planned_end:
            x0, x1 = axis.x(bar_start), axis.x(max(planned_end, bar_start))
            svg.add("rect", x=x0, y=bar_y, width=max(2.0, x1 - x0), height=BAR_H, rx=2,
                    class_=f"bar {cls}",
                    tip=f"{n.get('title', '')}：{status}，期限 {local_date(due)}")
        if _extended(n) and due and original:
            _extension(svg, axis, extensions.get(n["code"], []), original, due, bar_y, ly)
        if cls == "late" and due:
            xd, xt = axis.x(due), axis.x(today)
            svg.add("rect", x=xd, y=bar_y, width=max(2.0, xt - xd), height=BAR_H,
                    class_="overrun", tip=f"逾期 {bd.days_late(due, today)} 天（期限 {local_date(due)}）")
        acc = accepted.get(n["code"])
        done_at = _when(acc.get("occurred_at") or acc.get("at")) if acc else None
        if done_at:
            cx = axis.x(done_at)
            svg.add("circle", cx=cx, cy=mid, r=7, class_="accepted",
                    tip=f"验收通过 {local_date(done_at)}")
            svg.add("path", d=f"M{cx - 3.5} {mid} L{cx - 1} {mid + 3} L{cx + 4} {mid - 3}",
                    class_="accepted-tick")
        if due and (prev_end is None or due > prev_end):
            prev_end = due
        ly += _lane_height(n)
    for rung in h.get("rungs", []):
        at = _when(rung.get("at")) or _when(rung.get("occurred_at"))
        if at is None:
            continue
        target = str(rung.get("target"))
        on_node = rung.get("target_kind") in ("node", "false_report") and target in lane_mid
        cy = lane_mid[target] if on_node else y + TASK_H / 2
        level = int(rung.get("level") or 0)
        cx = axis.x(at)
        svg.add("path", d=f"M{cx} {cy - 9} L{cx + 9} {cy} L{cx} {cy + 9} L{cx - 9} {cy} Z",
                class_=f"rung rung-{min(level, 5)}",
                tip=f"第{level}级 {rung.get('title', '')} · {local_time(at)}")
        svg.add("text", str(level), x=cx, y=cy + 4, class_="rung-level")
    return y + _task_height(r)


def _extension(svg: Svg, axis: Axis, decided: list[dict[str, Any]], original: dt.datetime,
               due: dt.datetime, bar_y: float, lane_y: float) -> None:
    """The stretch from the original due to the granted one, a mark at each, and both dates
    written under the bar."""
    xo, xd = axis.x(original), axis.x(due)
    svg.add("rect", x=min(xo, xd), y=bar_y, width=max(2.0, abs(xd - xo)), height=BAR_H,
            class_="extension", fill="url(#ext-hatch)",
            tip=f"延期：原定 {local_date(original)}，批准延至 {local_date(due)}")
    svg.add("path", d=_triangle(xo, bar_y - 7), class_="mark-original",
            tip=f"原定期限 {local_date(original)}")
    granted = [g for g in (_when(e.get("granted_due")) for e in decided if e.get("approved")) if g]
    for g in granted or [due]:
        svg.add("path", d=_triangle(axis.x(g), bar_y - 7), class_="mark-granted",
                tip=f"批准延至 {local_date(g)}")
    dates = "、".join(local_date(g) for g in granted) or local_date(due)
    _side_text(svg, min(xo, xd), lane_y + LANE_H + EXT_LINE - 4,
               f"原定 {local_date(original)} → 批准延至 {dates}", "ext-label")


def _triangle(x: float, y: float) -> str:
    """A small downward triangle whose tip is at (x, y + 7)."""
    return f"M{x - 5} {y} L{x + 5} {y} L{x} {y + 7} Z"


def _side_text(svg: Svg, x: float, y: float, text: str, cls: str) -> None:
    """A note to the right of `x`, or to its left when it would run off the chart."""
    width = sum(11 if ord(ch) > 0x2E80 else 6.2 for ch in text)  # CJK full width, digits half
    if x + width > LABEL_W + CHART_W + RIGHT_PAD:
        svg.add("text", text, x=LABEL_W + CHART_W + RIGHT_PAD - 4, y=y, class_=cls,
                text_anchor="end")
    else:
        svg.add("text", text, x=x, y=y, class_=cls)


def _light_tip(r: dict[str, Any]) -> str:
    return (f"{LIGHT_LABELS.get(r['light'], r['light'])} · {STATUS_LABELS.get(r['status'], r['status'])}"
            f" · 进度 {r['progress']}% · 督办第{r['level']}级")


@router.get("/gantt", response_class=HTMLResponse)
def gantt_page(request: Request, viewer: ViewerDep) -> Response:
    params = dict(request.query_params)
    today = ctx_of(request).clock()
    with ctx_of(request).engine.connect() as conn:
        sc = bd.scope(conn, viewer, params)
        rows: list[dict[str, Any]] = []
        page = bd.Page.of(None, 0, GANTT_PAGE_SIZE)
        town_options: list[dict[str, Any]] = []
        task_options: list[dict[str, Any]] = []
        hist: dict[str, dict[str, Any]] = {}
        if sc.plan is not None:
            segs = bd.segments(conn, sc.cond)
            page = bd.Page.of(params.get("page"), sum(s[3] for s in segs), GANTT_PAGE_SIZE)
            rows = bd.by_urgency(conn, sc, segs, page.offset, page.size,
                                 columns=(*bd.LIST_COLUMNS, "nodes"))
            hist = bd.history(conn, [r["task_id"] for r in rows])
            town_options = bd.township_options(conn, sc)
            task_options = bd.task_options(conn, sc)
            bd.keep_statistics(conn)
    chart = draw(rows, hist, today) if rows else None
    return render(request, "gantt.html", scope=sc, f=sc.filters, rows=rows, page=page,
                  chart=chart, town_options=town_options, task_options=task_options,
                  level_options=bd.LEVEL_OPTIONS, now=today,
                  link=lambda **change: sc.filters.query(**change))
