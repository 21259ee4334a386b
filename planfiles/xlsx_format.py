"""Plans as XLSX, for the task office: one sheet per table with Chinese headers (`计划`, `单位`,
`人员`, `任务`, `节点`), real date cells, 是/否 and comma-separated lists. Every problem found
while reading is reported at once, naming the sheet, row and column, so a sheet is fixed in one pass."""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from openpyxl import Workbook, load_workbook
from openpyxl.comments import Comment
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.worksheet import Worksheet
from pydantic import BaseModel, ValidationError

from domain.calendar import DEFAULT_TZ
from domain.plan import (
    ADDRESS_FIELDS,
    Addresses,
    Directory,
    Member,
    NodeSpec,
    Plan,
    RecheckPolicy,
    TaskDef,
    Unit,
)
from planfiles.errors import PlanReadError, SourceMap, dotted, pydantic_lines

M = TypeVar("M", bound=BaseModel)


class _CellError(ValueError):
    pass


UNIT_KIND_LABELS: dict[str, str] = {
    "county": "区县",
    "department": "部门",
    "township": "乡镇街道",
    "village": "村",
    "community": "社区",
    "office": "专班",
}
_UNIT_KIND_SYNONYMS: dict[str, str] = {
    "区": "county",
    "县": "county",
    "区委": "county",
    "县委": "county",
    "县区": "county",
    "区直部门": "department",
    "县直部门": "department",
    "职能部门": "department",
    "乡镇": "township",
    "街道": "township",
    "乡": "township",
    "镇": "township",
    "乡镇（街道）": "township",
    "乡镇(街道)": "township",
    "行政村": "village",
    "居委会": "community",
    "办公室": "office",
}
ROLE_LABELS: dict[str, str] = {
    "member": "成员",
    "head": "负责人",
    "lead": "牵头",
    "supervisor": "督查",
    "auditor": "审计",
    "office": "专班",
    "leader": "领导",
    "discipline": "纪检",
}
_ROLE_SYNONYMS: dict[str, str] = {
    "工作人员": "member",
    "主要负责人": "head",
    "牵头单位": "lead",
    "督查组": "supervisor",
    "考核": "auditor",
    "纪委": "discipline",
    "区委领导": "leader",
}
NODE_KIND_LABELS: dict[str, str] = {"milestone": "里程碑", "report": "报告"}
_NODE_KIND_SYNONYMS: dict[str, str] = {"节点": "milestone", "汇报": "report", "报送": "report"}
_YES = {"是", "y", "yes", "true", "1", "√", "重大"}
_NO = {"否", "n", "no", "false", "0", "×", ""}
_SPAN_UNITS: dict[str, str] = {
    "days": "天",
    "working_days": "个工作日",
    "hours": "小时",
    "minutes": "分钟",
    "weeks": "周",
}
_SPAN_SYNONYMS: dict[str, str] = {
    "天": "days",
    "日": "days",
    "个工作日": "working_days",
    "工作日": "working_days",
    "小时": "hours",
    "分钟": "minutes",
    "周": "weeks",
}
_LIST_SPLIT = re.compile(r"[,，、;；\s]+")
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y年%m月%d日")


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise _CellError(f"expected text, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, dt.datetime | dt.date):
        raise _CellError(f"expected text, got a date ({v:%Y-%m-%d})")
    s = str(v).strip()
    return s or None


def _int(v: Any) -> int | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool):
        raise _CellError(f"expected a whole number, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if v.is_integer():
            return int(v)
        raise _CellError(f"expected a whole number, got {v!r}")
    s = str(v).strip().rstrip("%％").strip()
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    raise _CellError(f"expected a whole number, got {v!r}")


def _date(v: Any) -> dt.date | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, dt.datetime):
        if v.time() != dt.time(0, 0):
            raise _CellError(f"expected a date without a time of day, got {v:%Y-%m-%d %H:%M}")
        return v.date()
    if isinstance(v, dt.date):
        return v
    if isinstance(v, str):
        for fmt in _DATE_FORMATS:
            try:
                return dt.datetime.strptime(v.strip(), fmt).date()
            except ValueError:
                pass
    raise _CellError(f"expected a date cell (e.g. 2026-12-31), got {v!r}")


