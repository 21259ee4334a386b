"""Shared helpers for the pure-domain tests: specs, a small simulator, hypothesis strategies.

The simulator drives a task the way the KeyTask workflow does, without Temporal: the clock
(`tick` at `now`, optionally at every `next_wakeup` on the way), then a person's command
(`decide`), a refusal being recorded with `reject`. Every event is folded at once with `evolve`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from hypothesis import strategies as st

from domain import commands as c
from domain import events as ev
from domain.calendar import DEFAULT_TZ
from domain.decide import assign, decide, reject, tick
from domain.evolve import evolve
from domain.ladder import SEVERITIES
from domain.plan import NodeSpec, Plan, RecheckPolicy, TaskDef, TaskSpec, resolve_plan
from domain.rules import next_wakeup
from domain.state import TaskState
from tests.scenario import ROSTER, UNITS, ladders

UTC = dt.UTC
ALL_ACTORS: tuple[str, ...] = (*(m.actor for m in ROSTER), "stranger")
UNIT_ACTORS = ("unit.member", "unit.head")
ACCEPT_ACTORS = ("supervisor", "lead.head", "lead.member")
EXTENSION_ACTORS = ("lead.head", "leader")
SUPERVISOR_ACTORS = ("supervisor",)
SHA = "ab" * 32


def local(y: int, m: int, d: int, hh: int = 0, mm: int = 0, tz: str = DEFAULT_TZ) -> dt.datetime:
    """A local wall-clock instant, as UTC."""
    from zoneinfo import ZoneInfo

    return dt.datetime(y, m, d, hh, mm, tzinfo=ZoneInfo(tz)).astimezone(UTC)


@lru_cache(maxsize=256)
def build_spec(
    now: dt.datetime,
    *,
    due_days: tuple[float, ...] = (10, 20),
    ladder: str = "deadline-lights",
    start_level: int | None = None,
    recheck_percent: int = 0,
    progress: tuple[int, ...] | None = None,
    kinds: tuple[str, ...] | None = None,
    major: bool = False,
    dues: tuple[dt.datetime, ...] | None = None,
) -> TaskSpec:
    """Like `tests.scenario.make_spec`, with node kinds, exact due instants and `major`.

    `due_days=()` and no `dues` leaves the task without nodes (a ladder with obligations)."""
    if dues is None:
        dues = tuple(now + dt.timedelta(days=d) for d in due_days)
    n = len(dues)
    progress = progress or tuple(100 * (i + 1) // n for i in range(n))
    kinds = kinds or ("milestone",) * n
    nodes = tuple(
        NodeSpec(
            code=f"N{i + 1}",
            title=f"节点{i + 1}",
            kind=k,
            due_at=d,  # type: ignore[arg-type]
            planned_progress=p,
        )
        for i, (d, p, k) in enumerate(zip(dues, progress, kinds, strict=True))
    )
    plan = Plan(
        code="prop",
        title="性质测试",
        start=(now - dt.timedelta(days=1)).date(),
        start_at=now,
        units=UNITS,
        roster=ROSTER,
        recheck=RecheckPolicy(percent=recheck_percent),
        tasks=(
            TaskDef(
                code="T1",
                title="两委增补",
                lead_unit="office",
                responsible=("v01",),
                ladder=ladder,
                start_level=start_level,
                major=major,
                nodes=nodes,
            ),
        ),
    )
    return resolve_plan(plan, ladders())[0]


def name_of(cmd: c.Command) -> str:
    return c.COMMAND_NAMES[type(cmd)]


@dataclass
class Sim:
    """A task driven by hand: the clock and commands, every event folded at once."""

    spec: TaskSpec
    start: dt.datetime
    events: list[ev.Event] = field(default_factory=list)
    state: TaskState = field(init=False)
    now: dt.datetime = field(init=False)

    def __post_init__(self) -> None:
        first = assign(self.spec, self.start)
        self.state = evolve(None, first)
        self.events.append(first)
        self.now = self.start

    def emit(self, events: Iterable[ev.Event]) -> list[ev.Event]:
        out = list(events)
        for e in out:
            self.state = evolve(self.state, e)
            self.events.append(e)
        return out

    def tick(self, now: dt.datetime | None = None, draw: int = 99) -> list[ev.Event]:
        if now is not None:
            assert now >= self.now, "the simulated clock never goes back"
            self.now = now
        return self.emit(tick(self.state, self.now, draw))

    def send(self, cmd: c.Command, now: dt.datetime | None = None) -> list[ev.Event] | c.Rejection:
        if now is not None:
            assert now >= self.now
            self.now = now
        result = decide(self.state, cmd, self.now)
        if isinstance(result, c.Rejection):
            self.emit(
                [
                    reject(
                        self.state, name_of(cmd), cmd.actor, result, cmd.model_dump_json(), self.now
                    )
                ]
            )
            return result
        return self.emit(result)

    def ok(self, cmd: c.Command, now: dt.datetime | None = None) -> list[ev.Event]:
        """Send a command that must succeed."""
        result = self.send(cmd, now)
        assert not isinstance(result, c.Rejection), result
        return result

    def run_until(self, until: dt.datetime, draw: int = 99, limit: int = 10_000) -> list[ev.Event]:
        """Tick now (the workflow ticks after every command), then at every wake-up up to
        `until` (as its durable timer does), then at `until`."""
        out = self.tick(draw=draw)
        for _ in range(limit):
            wake = next_wakeup(self.state, self.now)
            if wake is None or wake > until:
                break
            out += self.tick(wake, draw)
        else:
            raise AssertionError(f"more than {limit} wake-ups before {until}")
        if until > self.now:
            out += self.tick(until, draw)
        return out

    def run_out(self, draw: int = 99, limit: int = 10_000) -> list[ev.Event]:
        """Tick now, then at every wake-up until there is none left."""
        out = self.tick(draw=draw)
        for _ in range(limit):
            wake = next_wakeup(self.state, self.now)
            if wake is None:
                return out
            out += self.tick(wake, draw)
        raise AssertionError(f"more than {limit} wake-ups")


def of_type(events: Sequence[ev.Event], cls: type[ev.Event]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def fired(events: Sequence[ev.Event]) -> list[ev.EscalationFired]:
    return of_type(events, ev.EscalationFired)


def floats_in(value: object, path: str = "$") -> list[str]:
    """JSON paths of every float in a JSON-like value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, float):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in floats_in(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in floats_in(v, f"{path}[{i}]")]
    return []


