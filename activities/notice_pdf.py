"""督办单 as an A4 PDF (reportlab), with a Chinese font embedded: printed, stamped and filed.

The page follows the layout of a 党政机关公文 (GB/T 9704) as offices use it for a 督办单: the
issuing office's name in red as the 版头, the title, the number 〔2026〕第15号 and a red rule;
then the form (task, unit, node, due time, days late, ladder step and level, the demand, the
反馈时限, who it goes to, a 签收 line); then the issuing office and date with the stamp's place
(盖章处) over them. Side-effect free: bytes in, bytes out, and the same notice gives the same
bytes (`invariant`), so an e-mail retried carries an identical attachment.

The font is a TrueType collection (Debian's fonts-wqy-zenhei by default; `DUBAN_CJK_FONT` =
path[:index] chooses another); reportlab embeds the subset of glyphs used, with a ToUnicode map,
so the text can be searched and copied from the PDF.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.platypus.flowables import KeepTogether

from activities.notice_document import NoticeRecord, NoticeSheet, notice_sheet

FONT = "DubanCJK"
FONT_ENV = "DUBAN_CJK_FONT"
DEFAULT_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc",
)
RED = colors.HexColor("#c8161d")  # 公文 red (版头, 分隔线)
INK = colors.HexColor("#1a1a1a")
GREY = colors.HexColor("#777777")
PAGE_W, PAGE_H = A4
MARGIN_X = 26 * mm
WIDTH = PAGE_W - 2 * MARGIN_X


class FontMissing(RuntimeError):
    """No Chinese font to embed: install fonts-wqy-zenhei or set DUBAN_CJK_FONT."""


@cache
def register_font() -> str:
    """Register the CJK font once per process; its reportlab name."""
    configured = os.environ.get(FONT_ENV, "")
    candidates = [configured] if configured else list(DEFAULT_FONTS)
    for spec in candidates:
        path, _, index = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
        if Path(path).exists():
            pdfmetrics.registerFont(TTFont(FONT, path, subfontIndex=int(index or 0),
                                           asciiReadable=True))
            _chinese_line_breaking()
            return FONT
    raise FontMissing(f"no Chinese font at {', '.join(candidates)} (Debian: apt-get install "
                      f"fonts-wqy-zenhei; or set {FONT_ENV}=path[:subfont index])")


def _chinese_line_breaking() -> None:
    """reportlab's CJK wrapping knows the Japanese 禁则 only: teach it that Chinese full-width
    punctuation (，；：？！ and closing quotes) never starts a line either."""
    from reportlab.lib import textsplit
    from reportlab.platypus import paragraph

    for module in (textsplit, paragraph):  # one-fragment and many-fragment paragraphs
        known: str = module.ALL_CANNOT_START
        module.ALL_CANNOT_START = known + "".join(
            ch for ch in "，；：？！”’》〉」』】〕）" if ch not in known)


def _style(name: str, size: float, *, leading: float | None = None, color: Any = INK,
           align: int = 0, space_before: float = 0) -> ParagraphStyle:
    return ParagraphStyle(name, fontName=FONT, fontSize=size, leading=leading or size * 1.5,
                          textColor=color, alignment=align, wordWrap="CJK",
                          spaceBefore=space_before)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Bold(Flowable):  # type: ignore[misc]  # reportlab has no type hints
    """One centred line, drawn filled and stroked (the font has one weight; a 版头 is bold)."""

    def __init__(self, text: str, size: float, color: Any, *, spacing: float = 0,
                 stroke: float = 0.6, height: float | None = None) -> None:
        super().__init__()
        self.text, self.size, self.color, self.spacing, self.stroke = (
            text, size, color, spacing, stroke)
        self.height = height or size * 1.4

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        self.width = avail_width
        return avail_width, self.height

    def draw(self) -> None:
        c = self.canv
        size = self.size
        # Shrink a long office name to the line rather than wrapping a 版头.
        while size > 10 and self._width(size) > self.width:
            size -= 1
        c.saveState()
        c.setFillColor(self.color)
        c.setStrokeColor(self.color)
        c.setLineWidth(self.stroke)
        t = c.beginText()
        t.setTextRenderMode(2)  # fill + stroke
        t.setFont(FONT, size)
        t.setCharSpace(self.spacing)
        t.setTextOrigin((self.width - self._width(size)) / 2, (self.height - size) / 2 + 1)
        t.textOut(self.text)
        c.drawText(t)
        c.restoreState()

    def _width(self, size: float) -> float:
        return float(pdfmetrics.stringWidth(self.text, FONT, size)
                     + self.spacing * max(len(self.text) - 1, 0))


class _NumberRule(Flowable):  # type: ignore[misc]  # reportlab has no type hints
    """The number line (left: 〔2026〕第15号, right: the ladder step) over the red rule."""

    def __init__(self, number: str, right: str) -> None:
        super().__init__()
        self.number, self.right = number, right
        self.height = 12 * mm

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        self.width = avail_width
        return avail_width, self.height

    def draw(self) -> None:
        c = self.canv
        c.saveState()
        c.setFillColor(INK)
        c.setFont(FONT, 12)
        c.drawCentredString(self.width / 2, 5.5 * mm, self.number)
        c.setFont(FONT, 9)
        c.setFillColor(GREY)
        c.drawRightString(self.width, 5.5 * mm, self.right)
        c.setStrokeColor(RED)
        c.setLineWidth(1.6)
        c.line(0, 2 * mm, self.width, 2 * mm)
        c.setLineWidth(0.5)
        c.line(0, 1 * mm, self.width, 1 * mm)
        c.restoreState()


class _Stamp(Flowable):  # type: ignore[misc]  # reportlab has no type hints
    """The issuing office and date at the right, with the seal's place drawn over them
    (a seal covers the office's name and the date: 上不压正文、下要骑年盖月)."""

    def __init__(self, office: str, date: str) -> None:
        super().__init__()
        self.office, self.date = office, date
        self.height = 44 * mm

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        self.width = avail_width
        return avail_width, self.height

    def draw(self) -> None:
        c = self.canv
        size = 14
        right = self.width - 8 * mm
        while size > 9 and pdfmetrics.stringWidth(self.office, FONT, size) > self.width * 0.6:
            size -= 1
        block = max(pdfmetrics.stringWidth(self.office, FONT, size),
                    pdfmetrics.stringWidth(self.date, FONT, size))
        centre_x = right - block / 2
        c.saveState()
        c.setFillColor(INK)
        c.setFont(FONT, size)
        c.drawCentredString(centre_x, 18 * mm, self.office)
        c.drawCentredString(centre_x, 10 * mm, self.date)
        # The seal's place: a dashed circle of a 42 mm 公章, centred over office and date.
        c.setStrokeColor(RED)
        c.setLineWidth(0.6)
        c.setDash(3, 2)
        c.circle(centre_x, 21 * mm, 21 * mm, stroke=1, fill=0)
        c.setDash()
        c.setFillColor(colors.HexColor("#d99a9c"))
        c.setFont(FONT, 9)
        c.drawCentredString(centre_x, 33 * mm, "（盖章处）")
        c.restoreState()


def _pieces(par: Paragraph, width: float, height: float) -> list[Paragraph]:
    """`par` cut into paragraphs of at most `height` each (at line boundaries)."""
    pieces: list[Paragraph] = []
    rest = par
    while rest.wrap(width, PAGE_H * 100)[1] > height:
        parts = rest.split(width, height)
        if len(parts) < 2:
            break
        pieces.append(parts[0])
        rest = parts[1]
    return [*pieces, rest]


def _form(sheet: NoticeSheet) -> Table:
    label = _style("label", 11, align=TA_CENTER)
    cell = _style("cell", 11, leading=17)
    demand = _style("demand", 12, leading=20)

    def p(text: str, style: ParagraphStyle = cell) -> Paragraph:
        return Paragraph(_esc(text), style)

    def lab(text: str) -> Paragraph:
        return Paragraph(_esc(text), label)

    def blank(width: int) -> str:  # a line to write on, `width` characters wide
        return "<u>" + "&nbsp;" * (width * 4) + "</u>"  # no-break spaces: never collapsed

    signed = (Paragraph(_esc(f"已签收：{sheet.signed}"), cell) if sheet.signed
              else Paragraph(f"签收人：{blank(6)}　签收时间：{blank(3)}年{blank(2)}月{blank(2)}日"
                             f"{blank(2)}时", cell))
    warn = ParagraphStyle("warn", parent=cell, textColor=RED)
    label_w, half = 27 * mm, (WIDTH - 2 * 27 * mm) / 2
    # A long demand goes in rows of at most ~half a page, so the table can break between them
    # (a row taller than a page cannot be laid out); a short one gets room to write on.
    asked = _pieces(p(sheet.demand, demand), WIDTH - label_w - 12, 60 * mm)
    asked_h = 24 * mm if len(asked) == 1 and asked[0].wrap(WIDTH - label_w - 12, PAGE_H)[1] \
        + 12 < 24 * mm else None
    rows = [
        [lab("督办事项"), p(f"{sheet.task_title}"), "", ""],
        [lab("所属清单"), p(sheet.plan_title), "", ""],
        [lab("责任单位"), p(f"{sheet.unit_name}（{sheet.unit_code}）"), lab("牵头单位"),
         p(sheet.lead_unit_name)],
        [lab(f"督办{sheet.target_kind}"), p(sheet.target), "", ""],
        [lab("应完成时间"), p(sheet.due), lab("已逾期"), p(sheet.days_late, warn)],
        [lab("督办阶梯"), p(f"{sheet.ladder} · {sheet.step_title}（第{sheet.level}级）"), "", ""],
        *([lab("督办要求" if i == 0 else "（续）"), piece, "", ""] for i, piece in enumerate(asked)),
        [lab("反馈时限"), p(sheet.reply_by + "，逾期未反馈的按督办阶梯升级督办"), "", ""],
        [lab("送　　达"), p(sheet.recipients), "", ""],
        [lab("签　　收"), signed, "", ""],
    ]
    if sheet.reply_missed:
        rows.append([lab("逾期未反馈"),
                     p(f"截至 {sheet.reply_missed} 既未签收也未反馈，已记录在案", warn), "", ""])
    demand_rows = range(6, 6 + len(asked))
    table = Table(rows, colWidths=[label_w, half, label_w, half],
                  rowHeights=[asked_h if i in demand_rows else None for i in range(len(rows))])
    spans = [("SPAN", (1, i), (3, i)) for i, r in enumerate(rows) if r[2] == ""]
    table.setStyle(TableStyle([
        ("FONT", (0, 0), (-1, -1), FONT, 11),
        ("GRID", (0, 0), (-1, -1), 0.6, INK),
        ("BOX", (0, 0), (-1, -1), 1.2, INK),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("VALIGN", (1, 6), (1, 5 + len(asked)), "TOP"),
        ("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#f6f1f1")),
        ("BACKGROUND", (2, 2), (2, 2), colors.HexColor("#f6f1f1")),
        ("BACKGROUND", (2, 4), (2, 4), colors.HexColor("#f6f1f1")),
        ("TOPPADDING", (0, 0), (-1, -1), 4),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
        ("LEFTPADDING", (0, 0), (-1, -1), 6),
        ("RIGHTPADDING", (0, 0), (-1, -1), 6),
        *spans,
    ]))
    return table