def _instant(v: Any, tz: str) -> dt.datetime | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, dt.datetime):
        value = v
    elif isinstance(v, str):
        try:
            value = dt.datetime.fromisoformat(v.strip())
        except ValueError:
            raise _CellError(
                f"expected a date and time such as 2026-12-10 18:00+08:00, got {v!r}"
            ) from None
    else:
        raise _CellError(f"expected a date and time such as 2026-12-10 18:00+08:00, got {v!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone(tz))
    return value


def zone(tz: str) -> dt.tzinfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TZ)


def _bool(v: Any) -> bool | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _YES:
        return True
    if s in _NO:
        return None if s == "" else False
    raise _CellError(f"expected 是 or 否, got {v!r}")


def _label(
    labels: Mapping[str, str], synonyms: Mapping[str, str], what: str
) -> Callable[[Any], str | None]:
    back = {lab: code for code, lab in labels.items()}

    def conv(v: Any) -> str | None:
        s = _text(v)
        if s is None:
            return None
        for table in (back, synonyms):
            if s in table:
                return table[s]
        if s.lower() in labels:
            return s.lower()
        known = "、".join(labels.values())
        raise _CellError(f"unknown {what} {s!r} (use one of: {known})")

    return conv


_unit_kind = _label(UNIT_KIND_LABELS, _UNIT_KIND_SYNONYMS, "unit type")
_node_kind = _label(NODE_KIND_LABELS, _NODE_KIND_SYNONYMS, "node type")
_one_role = _label(ROLE_LABELS, _ROLE_SYNONYMS, "role")


def _codes(v: Any) -> tuple[str, ...] | None:
    s = _text(v)
    if s is None:
        return None
    return tuple(x for x in _LIST_SPLIT.split(s) if x)


def _roles(v: Any) -> tuple[str, ...] | None:
    parts = _codes(v)
    if parts is None:
        return None
    out = []
    for p in parts:
        r = _one_role(p)
        if r is not None:
            out.append(r)
    return tuple(out)


def _span(v: Any) -> dict[str, int] | None:
    s = _text(v)
    if s is None:
        return None
    if s in ("无", "-", "—"):
        return {}
    out: dict[str, int] = {}
    rest = s
    for m in re.finditer(r"(\d+)\s*(个工作日|工作日|天|日|小时|分钟|周)|([a-z_]+)\s*=\s*(\d+)", s):
        if m.group(1):
            out[_SPAN_SYNONYMS[m.group(2)]] = int(m.group(1))
        else:
            out[m.group(3)] = int(m.group(4))
        rest = rest.replace(m.group(0), "", 1)
    if not out or _LIST_SPLIT.sub("", rest):
        raise _CellError(f"expected a span such as 28天 or 10个工作日, got {s!r}")
    return out


def _span_text(span: Mapping[str, int]) -> str:
    if not span:
        return "无"
    return " ".join(
        f"{n}{_SPAN_UNITS[k]}" if k in _SPAN_UNITS else f"{k}={n}" for k, n in span.items()
    )


# ---------------------------------------------------------------------------------------------
# XLSX: sheet layout


@dataclass(frozen=True)
class _Col:
    header: str
    field: str
    read: Callable[[Any], Any]
    write: Callable[[Any], Any]
    note: str
    width: int = 12
    required: bool = False
    date: bool = False
    choices: tuple[str, ...] = ()


def _ident(v: Any) -> Any:
    return v


def _opt_text(v: Any) -> Any:
    return v if v not in ("", None) else None


def _join(v: Any) -> Any:
    return "，".join(v) if v else None


def _roles_text(v: Any) -> Any:
    return "，".join(ROLE_LABELS[r] for r in v) if v else None