# --- hypothesis strategies ---------------------------------------------------------------------

#: Task starts: ordinary days, just before 国庆 and 春节 2026, and in a year (2027) whose
#: holiday notice is not yet published (an estimated calendar).
STARTS = (
    local(2026, 3, 2, 9),
    local(2026, 9, 20, 15, 30),
    local(2026, 1, 28, 8),
    local(2027, 6, 1, 10),
    local(2026, 12, 20, 23, 59),
)

#: (ladder, start_level, due_days) of the task under test.
CONFIGS: tuple[tuple[str, int | None, tuple[float, ...]], ...] = (
    ("deadline-lights", None, (10, 20)),
    ("deadline-lights", None, (3,)),
    ("sanming", None, (5, 12)),
    ("sanming", 2, (4,)),
    ("sanming", 3, (2, 9)),
    ("13710", None, ()),
    ("13710", None, (6, 15)),
    ("demo-minutes", None, (0.004, 0.01)),
    ("rectification", None, (7,)),
)

advances = st.one_of(
    st.just(dt.timedelta(0)),
    st.integers(1, 30).map(lambda m: dt.timedelta(minutes=m)),
    st.integers(1, 72).map(lambda h: dt.timedelta(hours=h)),
    st.integers(1, 25).map(lambda d: dt.timedelta(days=d)),
)

INSPECTION_IDS = ("i1", "i2", "i3")
FINDING_IDS = ("F1", "F2", "i1-1", "i2-1", "i1-2", "FX")


