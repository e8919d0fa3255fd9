"""Accounts by proof: mailed single-use tokens (invitations, email verification, password
reset), verified emails, per-org OIDC bindings, and API keys capped by their maker's role.

- An invitation is accepted only with the token mailed to the invited address
  (``invitation_tokens``), by a signed-in user whose verified email is that address.
  ``app_claim_invitations``, which joined whoever signed up with the address, now claims
  nothing: it stays (empty) only so that pods of the previous release, still rolling out, get
  an answer instead of an error. Invitations pending from before have no token: they expire
  here and must be sent again. A revoked invitation is deleted (the audit log keeps it).
- ``user_tokens`` holds the hashes of email-verification and password-reset tokens; a token is
  used once, inside ``app_use_user_token``.
- ``org_oidc_bindings``: an org accepts org and role claims only from the issuer and claim
  value its owner bound to it, up to the role the binding allows.
- ``app_authenticate_api_key`` answers the lower of the key's role and its maker's current role
  in the org, and nothing for a key whose maker is no longer a member.
- ``app.key_id`` is set on API-key requests: the policies that let a person see their own
  memberships, orgs, sessions and tokens across orgs do not apply to a key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';

CREATE FUNCTION app_current_key() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.key_id', true), '')::uuid $$;
GRANT EXECUTE ON FUNCTION app_current_key() TO record_app;

ALTER TABLE users ADD COLUMN IF NOT EXISTS email_verified_at timestamptz;

ALTER TABLE invitations ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE invitations ADD COLUMN IF NOT EXISTS accepted_by uuid;
UPDATE invitations SET expires_at = now() WHERE expires_at IS NULL;

CREATE TABLE invitation_tokens (
    invitation_id uuid PRIMARY KEY REFERENCES invitations (id) ON DELETE CASCADE,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX invitation_tokens_token_hash_key ON invitation_tokens (token_hash);
CREATE INDEX invitation_tokens_org_idx ON invitation_tokens (org_id);
ALTER TABLE invitation_tokens ENABLE ROW LEVEL SECURITY;
CREATE POLICY invitation_tokens_tenant ON invitation_tokens
    USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org());
GRANT SELECT, INSERT, UPDATE, DELETE ON invitation_tokens TO record_app;

CREATE TABLE user_tokens (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose text NOT NULL CHECK (purpose IN ('verify_email', 'password_reset')),
    token_hash bytea NOT NULL,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
CREATE UNIQUE INDEX user_tokens_token_hash_key ON user_tokens (token_hash);
CREATE INDEX user_tokens_user_idx ON user_tokens (user_id, purpose);
ALTER TABLE user_tokens ENABLE ROW LEVEL SECURITY;
CREATE POLICY user_tokens_self ON user_tokens
    USING (user_id = app_current_user() AND app_current_key() IS NULL)
    WITH CHECK (user_id = app_current_user() AND app_current_key() IS NULL);
GRANT SELECT, INSERT, UPDATE ON user_tokens TO record_app;

CREATE TABLE org_oidc_bindings (
    org_id uuid PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    issuer text NOT NULL CHECK (length(issuer) BETWEEN 1 AND 500),
    claim_value text NOT NULL CHECK (length(claim_value) BETWEEN 1 AND 200),
    max_role text NOT NULL CHECK (max_role IN ('owner', 'admin', 'contributor', 'reader')),
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX org_oidc_bindings_claim_key ON org_oidc_bindings (issuer, claim_value);
ALTER TABLE org_oidc_bindings ENABLE ROW LEVEL SECURITY;
CREATE POLICY org_oidc_bindings_tenant ON org_oidc_bindings
    USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org());
GRANT SELECT, INSERT, UPDATE, DELETE ON org_oidc_bindings TO record_app;

-- A key sees its own org only: not the orgs, memberships and sessions of the person who made it.
ALTER POLICY orgs_member ON orgs
    USING (
        id = app_current_org()
        OR (
            app_current_key() IS NULL
            AND id IN (SELECT m.org_id FROM memberships AS m WHERE m.user_id = app_current_user())
        )
    );
ALTER POLICY memberships_org_or_self ON memberships
    USING (
        org_id = app_current_org()
        OR (user_id = app_current_user() AND app_current_key() IS NULL)
    );
ALTER POLICY sessions_self ON sessions
    USING (user_id = app_current_user() AND app_current_key() IS NULL)
    WITH CHECK (user_id = app_current_user() AND app_current_key() IS NULL);

CREATE OR REPLACE FUNCTION app_claim_invitations(p_user_id uuid, p_email text)
    RETURNS TABLE (org_id uuid, role text)
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$ SELECT NULL::uuid, NULL::text WHERE false $$;

CREATE OR REPLACE FUNCTION app_authenticate_api_key(p_key_hash bytea)
    RETURNS TABLE (key_id uuid, org_id uuid, role text, created_by uuid)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
BEGIN
    UPDATE api_keys AS k SET last_used_at = now()
     WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
       AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute');
    -- The lower of the key's role and its maker's role now: a demoted maker's keys are demoted
    -- with them, and a key whose maker left (or is unknown) authenticates nobody.
    RETURN QUERY
        SELECT k.id, k.org_id,
               CASE WHEN array_position(r.ranks, m.role) < array_position(r.ranks, k.role)
                    THEN m.role ELSE k.role END,
               k.created_by
          FROM api_keys AS k
          JOIN memberships AS m ON m.org_id = k.org_id AND m.user_id = k.created_by
         CROSS JOIN (SELECT ARRAY['reader', 'contributor', 'admin', 'owner'] AS ranks) AS r
         WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
END
$$;

CREATE FUNCTION app_find_user_for_login(p_email text)
    RETURNS TABLE (id uuid, email text, name text, password_hash text,
                   email_verified_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    SELECT u.id, u.email, u.name, u.password_hash, u.email_verified_at FROM users AS u
     WHERE lower(u.email) = lower(p_email)
$$;

-- An invitation by the hash of its mailed token, while it can still be accepted.
CREATE FUNCTION app_find_invitation(p_token_hash bytea)
    RETURNS TABLE (id uuid, org_id uuid, email text, role text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    SELECT i.id, i.org_id, i.email, i.role
      FROM invitation_tokens AS t JOIN invitations AS i ON i.id = t.invitation_id
     WHERE t.token_hash = p_token_hash AND i.accepted_at IS NULL AND i.expires_at > now()
$$;

-- Use an email-verification or password-reset token: once, before it expires.
CREATE FUNCTION app_use_user_token(p_token_hash bytea, p_purpose text)
    RETURNS TABLE (user_id uuid, email text)
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    UPDATE user_tokens AS t SET used_at = now()
     WHERE t.token_hash = p_token_hash AND t.purpose = p_purpose AND t.used_at IS NULL
       AND t.expires_at > now()
    RETURNING t.user_id, t.email
$$;

-- Invite-only signup: is there an open invitation for this address (in any org)?
CREATE FUNCTION app_email_invited(p_email text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    SELECT EXISTS (
        SELECT FROM invitations AS i
         WHERE lower(i.email) = lower(p_email) AND i.accepted_at IS NULL
           AND i.expires_at > now()
    )
$$;

-- The org bound to an identity provider's org claim, and the highest role it may grant.
CREATE FUNCTION app_find_oidc_binding(p_issuer text, p_claim_value text)
    RETURNS TABLE (org_id uuid, max_role text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    SELECT b.org_id, b.max_role FROM org_oidc_bindings AS b
     WHERE b.issuer = p_issuer AND b.claim_value = p_claim_value
$$;

REVOKE ALL ON FUNCTION
    app_find_user_for_login(text), app_find_invitation(bytea), app_use_user_token(bytea, text),
    app_find_oidc_binding(text, text), app_email_invited(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    app_find_user_for_login(text), app_find_invitation(bytea), app_use_user_token(bytea, text),
    app_find_oidc_binding(text, text), app_email_invited(text)
    TO record_app;
"""

DOWNGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';
DROP FUNCTION IF EXISTS app_email_invited(text);
DROP FUNCTION IF EXISTS app_find_oidc_binding(text, text);
DROP FUNCTION IF EXISTS app_use_user_token(bytea, text);
DROP FUNCTION IF EXISTS app_find_invitation(bytea);
DROP FUNCTION IF EXISTS app_find_user_for_login(text);
CREATE OR REPLACE FUNCTION app_authenticate_api_key(p_key_hash bytea)
    RETURNS TABLE (key_id uuid, org_id uuid, role text, created_by uuid)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
BEGIN
    UPDATE api_keys AS k SET last_used_at = now()
     WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
       AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute');
    RETURN QUERY
        SELECT k.id, k.org_id, k.role, k.created_by FROM api_keys AS k
         WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
END
$$;
CREATE OR REPLACE FUNCTION app_claim_invitations(p_user_id uuid, p_email text)
    RETURNS TABLE (org_id uuid, role text)
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    WITH claimed AS (
        UPDATE invitations AS i SET accepted_at = now()
         WHERE lower(i.email) = lower(p_email) AND i.accepted_at IS NULL
        RETURNING i.org_id, i.role, i.created_at
    ), joined AS (
        INSERT INTO memberships (org_id, user_id, role)
        SELECT c.org_id, p_user_id, c.role FROM claimed AS c
        ON CONFLICT DO NOTHING
        RETURNING memberships.org_id, memberships.role
    )
    SELECT c.org_id, c.role FROM claimed AS c ORDER BY c.created_at
$$;
ALTER POLICY sessions_self ON sessions
    USING (user_id = app_current_user()) WITH CHECK (user_id = app_current_user());
ALTER POLICY memberships_org_or_self ON memberships
    USING (org_id = app_current_org() OR user_id = app_current_user());
ALTER POLICY orgs_member ON orgs
    USING (
        id = app_current_org()
        OR id IN (SELECT m.org_id FROM memberships AS m WHERE m.user_id = app_current_user())
    );
DROP TABLE IF EXISTS org_oidc_bindings, user_tokens, invitation_tokens;
DELETE FROM invitations WHERE accepted_at IS NULL AND expires_at <= now();
ALTER TABLE invitations DROP COLUMN IF EXISTS accepted_by;
ALTER TABLE invitations DROP COLUMN IF EXISTS expires_at;
ALTER TABLE users DROP COLUMN IF EXISTS email_verified_at;
DROP FUNCTION IF EXISTS app_current_key();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
