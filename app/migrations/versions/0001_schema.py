"""Schema: orgs, accounts, recordings, transcripts, chunks, documents, chat, shares, audit log.

Row-level security on every tenant table, keyed by the per-transaction settings ``app.org_id``
and ``app.user_id``; the application connects as ``record_app``, which owns nothing, so the
policies always apply to it. The few look-ups that must happen before the tenant is known
(a key or session by its hash, a user by email, a share by its id) are SECURITY DEFINER
functions that return exactly what authentication needs.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TENANT_TABLES = (
    "invitations",
    "api_keys",
    "recordings",
    "transcripts",
    "transcript_segments",
    "transcript_chunks",
    "documents",
    "conversations",
    "messages",
    "shares",
    "audit_log",
)

UPGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';

CREATE EXTENSION IF NOT EXISTS vector;

DO $$
BEGIN
    -- Provisioned beforehand where the migrating role may not create roles (app/kit/roles.py).
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'record_app') THEN
        CREATE ROLE record_app NOLOGIN;
    END IF;
    -- A migrating role that created record_app may also switch to it (a one-role set-up).
    -- Where the roles were provisioned the application logs in as a role of its own, and
    -- PostgreSQL 16 would refuse this grant to a role without ADMIN OPTION on record_app.
    IF pg_has_role('record_app', 'USAGE WITH ADMIN OPTION')
       AND NOT pg_has_role('record_app', 'SET') THEN
        GRANT record_app TO CURRENT_USER;
    END IF;
END
$$;

CREATE FUNCTION app_current_org() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.org_id', true), '')::uuid $$;

CREATE FUNCTION app_current_user() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::uuid $$;

CREATE TABLE orgs (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    password_hash text,
    oidc_issuer text,
    oidc_subject text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_oidc_key ON users (oidc_issuer, oidc_subject)
    WHERE oidc_subject IS NOT NULL;

CREATE TABLE memberships (
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'contributor', 'reader')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user_org_idx ON memberships (user_id, org_id);
CREATE INDEX memberships_org_role_idx ON memberships (org_id, role);

CREATE TABLE invitations (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    email text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'contributor', 'reader')),
    invited_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    accepted_at timestamptz
);
CREATE UNIQUE INDEX invitations_pending_key ON invitations (org_id, lower(email))
    WHERE accepted_at IS NULL;
CREATE INDEX invitations_email_idx ON invitations (lower(email)) WHERE accepted_at IS NULL;

CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE UNIQUE INDEX sessions_token_hash_key ON sessions (token_hash);
CREATE INDEX sessions_user_idx ON sessions (user_id);

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix text NOT NULL,
    key_hash bytea NOT NULL,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'contributor', 'reader')),
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE UNIQUE INDEX api_keys_key_hash_key ON api_keys (key_hash);
CREATE INDEX api_keys_org_created_idx ON api_keys (org_id, created_at DESC);

CREATE TABLE recordings (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    status text NOT NULL DEFAULT 'uploaded'
        CHECK (status IN ('uploaded', 'transcribing', 'embedding', 'ready', 'failed')),
    error text,
    media_key text,
    content_type text,
    size_bytes bigint,
    duration_seconds double precision,
    job_id bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recordings_org_created_idx ON recordings (org_id, created_at DESC, id DESC);
CREATE INDEX recordings_org_status_idx ON recordings (org_id, status);

CREATE TABLE transcripts (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    recording_id uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    language text,
    text text NOT NULL,
    model text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX transcripts_recording_key ON transcripts (recording_id);
CREATE INDEX transcripts_org_idx ON transcripts (org_id);

CREATE TABLE transcript_segments (
    transcript_id uuid NOT NULL REFERENCES transcripts (id) ON DELETE CASCADE,
    idx bigint NOT NULL,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    start_seconds double precision NOT NULL CHECK (start_seconds >= 0),
    end_seconds double precision NOT NULL CHECK (end_seconds >= start_seconds),
    text text NOT NULL,
    PRIMARY KEY (transcript_id, idx)
);
CREATE INDEX transcript_segments_org_idx ON transcript_segments (org_id);

CREATE TABLE transcript_chunks (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    recording_id uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    idx bigint NOT NULL,
    text text NOT NULL,
    token_count bigint NOT NULL CHECK (token_count >= 0),
    start_seconds double precision NOT NULL,
    end_seconds double precision NOT NULL,
    embedding vector(384),
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX transcript_chunks_recording_idx_key ON transcript_chunks (recording_id, idx);
CREATE INDEX transcript_chunks_org_idx ON transcript_chunks (org_id, recording_id);
CREATE INDEX transcript_chunks_embedding_hnsw_idx ON transcript_chunks
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
CREATE INDEX transcript_chunks_tsv_idx ON transcript_chunks USING gin (tsv);

CREATE TABLE documents (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    recording_id uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    title text NOT NULL,
    summary text NOT NULL,
    key_points jsonb NOT NULL DEFAULT '[]',
    action_items jsonb NOT NULL DEFAULT '[]',
    model text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX documents_recording_key ON documents (recording_id);
CREATE INDEX documents_org_idx ON documents (org_id);

CREATE TABLE conversations (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title text NOT NULL,
    recording_ids uuid[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_org_created_idx ON conversations (org_id, created_at DESC);
CREATE INDEX conversations_user_idx ON conversations (user_id, org_id);

CREATE TABLE messages (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('user', 'assistant')),
    content text NOT NULL,
    citations jsonb NOT NULL DEFAULT '[]',
    model text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation_created_idx ON messages (conversation_id, created_at);
CREATE INDEX messages_org_idx ON messages (org_id);

CREATE TABLE shares (
    id text PRIMARY KEY CHECK (length(id) BETWEEN 16 AND 64),
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    resource_type text NOT NULL CHECK (resource_type IN ('recording', 'conversation', 'document')),
    resource_id uuid NOT NULL,
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX shares_resource_idx ON shares (resource_type, resource_id);
CREATE INDEX shares_org_idx ON shares (org_id, created_at DESC);

CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    actor_user_id uuid,
    actor_key_id uuid,
    action text NOT NULL,
    target_type text NOT NULL,
    target_id text,
    data jsonb NOT NULL DEFAULT '{}',
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_org_created_idx ON audit_log (org_id, created_at DESC);

-- Row-level security. The application role gets table rights; the policies decide the rows.
GRANT USAGE ON SCHEMA public TO record_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    orgs, users, memberships, invitations, sessions, api_keys, recordings, transcripts,
    transcript_segments, transcript_chunks, documents, conversations, messages, shares
    TO record_app;
GRANT SELECT, INSERT ON audit_log TO record_app;
GRANT EXECUTE ON FUNCTION app_current_org(), app_current_user() TO record_app;
-- /readyz checks that the schema is at the code's head revision.
GRANT SELECT ON alembic_version TO record_app;

ALTER TABLE orgs ENABLE ROW LEVEL SECURITY;
CREATE POLICY orgs_member ON orgs
    USING (
        id = app_current_org()
        OR id IN (SELECT m.org_id FROM memberships AS m WHERE m.user_id = app_current_user())
    )
    WITH CHECK (id = app_current_org());

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY users_self_or_colleague ON users FOR SELECT
    USING (
        id = app_current_user()
        OR id IN (SELECT m.user_id FROM memberships AS m WHERE m.org_id = app_current_org())
    );
CREATE POLICY users_insert ON users FOR INSERT WITH CHECK (true);
CREATE POLICY users_update_self ON users FOR UPDATE
    USING (id = app_current_user()) WITH CHECK (id = app_current_user());

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
CREATE POLICY memberships_org_or_self ON memberships
    USING (org_id = app_current_org() OR user_id = app_current_user())
    WITH CHECK (org_id = app_current_org());

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY sessions_self ON sessions
    USING (user_id = app_current_user()) WITH CHECK (user_id = app_current_user());
"""