def actor(right: Sequence[str]) -> st.SearchStrategy[str]:
    """Mostly an actor who may send the command, sometimes anyone (or a stranger)."""
    return st.sampled_from((*right, *right, *right) * (6 // len(right)) + ALL_ACTORS)


@dataclass(frozen=True)
class Rel:
    """An instant relative to the step's `now` (so strategies need not know the clock)."""

    delta: dt.timedelta
    form: str = "instant"  # "instant" | "date" | "naive"

    def at(self, now: dt.datetime) -> dt.datetime | dt.date:
        t = now + self.delta
        if self.form == "date":
            return t.date()
        if self.form == "naive":
            return t.replace(tzinfo=None)
        return t


@dataclass(frozen=True)
class CommandT:
    """A command whose times are relative; `build(now)` makes the command."""

    name: str
    fields: tuple[tuple[str, Any], ...]

    def build(self, now: dt.datetime) -> c.Command:
        kw = {k: (v.at(now) if isinstance(v, Rel) else v) for k, v in self.fields}
        return c.COMMANDS[self.name](**kw)


def _tmpl(name: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[CommandT]:
    return st.fixed_dictionaries(fields).map(lambda d: CommandT(name, tuple(d.items())))


_days = st.integers(-2, 40).map(lambda d: dt.timedelta(days=d))
instant_or_date = st.one_of(
    _days.map(Rel),
    _days.map(lambda d: Rel(d, "date")),
    st.just(Rel(dt.timedelta(days=3), "naive")),  # naive: refused as malformed
)
visited = st.one_of(
    st.integers(-1, 72).map(lambda h: Rel(dt.timedelta(hours=-h))),
    st.just(Rel(dt.timedelta(0))),
    st.integers(0, 30).map(lambda d: Rel(dt.timedelta(days=-d))),
)
evidence = st.builds(
    ev.Evidence,
    sha256=st.just(SHA),
    name=st.sampled_from(("照片.jpg", "")),
    geo=st.sampled_from((None, "36.6512,117.1201")),
)


@lru_cache(maxsize=16)
def commands(nodes: tuple[str, ...]) -> st.SearchStrategy[CommandT]:
    """Any command, valid or not, for a task with these node codes."""
    node = st.sampled_from((*nodes, *nodes, *nodes, "NX"))
    node_tuple = st.lists(node, max_size=3).map(tuple)
    finding = st.sampled_from(FINDING_IDS)
    findings = st.lists(
        st.builds(
            c.FindingInput,
            finding_id=st.sampled_from((None, None, "F1", "F2")),
            severity=st.sampled_from(("一般", "较重", "严重")),
            description=st.just("网格员未到岗"),
            node=st.one_of(st.none(), node),
            evidence=st.lists(evidence, max_size=1).map(tuple),
        ),
        max_size=2,
    ).map(tuple)
    return st.one_of(
        _tmpl("acknowledge", actor=actor(UNIT_ACTORS)),
        _tmpl("progress", actor=actor(UNIT_ACTORS), percent=st.integers(0, 100)),
        _tmpl(
            "claim",
            actor=actor(UNIT_ACTORS),
            node=node,
            evidence=st.lists(evidence, max_size=1).map(tuple),
        ),
        _tmpl("accept", actor=actor(ACCEPT_ACTORS), node=node),
        _tmpl("reject_claim", actor=actor(ACCEPT_ACTORS), node=node, reason=st.just("佐证不足")),
        _tmpl(
            "request_extension",
            actor=actor(UNIT_ACTORS),
            node=node,
            reason=st.just("村民代表会议推迟"),
            proposed_due=instant_or_date,
        ),
        _tmpl(
            "decide_extension",
            actor=actor(EXTENSION_ACTORS),
            node=node,
            approve=st.booleans(),
            granted_due=st.one_of(st.none(), st.none(), instant_or_date),
            reason=st.just("研究决定"),
        ),
        _tmpl(
            "inspect",
            actor=actor(SUPERVISOR_ACTORS),
            inspection_id=st.sampled_from(INSPECTION_IDS),
            visited_at=visited,
            place=st.just("东城镇一村"),
            nodes=node_tuple,
            outcome=st.sampled_from(("达标", "基本达标", "不达标")),
            findings=findings,
        ),
        _tmpl("report_rectification", actor=actor(UNIT_ACTORS), finding_id=finding),
        _tmpl(
            "verify_rectification",
            actor=actor(SUPERVISOR_ACTORS),
            finding_id=finding,
            passed=st.booleans(),
        ),
        _tmpl(
            "recheck",
            actor=actor(SUPERVISOR_ACTORS),
            visited_at=visited,
            passed=st.booleans(),
            nodes=node_tuple,
        ),
    )


def _t(name: str, **fields: Any) -> CommandT:
    return CommandT(name, tuple(fields.items()))


@lru_cache(maxsize=16)
def macros(nodes: tuple[str, ...]) -> st.SearchStrategy[tuple[CommandT, ...]]:
    """Short, plausible runs of commands, so that random runs reach deep states too."""
    node = st.sampled_from(nodes or ("NX",))
    done = tuple(
        c_
        for n in nodes
        for c_ in (
            _t("claim", actor="unit.member", node=n),
            _t("accept", actor="supervisor", node=n),
        )
    )
    return st.one_of(
        node.map(
            lambda n: (
                _t("claim", actor="unit.head", node=n),
                _t("accept", actor="lead.head", node=n),
            )
        ),
        st.just(done),
        st.just(done),
        st.tuples(st.sampled_from(FINDING_IDS[:4]), st.booleans()).map(
            lambda fp: (
                _t("report_rectification", actor="unit.member", finding_id=fp[0]),
                _t("verify_rectification", actor="supervisor", finding_id=fp[0], passed=fp[1]),
            )
        ),
        st.tuples(node, st.integers(1, 20)).map(
            lambda nd: (
                _t(
                    "request_extension",
                    actor="unit.member",
                    node=nd[0],
                    reason="台风",
                    proposed_due=Rel(dt.timedelta(days=nd[1])),
                ),
                _t("decide_extension", actor="leader", node=nd[0], approve=True),
            )
        ),
        st.tuples(node, st.sampled_from(INSPECTION_IDS), st.sampled_from(SEVERITIES)).map(
            lambda x: (
                _t("claim", actor="unit.member", node=x[0]),
                _t(
                    "inspect",
                    actor="supervisor",
                    inspection_id=x[1],
                    visited_at=Rel(dt.timedelta(0)),
                    place="东城镇一村",
                    nodes=(x[0],),
                    outcome="不达标",
                    findings=(
                        c.FindingInput(severity=x[2], description="台账与实际不符", node=x[0]),
                    ),
                ),
            )
        ),
    )


@dataclass(frozen=True)
class Step:
    advance: dt.timedelta
    draw: int
    commands: tuple[CommandT, ...]


@dataclass(frozen=True)
class Scenario:
    spec: TaskSpec
    start: dt.datetime
    follow_wakeups: bool
    steps: tuple[Step, ...]


@st.composite
def scenarios(draw: st.DrawFn, max_steps: int = 25) -> Scenario:
    start = draw(st.sampled_from(STARTS))
    ladder, level, due_days = draw(st.sampled_from(CONFIGS))
    spec = build_spec(
        start,
        due_days=due_days,
        ladder=ladder,
        start_level=level,
        recheck_percent=draw(st.sampled_from((0, 50, 100))),
        major=draw(st.booleans()) if not due_days else False,
    )
    codes = tuple(n.code for n in spec.nodes)
    one = commands(codes).map(lambda t: (t,))
    step = st.builds(
        Step, advances, st.integers(0, 99), st.one_of(st.just(()), one, one, macros(codes))
    )
    steps = draw(st.lists(step, min_size=min(2, max_steps), max_size=max_steps))
    return Scenario(spec, start, draw(st.booleans()), tuple(steps))
