"""Sign-in for the web app: the roster read model (people), credentials, sign-ins, sessions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10

`people` is filled when a plan is loaded (`starter.py plan load`); plans loaded before this
revision are loaded again (it is idempotent) to sign their people in.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "people",
        sa.Column("plan_code", sa.String(100), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("unit", sa.String(100), nullable=False),
        sa.Column("unit_name", sa.Text(), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("loaded_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("plan_code", "actor", name="pk_people"),
    )
    op.create_index("ix_people_actor", "people", ["actor"])

    op.create_table(
        "credentials",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("issued_by", sa.String(200), nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_credentials"),
    )
    op.create_index("ix_credentials_actor", "credentials", ["actor"])

    op.create_table(
        "sign_ins",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("remote", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sign_ins"),
    )
    op.create_index("ix_sign_ins_actor_at", "sign_ins", ["actor", "at"])
    op.create_index("ix_sign_ins_remote_at", "sign_ins", ["remote", "at"])

    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("credential_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("closed_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_web_sessions"),
    )


def downgrade() -> None:
    op.drop_table("web_sessions")
    op.drop_index("ix_sign_ins_remote_at", table_name="sign_ins")
    op.drop_index("ix_sign_ins_actor_at", table_name="sign_ins")
    op.drop_table("sign_ins")
    op.drop_index("ix_credentials_actor", table_name="credentials")
    op.drop_table("credentials")
    op.drop_index("ix_people_actor", table_name="people")
    op.drop_table("people")
