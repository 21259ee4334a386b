"""Delivery of 督办单 to people: each plan's 通讯录 (`directory`) and the copies sent (`deliveries`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-17

- directory: one row per unit and per roster member of each loaded plan, with their e-mail
  addresses, webhook and the name of the environment variable holding the webhook's secret
  (never the secret). Plans loaded before this revision have none: load them again
  (`starter.py plan load` is idempotent) and their pending notices are delivered.
- deliveries: one row per outbox message × channel × address, with its idempotency key,
  status (pending, attempting, delivered, failed, dead), attempts, next attempt and lease.
- outbox (delivered_at): an index, so the delivery worker finds the open rows without reading
  the delivered ones; `delivered_at` is set once every copy of the row is delivered.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "directory",
        sa.Column("plan_code", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("code", sa.String(200), nullable=False),
        sa.Column("unit", sa.String(100), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("emails", sa.JSON(), nullable=False),
        sa.Column("webhook", sa.Text(), nullable=True),
        sa.Column("webhook_secret_env", sa.String(100), nullable=True),
        sa.Column("loaded_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("plan_code", "kind", "code", name="pk_directory"),
    )

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        sa.Column("plan_code", sa.String(100), nullable=False),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("step_key", sa.String(200), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("secret_env", sa.String(100), nullable=True),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("claimed_by", sa.String(100), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("outbox_id", "channel", "address", name="uq_deliveries_copy"),
        sa.UniqueConstraint("idempotency_key", name="uq_deliveries_idempotency_key"),
    )
    op.create_index("ix_deliveries_outbox_id", "deliveries", ["outbox_id"])
    op.create_index("ix_deliveries_status_next", "deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_deliveries_plan_status", "deliveries", ["plan_code", "status"])
    op.create_index("ix_outbox_delivered_at", "outbox", ["delivered_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_delivered_at", table_name="outbox")
    op.drop_index("ix_deliveries_plan_status", table_name="deliveries")
    op.drop_index("ix_deliveries_status_next", table_name="deliveries")
    op.drop_index("ix_deliveries_outbox_id", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_table("directory")
