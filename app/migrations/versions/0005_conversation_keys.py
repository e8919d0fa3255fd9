"""Conversations of API keys: a key's conversations are the key's, not its maker's.

A key acts for the member who made it (its rate limits, its "own" resources), but a person's
conversations are private: a reader key handed to a bot must not read them. A conversation now
records the key it was held through (NULL for a person signed in), and every read names both.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "SET lock_timeout = '5s';\n"
        "SET statement_timeout = '5min';\n"
        "ALTER TABLE conversations ADD COLUMN key_id uuid;"
    )


def downgrade() -> None:
    op.execute(
        "SET lock_timeout = '5s';\n"
        "SET statement_timeout = '5min';\n"
        "ALTER TABLE conversations DROP COLUMN IF EXISTS key_id;"
    )
