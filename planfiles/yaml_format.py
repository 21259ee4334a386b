"""Plans as YAML, for engineers: written compactly, read with a source map (line per plan location)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from domain.plan import (
    ADDRESS_FIELDS,
    Plan,
)
from planfiles.errors import PlanReadError, SourceMap, pydantic_lines


class _Flow(dict[str, Any]):
    """A mapping written on one line (units, members, nodes)."""


class _FlowList(list[Any]):
    """A list of scalars written on one line."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_flow(dumper: yaml.SafeDumper, data: _Flow) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)


def _represent_flow_list(dumper: yaml.SafeDumper, data: _FlowList) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(_Flow, _represent_flow)
_Dumper.add_representer(_FlowList, _represent_flow_list)


def _fields(model: BaseModel, always: Iterable[str] = ()) -> dict[str, Any]:
    """The fields that differ from their defaults (plus `always`), in declaration order."""
    keep = set(always)
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if (
            name in keep
            or info.is_required()
            or value != info.get_default(call_default_factory=True)
        ):
            out[name] = _flow(value)
    return out


def _flow(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # plain scalars with ':' are not allowed in flow style
        return value.isoformat(sep=" ")
    if isinstance(value, BaseModel):
        return _Flow(_fields(value))
    if isinstance(value, dict):
        return _Flow({k: _flow(v) for k, v in value.items()})
    if isinstance(value, tuple | list):
        items = [_flow(v) for v in value]
        if all(not isinstance(v, dict | list) for v in items):
            return _FlowList(items)
        return items
    return value


def plan_to_yaml(plan: Plan) -> str:
    """The plan as YAML: tasks in block style, units, members and nodes one per line; each
    unit's and member's delivery addresses on its own line (`Plan.directory`)."""
    data = _fields(plan, always=("timezone",))
    data.pop("directory", None)
    left = {"units": dict(plan.directory.units), "members": dict(plan.directory.members)}
    for section, kind, ident in (("units", "units", "code"), ("roster", "members", "actor")):
        for item in data.get(section) or []:
            found = left[kind].pop(item.get(ident), None)
            if found is not None:
                item.update(_fields(found))
    if left["units"] or left["members"]:  # addresses of no unit or member: keep them visible
        data["directory"] = _flow({k: v for k, v in left.items() if v})
    data["recheck"] = _flow(plan.recheck.model_dump())
    data["tasks"] = [
        {**_fields(t, always=("ladder",)), **({"nodes": _flow(t.nodes)} if t.nodes else {})}
        for t in plan.tasks
    ]
    head = (
        f"# {plan.title}\n"
        "# 重点任务分解清单 — see plans/README.md for the fields. Dates are local dates\n"
        '# ("X月31日前" = by the end of that day); due_at instants carry their UTC offset.\n'
    )
    return head + yaml.dump(data, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=4096)


def write_plan_yaml(plan: Plan, path: Path | str) -> None:
    Path(path).write_text(plan_to_yaml(plan), encoding="utf-8")


def read_yaml_with_sources(path: Path) -> tuple[Plan, SourceMap]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PlanReadError(path, [f"cannot open: {e.strerror or e}"]) from e
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise PlanReadError(path, [f"not valid YAML: {e}"]) from e
    if not isinstance(data, dict) or root is None:
        raise PlanReadError(path, ["a plan must be a mapping (code, title, start, units, tasks)"])
    origin, problems = _lift_addresses(data, root)
    if problems:
        raise PlanReadError(path, problems)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as e:

        def where(loc: tuple[int | str, ...]) -> str:
            # Addresses lifted off a unit or member are reported where they were written.
            if len(loc) >= 3 and loc[0] == "directory" and (loc[1], loc[2]) in origin:
                loc = (*origin[(loc[1], loc[2])], *loc[3:])
            return f"line {_yaml_line(root, loc)}, {_yaml_path(data, loc)}"

        raise PlanReadError(path, pydantic_lines(e, where)) from e
    return plan, _yaml_sources(root)


def _lift_addresses(
    data: dict[str, Any], root: yaml.Node
) -> tuple[dict[tuple[int | str, int | str], tuple[str, int]], list[str]]:
    """Move `email`/`webhook`/`webhook_secret_env` written on a unit or a roster member into
    the plan's `directory` (units and members are recorded in task specs; addresses are not).
    Returns where each lifted entry came from, and the problems that stop reading."""
    origin: dict[tuple[int | str, int | str], tuple[str, int]] = {}
    problems: list[str] = []
    given = data.get("directory")
    directory: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
    for section, kind, ident in (("units", "units", "code"), ("roster", "members", "actor")):
        items = data.get(section)
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            if "webhook_secret" in item:
                problems.append(
                    f"line {_yaml_line(root, (section, i, 'webhook_secret'))}, "
                    f"{_yaml_path(data, (section, i, 'webhook_secret'))}: a secret never goes "
                    "in the plan: put it in an environment variable of the delivery worker and "
                    "name that variable in webhook_secret_env")
                continue
            found = {k: item[k] for k in ADDRESS_FIELDS if k in item}
            code = item.get(ident)
            if not found or not isinstance(code, str):
                continue  # no addresses, or no code: the model reports what is wrong
            for k in found:
                del item[k]
            entries = directory.setdefault(kind, {})
            if not isinstance(entries, dict) or code in entries:
                problems.append(
                    f"line {_yaml_line(root, (section, i))}, {_yaml_path(data, (section, i))}: "
                    f"addresses for {code!r} are given twice (here and under directory)")
                continue
            entries[code] = found
            origin[(kind, code)] = (section, i)
    if directory:
        data["directory"] = directory
    return origin, problems


def _yaml_line(root: yaml.Node, loc: Sequence[int | str]) -> int:
    node = root
    line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                break
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _yaml_path(data: Any, loc: Sequence[int | str]) -> str:
    """`tasks[3] (lwzb).nodes[2] (gs).due`: indexes with the code of the item, when it has one."""
    out = ""
    cur = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            cur = cur[part] if isinstance(cur, list) and part < len(cur) else None
            code = cur.get("code", cur.get("actor")) if isinstance(cur, dict) else None
            if code is not None:
                out += f" ({code})"
        else:
            out += f".{part}" if out else str(part)
            cur = cur.get(part) if isinstance(cur, dict) else None
    return out or "plan"


def _yaml_sources(root: yaml.Node) -> SourceMap:
    src: SourceMap = {}

    def scalar(mapping: yaml.Node, key: str) -> str | None:
        if isinstance(mapping, yaml.MappingNode):
            for k, v in mapping.value:
                if isinstance(k, yaml.ScalarNode) and k.value == key:
                    return v.value if isinstance(v, yaml.ScalarNode) else None
        return None

    def child(mapping: yaml.Node, key: str) -> yaml.Node | None:
        if isinstance(mapping, yaml.MappingNode):
            for k, v in mapping.value:
                if isinstance(k, yaml.ScalarNode) and k.value == key:
                    found: yaml.Node = v
                    return found
        return None

    def add(where: str, node: yaml.Node) -> None:
        src.setdefault(where, []).append(f"line {node.start_mark.line + 1}")

    for key in ("timezone", "start", "start_at", "code", "title"):
        n = child(root, key)
        if n is not None:
            add(key, n)
    for section, ident in (("units", "code"), ("roster", "actor"), ("tasks", "code")):
        seq = child(root, section)
        if not isinstance(seq, yaml.SequenceNode):
            continue
        for item in seq.value:
            code = scalar(item, ident)
            if code is None:
                continue
            add(f"{section}.{code}", item)
            for field in ADDRESS_FIELDS if section != "tasks" else ():
                value = child(item, field)
                if value is not None:
                    add(f"{section}.{code}.{field}", value)
            nodes = child(item, "nodes") if section == "tasks" else None
            if isinstance(nodes, yaml.SequenceNode):
                for n in nodes.value:
                    ncode = scalar(n, "code")
                    if ncode is not None:
                        add(f"tasks.{code}.nodes.{ncode}", n)
    return src