def _emails(v: Any) -> tuple[str, ...] | None:
    s = _text(v)
    if s is None:
        return None
    return tuple(x for x in re.split(r"[,，、;；\s]+", s) if x)


# Delivery addresses (通讯录), on both the 单位 and the 人员 sheet; read into `Plan.directory`.
ADDRESS_COLS = (
    _Col("邮箱", "email", _emails, _join,
         "电子邮箱，多个用逗号分隔；督办单作为附件发送到这些邮箱", 26),
    _Col("Webhook", "webhook", _text, _opt_text,
         "工作群机器人等的 Webhook 地址（https://…）；督办单以签名的 JSON 推送", 36),
    _Col("Webhook密钥变量", "webhook_secret_env", _text, _opt_text,
         "保存该 Webhook 签名密钥的环境变量名（如 DUBAN_HOOK_T01）；密钥本身不写入计划", 18),
)

UNIT_COLS = (
    _Col("编码", "code", _text, _ident, "单位编码：字母、数字、-、_，如 t01、t01-v03", 12, True),
    _Col("名称", "name", _text, _ident, "单位全称", 26, True),
    _Col(
        "类型",
        "kind",
        _unit_kind,
        lambda v: UNIT_KIND_LABELS[v],
        "区县、部门、乡镇街道、村、社区、专班",
        10,
        True,
        choices=tuple(UNIT_KIND_LABELS.values()),
    ),
    _Col("上级单位", "parent", _text, _opt_text, "上级单位编码（村、社区填所属乡镇街道）", 12),
    *ADDRESS_COLS,
)
MEMBER_COLS = (
    _Col("账号", "actor", _text, _ident, "登录账号：字母、数字和 . _ - @，如 li.wei.t01", 22, True),
    _Col("姓名", "name", _text, _ident, "姓名", 10, True),
    _Col("单位", "unit", _text, _ident, "所在单位编码", 12, True),
    _Col(
        "角色",
        "roles",
        _roles,
        _roles_text,
        "逗号分隔：" + "、".join(ROLE_LABELS.values()) + "；空白即成员",
        16,
    ),
    *ADDRESS_COLS,
)
TASK_COLS = (
    _Col("编码", "code", _text, _ident, "任务编码：字母、数字、-、_", 10, True),
    _Col("名称", "title", _text, _ident, "任务名称", 30, True),
    _Col("类别", "category", _text, _opt_text, "如 三项改革、网格化管理", 14),
    _Col("牵头单位", "lead_unit", _text, _ident, "牵头单位编码", 10, True),
    _Col("完成标准", "standard", _text, _opt_text, "验收时对照的完成标准", 50),
    _Col(
        "督办阶梯",
        "ladder",
        _text,
        _ident,
        "督办升级阶梯编码，如 deadline-lights、13710、sanming；空白即 deadline-lights",
        16,
    ),
    _Col(
        "重大",
        "major",
        _bool,
        lambda v: "是" if v else "否",
        "是/否：重大事项",
        6,
        choices=("是", "否"),
    ),
    _Col(
        "起始级别",
        "start_level",
        _int,
        _ident,
        "重大事项从第几级督办开始（如三明：2=橙色）；空白即从第1级",
        8,
    ),
    _Col(
        "责任单位",
        "responsible",
        _codes,
        _join,
        "责任单位编码，逗号分隔；与“责任单位类型”二选一",
        30,
    ),
    _Col(
        "责任单位类型",
        "responsible_kind",
        _unit_kind,
        lambda v: UNIT_KIND_LABELS[v] if v else None,
        "该类型的全部单位均为责任单位（如 乡镇街道、村）",
        12,
        choices=tuple(UNIT_KIND_LABELS.values()),
    ),
    _Col("截止日期", "end", _date, _ident, "任务最终截止日期（日期单元格）", 12, date=True),
)
NODE_COLS = (
    _Col("任务编码", "task", _text, _ident, "所属任务编码（见“任务”表）", 10, True),
    _Col("节点编码", "code", _text, _ident, "节点编码，任务内唯一", 10, True),
    _Col("名称", "title", _text, _ident, "节点名称", 40, True),
    _Col(
        "类型",
        "kind",
        _node_kind,
        lambda v: NODE_KIND_LABELS[v],
        "里程碑（节点任务）或 报告（进度报送）",
        8,
        choices=tuple(NODE_KIND_LABELS.values()),
    ),
    _Col(
        "截止日期",
        "due",
        _date,
        _ident,
        "“X月31日前”：填日期，截止到当天结束（日期单元格）。与截止时刻、工作日三选一",
        12,
        date=True,
    ),
    _Col(
        "截止时刻",
        "due_at",
        _ident,
        lambda v: v.isoformat(sep=" ") if v else None,
        "精确时刻，如 2026-12-10 18:00:00+08:00（不带时区按计划时区）",
        26,
    ),
    _Col(
        "工作日",
        "working_days",
        _int,
        _ident,
        "自计划开始或“起算”节点起若干个工作日（按国务院放假调休安排）",
        8,
    ),
    _Col("起算", "after", _text, _opt_text, "工作日的起算节点编码；空白或 start 即计划开始", 8),
    _Col(
        "计划进度", "planned_progress", _int, _ident, "到该节点应完成的进度（0-100，逐节点不减）", 8
    ),
)
PLAN_ROWS = (
    _Col("编码", "code", _text, _ident, "计划编码：字母、数字、-、_", required=True),
    _Col("名称", "title", _text, _ident, "计划名称", required=True),
    _Col("时区", "timezone", _text, _ident, "如 Asia/Shanghai"),
    _Col(
        "开始日期", "start", _date, _ident, "计划开始日期（日期单元格）", required=True, date=True
    ),
    _Col(
        "开始时刻",
        "start_at",
        _ident,
        lambda v: v.isoformat(sep=" ") if v else None,
        "可选：精确开始时刻，如 2026-11-02 09:00:00+08:00",
    ),
    _Col(
        "回头看比例", "recheck.percent", _int, _ident, "已销号任务中随机抽取回头看的百分比（0-100）"
    ),
    _Col("回头看间隔", "recheck.after", _span, _span_text, "销号后多久开始回头看，如 28天"),
    _Col("回头看窗口", "recheck.window", _span, _span_text, "回头看须在多长时间内完成，如 14天"),
)
SHEETS = ("计划", "单位", "人员", "任务", "节点")
_HEADER_FILL = PatternFill("solid", fgColor="FFC00000")
_HEADER_FONT = Font(bold=True, color="FFFFFFFF")
_FIXED_STAMP = dt.datetime(2026, 1, 1)