def _footer(sheet: NoticeSheet) -> Any:
    offset = sheet.issued.strftime("%z") or "+0000"
    # The document's date is its issue (the rung's time), not the moment it was printed.
    stamp = sheet.issued.strftime("D:%Y%m%d%H%M%S") + f"{offset[:3]}'{offset[3:]}'"

    def draw(canvas: Any, _doc: Any) -> None:
        canvas.setDateFormatter(lambda *_: stamp)
        canvas.saveState()
        canvas.setFont(FONT, 8)
        canvas.setFillColor(GREY)
        canvas.drawString(MARGIN_X, 14 * mm,
                          f"本{sheet.kind}由督办系统按督办阶梯自动生成，以盖章件为准。"
                          f"任务 {sheet.task_id} · 步骤 {sheet.step_key} · 事件序号 {sheet.seq}")
        canvas.drawRightString(PAGE_W - MARGIN_X, 14 * mm, f"第 {canvas.getPageNumber()} 页")
        canvas.restoreState()
    return draw


def sheet_pdf(sheet: NoticeSheet, *, compress: bool = True) -> bytes:
    """The A4 PDF of one 督办单 sheet."""
    register_font()
    buf = io.BytesIO()
    title = f"{sheet.kind} {sheet.number}" if sheet.numbered else sheet.kind
    doc = SimpleDocTemplate(
        buf, pagesize=A4, leftMargin=MARGIN_X, rightMargin=MARGIN_X, topMargin=20 * mm,
        bottomMargin=20 * mm, initialFontName=FONT, title=title, author=sheet.office,
        subject=f"{sheet.task_title}（{sheet.unit_name}）", creator="督办 Duban",
        producer="督办 Duban", lang="zh-CN", invariant=True, pageCompression=int(compress),
        displayDocTitle=True)
    heading = "督　办　单" if sheet.kind == "督办单" else "督办提醒"
    story: list[Any] = [
        _Bold(sheet.office, 24, RED, spacing=1.5, stroke=0.8, height=14 * mm),
        _Bold(heading, 28, RED, spacing=4, stroke=0.9, height=16 * mm),
        _NumberRule(sheet.number if sheet.numbered else "", f"第{sheet.level}级督办"),
        Spacer(1, 4 * mm),
        Paragraph(_esc(f"{sheet.unit_name}："), _style("to", 13, leading=21)),
        Paragraph(_esc(
            f"你单位承担的“{sheet.task_title}”{sheet.target_kind}“{sheet.target}”已于"
            f"{sheet.due}到期，至{sheet.issued_at}已逾期{sheet.days_late}。按照"
            f"《{sheet.plan_title}》和“{sheet.ladder}”规则，现启动第{sheet.level}级督办"
            f"（{sheet.step_title}），"
            f"请按下列要求办理，并于{sheet.reply_by}反馈办理情况。"),
            ParagraphStyle("body", parent=_style("b", 13, leading=21), firstLineIndent=26)),
        Spacer(1, 3 * mm),
        _form(sheet),
        Spacer(1, 4 * mm),
        KeepTogether([_Stamp(sheet.office, sheet.issued_on)]),
    ]
    doc.build(story, onFirstPage=_footer(sheet), onLaterPages=_footer(sheet))
    return buf.getvalue()


def notice_pdf(notice_row: Mapping[str, Any], record: NoticeRecord, *,
               compress: bool = True) -> bytes:
    """The A4 PDF of a 督办单: `notice_row` a `notices` row (store.notice / notice_by_id /
    list_notices), `record` its task's record and office (`load_notice_record(store, task_id)`)."""
    return sheet_pdf(notice_sheet(notice_row, record), compress=compress)