TENANT_POLICY = """
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
CREATE POLICY {table}_tenant ON {table}
    USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org());
"""

FUNCTIONS = """
-- Authentication look-ups, before the tenant is known. Each returns only what the caller
-- needs to set the tenant, and runs with a fixed search_path (SECURITY DEFINER hygiene).
CREATE FUNCTION app_authenticate_api_key(p_key_hash bytea)
    RETURNS TABLE (key_id uuid, org_id uuid, role text, created_by uuid)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
BEGIN
    -- last_used_at is written at most once a minute per key: a busy key must not turn every
    -- read into a write.
    UPDATE api_keys AS k SET last_used_at = now()
     WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
       AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute');
    RETURN QUERY
        SELECT k.id, k.org_id, k.role, k.created_by FROM api_keys AS k
         WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
END
$$;

CREATE FUNCTION app_authenticate_session(p_token_hash bytea)
    RETURNS TABLE (session_id uuid, user_id uuid, expires_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
    SELECT s.id, s.user_id, s.expires_at FROM sessions AS s
     WHERE s.token_hash = p_token_hash AND s.revoked_at IS NULL AND s.expires_at > now()
$$;

CREATE FUNCTION app_find_user_by_email(p_email text)
    RETURNS TABLE (id uuid, email text, name text, password_hash text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
    SELECT u.id, u.email, u.name, u.password_hash FROM users AS u
     WHERE lower(u.email) = lower(p_email)
$$;

CREATE FUNCTION app_find_user_by_oidc(p_issuer text, p_subject text)
    RETURNS TABLE (id uuid, email text, name text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
    SELECT u.id, u.email, u.name FROM users AS u
     WHERE u.oidc_issuer = p_issuer AND u.oidc_subject = p_subject
$$;

-- Signup: turn the pending invitations for this email into memberships.
CREATE FUNCTION app_claim_invitations(p_user_id uuid, p_email text)
    RETURNS TABLE (org_id uuid, role text)
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public
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

CREATE FUNCTION app_resolve_share(p_share_id text)
    RETURNS TABLE (org_id uuid, resource_type text, resource_id uuid, expires_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
    SELECT s.org_id, s.resource_type, s.resource_id, s.expires_at FROM shares AS s
     WHERE s.id = p_share_id AND s.revoked_at IS NULL
       AND (s.expires_at IS NULL OR s.expires_at > now())
$$;

REVOKE ALL ON FUNCTION
    app_authenticate_api_key(bytea), app_authenticate_session(bytea),
    app_find_user_by_email(text), app_find_user_by_oidc(text, text), app_resolve_share(text),
    app_claim_invitations(uuid, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    app_authenticate_api_key(bytea), app_authenticate_session(bytea),
    app_find_user_by_email(text), app_find_user_by_oidc(text, text), app_resolve_share(text),
    app_claim_invitations(uuid, text)
    TO record_app;
"""

DOWNGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';
DROP FUNCTION IF EXISTS app_claim_invitations(uuid, text);
DROP FUNCTION IF EXISTS app_resolve_share(text);
DROP FUNCTION IF EXISTS app_find_user_by_oidc(text, text);
DROP FUNCTION IF EXISTS app_find_user_by_email(text);
DROP FUNCTION IF EXISTS app_authenticate_session(bytea);
DROP FUNCTION IF EXISTS app_authenticate_api_key(bytea);
DROP TABLE IF EXISTS audit_log, shares, messages, conversations, documents, transcript_chunks,
    transcript_segments, transcripts, recordings, api_keys, sessions, invitations, memberships,
    users, orgs;
DROP FUNCTION IF EXISTS app_current_user();
DROP FUNCTION IF EXISTS app_current_org();
REVOKE ALL ON SCHEMA public FROM record_app;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    for table in TENANT_TABLES:
        op.execute(TENANT_POLICY.format(table=table))
    op.execute(FUNCTIONS)


def downgrade() -> None:
    # The extension and the role stay: other databases on the server may use them.
    op.execute(DOWNGRADE)