def _norm_header(v: Any) -> str:
    s = str(v or "").strip()
    return re.sub(r"\s*[（(].*[)）]\s*$", "", s)


def _at(sheet: str, row: int, col: int | None = None, header: str | None = None) -> str:
    out = f"sheet {sheet}, row {row}"
    if col is not None:
        out += f", column {get_column_letter(col)}"
        if header:
            out += f" ({header})"
    return out


# ---------------------------------------------------------------------------------------------
# XLSX: writing


def write_plan_xlsx(plan: Plan, path: Path | str) -> None:
    """The plan as a 任务分解清单 workbook (byte-for-byte reproducible for the same plan)."""
    Path(path).write_bytes(plan_to_xlsx_bytes(plan))


def plan_to_xlsx_bytes(plan: Plan) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "计划"
    _write_plan_sheet(ws, plan)
    units, members = plan.directory.units, plan.directory.members
    _write_table(wb.create_sheet("单位"), UNIT_COLS,
                 [{**u.model_dump(), **_address_cells(units.get(u.code))} for u in plan.units])
    _write_table(wb.create_sheet("人员"), MEMBER_COLS,
                 [{**m.model_dump(), **_address_cells(members.get(m.actor))} for m in plan.roster])
    _write_table(
        wb.create_sheet("任务"), TASK_COLS, [t.model_dump(exclude={"nodes"}) for t in plan.tasks]
    )
    rows = [{"task": t.code, **n.model_dump()} for t in plan.tasks for n in t.nodes]
    _write_table(wb.create_sheet("节点"), NODE_COLS, rows)
    _write_help(wb.create_sheet("说明"))
    wb.properties.creator = "duban"
    wb.properties.title = plan.title
    wb.properties.created = _FIXED_STAMP
    buf = io.BytesIO()
    wb.save(buf)
    return _reproducible(buf.getvalue())


