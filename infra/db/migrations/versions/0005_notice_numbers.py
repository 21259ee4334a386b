"""督办单 numbers (〔2026〕第15号) and the columns of 签收 and the missed 反馈时限.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-17

- notices (plan_code, year, number): each 督办单 (action "notice") is numbered per plan and per
  local year of its rung when it is first recorded; the unique constraint makes two notices
  with one number impossible on every backend (the store retries the loser). Reminders
  (督办提醒) are not numbered, nor are notices recorded before this revision: their number
  stays empty rather than being invented after the fact, when offices may already have filed
  them under their step key.
- notices (signed_at, signed_by, reply_missed_at): 签收 by the responsible unit, and the moment
  a 督办单 was found neither signed for nor answered by its 反馈时限.
- tasks.missed_replies: how many of the task's 督办单 missed their 反馈时限 (0 for rows written
  before; `starter.py store rebuild` recounts them from the events).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("notices") as batch:
        batch.add_column(sa.Column("plan_code", sa.String(100), nullable=True))
        batch.add_column(sa.Column("year", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("number", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("signed_at", TS, nullable=True))
        batch.add_column(sa.Column("signed_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("reply_missed_at", TS, nullable=True))
        batch.create_unique_constraint("uq_notices_plan_year_number",
                                       ["plan_code", "year", "number"])
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("missed_replies", sa.Integer(), nullable=False,
                                   server_default=sa.text("0")))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("missed_replies")
    with op.batch_alter_table("notices") as batch:
        batch.drop_constraint("uq_notices_plan_year_number", type_="unique")
        batch.drop_column("reply_missed_at")
        batch.drop_column("signed_by")
        batch.drop_column("signed_at")
        batch.drop_column("number")
        batch.drop_column("year")
        batch.drop_column("plan_code")
