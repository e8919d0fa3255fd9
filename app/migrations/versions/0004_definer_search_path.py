"""SECURITY DEFINER functions: ``pg_temp`` last in their search_path.

When a function's search_path does not name ``pg_temp``, PostgreSQL searches the session's
temporary schema *first* for tables and views. The application role may create temporary
objects (the chunk writes stage rows in a temporary table), so a temporary view named like a
table the function reads would run inside the function with its owner's rights, row-level
security bypassed. Naming ``pg_temp`` last closes that (PostgreSQL's own advice for SECURITY
DEFINER functions); ``tests/app/test_definer_functions.py`` tries the attack.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FUNCTIONS = (
    "app_authenticate_api_key(bytea)",
    "app_authenticate_session(bytea)",
    "app_find_user_by_email(text)",
    "app_find_user_by_oidc(text, text)",
    "app_claim_invitations(uuid, text)",
    "app_resolve_share(text)",
)


def _set(search_path: str) -> str:
    lines = ["SET lock_timeout = '5s';", "SET statement_timeout = '5min';"]
    lines += [f"ALTER FUNCTION {f} SET search_path = {search_path};" for f in FUNCTIONS]
    return "\n".join(lines)


def upgrade() -> None:
    op.execute(_set("pg_catalog, public, pg_temp"))


def downgrade() -> None:
    op.execute(_set("pg_catalog, public"))