def _address_cells(addresses: Addresses | None) -> dict[str, Any]:
    return addresses.model_dump() if addresses is not None else {}


def _reproducible(data: bytes) -> bytes:
    """Fixed zip timestamps and document dates, so an unchanged plan gives identical bytes."""
    out = io.BytesIO()
    stamp = _FIXED_STAMP.strftime("%Y-%m-%dT%H:%M:%SZ")
    with (
        zipfile.ZipFile(io.BytesIO(data)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                content = re.sub(
                    rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:)",
                    rb"\g<1>" + stamp.encode() + rb"\g<2>",
                    content,
                )
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            dst.writestr(zi, content)
    return out.getvalue()


def _style_header(ws: Worksheet, cols: Sequence[_Col], headers: Sequence[str]) -> None:
    for i, header in enumerate(headers, start=1):
        c = ws.cell(row=1, column=i, value=header)
        c.font = _HEADER_FONT
        c.fill = _HEADER_FILL
        c.alignment = Alignment(horizontal="center", vertical="center")
    for i, col in enumerate(cols, start=1):
        ws.column_dimensions[get_column_letter(i)].width = col.width * 1.6 + 2
    ws.freeze_panes = "A2"


def _write_table(ws: Worksheet, cols: Sequence[_Col], rows: Iterable[Mapping[str, Any]]) -> None:
    _style_header(ws, cols, [c.header for c in cols])
    for i, col in enumerate(cols, start=1):
        ws.cell(row=1, column=i).comment = Comment(col.note, "duban", width=260, height=80)
    n = 1
    for n, row in enumerate(rows, start=2):
        for i, col in enumerate(cols, start=1):
            value = col.write(row.get(col.field))
            cell = ws.cell(row=n, column=i, value=value)
            if col.date:
                cell.number_format = "yyyy-mm-dd"
            if col.width >= 30:
                cell.alignment = Alignment(wrap_text=True, vertical="top")
    for i, col in enumerate(cols, start=1):
        if col.choices:
            letter = get_column_letter(i)
            dv = DataValidation(
                type="list", formula1='"' + ",".join(col.choices) + '"', allow_blank=True
            )
            dv.add(f"{letter}2:{letter}{max(n, 2) + 500}")
            ws.add_data_validation(dv)


def _write_plan_sheet(ws: Worksheet, plan: Plan) -> None:
    cols = (
        _Col("项目", "", _ident, _ident, "", 8),
        _Col("值", "", _ident, _ident, "", 30),
        _Col("说明", "", _ident, _ident, "", 36),
    )
    _style_header(ws, cols, [c.header for c in cols])
    for n, spec in enumerate(PLAN_ROWS, start=2):
        value: Any = plan
        for part in spec.field.split("."):
            value = getattr(value, part)
        ws.cell(row=n, column=1, value=spec.header).font = Font(bold=True)
        cell = ws.cell(row=n, column=2, value=spec.write(value))
        if spec.date:
            cell.number_format = "yyyy-mm-dd"
        ws.cell(row=n, column=3, value=spec.note)


def _write_help(ws: Worksheet) -> None:
    ws.append(["表", "列", "填写说明"])
    for c in ws[1]:
        c.font = _HEADER_FONT
        c.fill = _HEADER_FILL
    ws.append(
        ["（全部）", "", "每个表第一行为表头，不要改动；从第二行起每行一条；日期列请用日期单元格。"]
    )
    for spec in PLAN_ROWS:
        ws.append(["计划", spec.header, spec.note])
    for sheet, cols in (
        ("单位", UNIT_COLS),
        ("人员", MEMBER_COLS),
        ("任务", TASK_COLS),
        ("节点", NODE_COLS),
    ):
        for col in cols:
            ws.append([sheet, col.header, col.note + ("（必填）" if col.required else "")])
    ws.column_dimensions["A"].width = 10
    ws.column_dimensions["B"].width = 16
    ws.column_dimensions["C"].width = 90


# ---------------------------------------------------------------------------------------------
# XLSX: reading


@dataclass
class _Reader:
    path: Path
    problems: list[str] = field(default_factory=list)
    sources: SourceMap = field(default_factory=dict)
    reported: set[tuple[str, int, str]] = field(default_factory=set)

    def cell_problem(self, sheet: str, row: int, col: int, c: _Col, msg: str) -> None:
        self.problems.append(f"{_at(sheet, row, col, c.header)}: {msg}")
        self.reported.add((sheet, row, c.field))

    def table(
        self, ws: Worksheet, cols: Sequence[_Col]
    ) -> list[tuple[int, dict[str, Any], dict[str, int]]]:
        """Rows as {field: value} (blank cells left out), with the row number and field→column."""
        sheet = ws.title
        by_header = {c.header: c for c in cols}
        colmap: dict[str, int] = {}
        first = next(ws.iter_rows(min_row=1, max_row=1, values_only=True), ())
        for i, raw in enumerate(first, start=1):
            h = _norm_header(raw)
            if not h or h.startswith(("备注", "说明")):
                continue
            col = by_header.get(h)
            if col is None:
                self.problems.append(
                    f"{_at(sheet, 1, i)}: unknown column {str(raw)!r} "
                    f"(expected: {', '.join(by_header)}; extra columns must start with 备注)"
                )
            elif col.field in colmap:
                self.problems.append(f"{_at(sheet, 1, i)}: column {h!r} appears twice")
            else:
                colmap[col.field] = i
        missing = [c.header for c in cols if c.required and c.field not in colmap]
        if missing:
            self.problems.append(f"sheet {sheet}: missing column(s) {', '.join(missing)}")
            return []
        rows = []
        for r, values in enumerate(ws.iter_rows(min_row=2, values_only=True), start=2):
            if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
                continue
            data: dict[str, Any] = {}
            for col in cols:
                idx = colmap.get(col.field)
                if idx is None:
                    continue
                raw = values[idx - 1] if idx - 1 < len(values) else None
                try:
                    value = col.read(raw)
                except _CellError as e:
                    self.cell_problem(sheet, r, idx, col, str(e))
                    continue
                if value is None:
                    if col.required:
                        self.cell_problem(sheet, r, idx, col, "required")
                    continue
                data[col.field] = value
            rows.append((r, data, colmap))
        return rows

    def model(
        self,
        cls: type[M],
        data: Mapping[str, Any],
        sheet: str,
        row: int,
        colmap: Mapping[str, int],
        headers: Mapping[str, str],
    ) -> M | None:
        try:
            return cls.model_validate(data)
        except ValidationError as e:

            def where(loc: tuple[int | str, ...]) -> str:
                name = str(loc[0]) if loc else ""
                idx = colmap.get(name)
                return _at(sheet, row, idx, headers.get(name)) if idx else _at(sheet, row)

            fresh = [
                err
                for err in e.errors()
                if not err["loc"] or (sheet, row, str(err["loc"][0])) not in self.reported
            ]
            if fresh:  # a cell already reported as unreadable is not reported again
                self.problems.extend(pydantic_lines(fresh, where))
            return None

    def note(self, where: str, sheet: str, row: int) -> None:
        self.sources.setdefault(where, []).append(f"sheet {sheet}, row {row}")

    def addresses(
        self, data: dict[str, Any], sheet: str, row: int, colmap: Mapping[str, int]
    ) -> tuple[dict[str, Any], Addresses | None]:
        """Take the address cells out of a 单位/人员 row: (the rest of the row, its addresses)."""
        found = {k: data.pop(k) for k in ADDRESS_FIELDS if k in data}
        if not found:
            return data, None
        headers = {c.field: c.header for c in ADDRESS_COLS}
        return data, self.model(Addresses, found, sheet, row, colmap, headers)

    def note_addresses(self, where: str, sheet: str, row: int,
                       colmap: Mapping[str, int]) -> None:
        """Each address column of the row, so a bad address is reported in its own cell."""
        for col in ADDRESS_COLS:
            idx = colmap.get(col.field)
            if idx is not None:
                self.sources.setdefault(f"{where}.{col.field}", []).append(
                    _at(sheet, row, idx, col.header))


def read_plan_xlsx(path: Path | str) -> Plan:
    return read_xlsx_with_sources(Path(path))[0]


def read_xlsx_with_sources(path: Path) -> tuple[Plan, SourceMap]:
    try:
        wb = load_workbook(path, data_only=True)
    except FileNotFoundError as e:
        raise PlanReadError(path, ["file not found"]) from e
    except Exception as e:  # openpyxl raises several kinds for a file that is not a workbook
        raise PlanReadError(path, [f"not a readable .xlsx workbook: {e}"]) from e
    rd = _Reader(path)
    missing = [s for s in ("计划", "单位", "任务") if s not in wb.sheetnames]
    if missing:
        raise PlanReadError(
            path, [f"missing sheet(s) {', '.join(missing)} (sheets: {', '.join(wb.sheetnames)})"]
        )

    plan_fields, plan_rows = _read_plan_sheet(rd, wb["计划"])
    tz = str(plan_fields.get("timezone", DEFAULT_TZ))

    units: list[Unit] = []
    unit_addresses: dict[str, Addresses] = {}
    for r, data, colmap in rd.table(wb["单位"], UNIT_COLS):
        data, addresses = rd.addresses(data, "单位", r, colmap)
        u = rd.model(Unit, data, "单位", r, colmap, {c.field: c.header for c in UNIT_COLS})
        if u is not None:
            units.append(u)
            rd.note(f"units.{u.code}", "单位", r)
            if addresses is not None:
                unit_addresses[u.code] = addresses
                rd.note_addresses(f"units.{u.code}", "单位", r, colmap)

    roster: list[Member] = []
    member_addresses: dict[str, Addresses] = {}
    if "人员" in wb.sheetnames:
        for r, data, colmap in rd.table(wb["人员"], MEMBER_COLS):
            data, addresses = rd.addresses(data, "人员", r, colmap)
            m = rd.model(Member, data, "人员", r, colmap, {c.field: c.header for c in MEMBER_COLS})
            if m is not None:
                roster.append(m)
                rd.note(f"roster.{m.actor}", "人员", r)
                if addresses is not None:
                    member_addresses[m.actor] = addresses
                    rd.note_addresses(f"roster.{m.actor}", "人员", r, colmap)

    task_rows = rd.table(wb["任务"], TASK_COLS)
    task_codes = {d["code"] for _, d, _ in task_rows if "code" in d}
    nodes: dict[str, list[NodeSpec]] = {}
    if "节点" in wb.sheetnames:

        def due_at(v: Any) -> dt.datetime | None:
            return _instant(v, tz)

        node_cols = tuple(
            c if c.field != "due_at" else _Col(c.header, c.field, due_at, c.write, c.note, c.width)
            for c in NODE_COLS
        )
        headers = {c.field: c.header for c in NODE_COLS}
        for r, data, colmap in rd.table(wb["节点"], node_cols):
            task = data.pop("task", None)
            if task is None:
                continue
            if task not in task_codes:
                rd.problems.append(
                    f"{_at('节点', r, colmap['task'], '任务编码')}: no task {task!r} on sheet 任务"
                )
                continue
            n = rd.model(NodeSpec, data, "节点", r, colmap, headers)
            if n is not None:
                nodes.setdefault(task, []).append(n)
                rd.note(f"tasks.{task}.nodes.{n.code}", "节点", r)

    tasks: list[TaskDef] = []
    headers = {c.field: c.header for c in TASK_COLS}
    for r, data, colmap in task_rows:
        t = rd.model(
            TaskDef,
            {**data, "nodes": tuple(nodes.get(data.get("code", ""), ()))},
            "任务",
            r,
            colmap,
            headers,
        )
        if t is not None:
            tasks.append(t)
            rd.note(f"tasks.{t.code}", "任务", r)

    if rd.problems:
        raise PlanReadError(path, rd.problems)
    plan_data = {
        **plan_fields,
        "units": tuple(units),
        "roster": tuple(roster),
        "tasks": tuple(tasks),
        "directory": Directory(units=unit_addresses, members=member_addresses),
    }
    try:
        plan = Plan.model_validate(plan_data)
    except ValidationError as e:

        def where(loc: tuple[int | str, ...]) -> str:
            key = ".".join(str(x) for x in loc[:2] if x is not None)
            row = plan_rows.get(key) or plan_rows.get(str(loc[0]) if loc else "")
            if row:
                return _at("计划", row, 2, _plan_header(key) or _plan_header(str(loc[0])))
            return f"sheet 计划: {dotted(loc) or 'plan'}"

        raise PlanReadError(path, pydantic_lines(e, where)) from e
    for key in ("timezone", "start_at"):
        if key in plan_rows:
            rd.note(key, "计划", plan_rows[key])
    return plan, rd.sources


def _plan_header(key: str) -> str | None:
    return next((s.header for s in PLAN_ROWS if s.field == key), None)


def _read_plan_sheet(rd: _Reader, ws: Worksheet) -> tuple[dict[str, Any], dict[str, int]]:
    by_header = {s.header: s for s in PLAN_ROWS}
    raw: dict[str, tuple[int, Any]] = {}
    for r, values in enumerate(ws.iter_rows(min_row=2, values_only=True), start=2):
        key = _norm_header(values[0] if values else None)
        if not key or key.startswith(("备注", "说明")):
            continue
        spec = by_header.get(key)
        if spec is None:
            rd.problems.append(
                f"{_at('计划', r, 1, '项目')}: unknown item {key!r} (expected: {', '.join(by_header)})"
            )
            continue
        if spec.field in raw:
            rd.problems.append(f"{_at('计划', r, 1, '项目')}: item {key!r} appears twice")
            continue
        raw[spec.field] = (r, values[1] if len(values) > 1 else None)
    tz_row = raw.get("timezone")
    tz = _text(tz_row[1]) if tz_row else None
    fields: dict[str, Any] = {}
    recheck: dict[str, Any] = {}
    rows = {f: r for f, (r, _) in raw.items()}
    for spec in PLAN_ROWS:
        if spec.field not in raw:
            if spec.required:
                rd.problems.append(f"sheet 计划: missing item {spec.header}")
            continue
        r, v = raw[spec.field]
        try:
            value = _instant(v, tz or DEFAULT_TZ) if spec.field == "start_at" else spec.read(v)
        except _CellError as e:
            rd.problems.append(f"{_at('计划', r, 2, spec.header)}: {e}")
            continue
        if value is None:
            if spec.required:
                rd.problems.append(f"{_at('计划', r, 2, spec.header)}: required")
            continue
        if spec.field.startswith("recheck."):
            recheck[spec.field.split(".", 1)[1]] = value
        else:
            fields[spec.field] = value
    if recheck:
        try:
            fields["recheck"] = RecheckPolicy.model_validate(recheck)
        except ValidationError as e:

            def where(loc: tuple[int | str, ...]) -> str:
                key = f"recheck.{loc[0]}" if loc else "recheck"
                return _at("计划", rows.get(key, 0), 2, _plan_header(key))

            rd.problems.extend(pydantic_lines(e, where))
    return fields, rows
