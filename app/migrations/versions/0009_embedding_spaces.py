"""Embedding spaces: which model and dimensions the chunks' vectors are in, and re-embedding
into another one without taking search down (``worker/reindex.py``).

``embedding_spaces`` holds one row per *generation*: the model, the dimensions, and the
relation holding its vectors. Exactly one is ``active`` (search and new uploads read it), at
most one is ``building`` (a re-embed in progress; new uploads are written into it too).
Generation 1 is the vectors the chunks have always had, ``transcript_chunks.embedding``; its
model is not known to the database (NULL: whatever ``EMBEDDING_MODEL`` names) until ``record
reindex --adopt`` records it. Every later generation gets a table of its own,
``chunk_embeddings_<generation>``, made by ``record reindex`` (the owner's rights).

Why a table per generation, not one table with an untyped ``vector`` column: pgvector's HNSW
index wants a typed column, so one table would need a partial *expression* index per
generation (``((embedding::vector(256))) WHERE generation = 2``) and every search would have to
repeat that cast and predicate exactly to use it; and retiring a generation would be a
million-row DELETE and its vacuum. A table per generation keeps the search SQL as it is (only
the relation's name differs), its HNSW index plain, and retiring it is one DROP TABLE.

``embedding_batches`` is the re-embed's plan: per org, ranges of chunk ids, each marked done in
the transaction that writes its last vectors, so a killed job resumes where it stopped. It is a
tenant table (the worker writes it inside the org's transaction); ``app_reembed_progress``
gives the counts across orgs, no ids.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';

CREATE TABLE embedding_spaces (
    generation bigint PRIMARY KEY CHECK (generation >= 1),
    model text,
    dimensions bigint NOT NULL CHECK (dimensions BETWEEN 1 AND 16000),
    relation text NOT NULL UNIQUE
        CHECK (relation = 'transcript_chunks' OR relation ~ '^chunk_embeddings_[0-9]+$'),
    state text NOT NULL CHECK (state IN ('building', 'active', 'retired')),
    created_at timestamptz NOT NULL DEFAULT now(),
    switched_at timestamptz
);
CREATE UNIQUE INDEX embedding_spaces_one_active ON embedding_spaces ((true))
    WHERE state = 'active';
CREATE UNIQUE INDEX embedding_spaces_one_building ON embedding_spaces ((true))
    WHERE state = 'building';
INSERT INTO embedding_spaces (generation, model, dimensions, relation, state)
    VALUES (1, NULL, 384, 'transcript_chunks', 'active');
-- No tenant data here: every role reads which space is active; only the owner changes it.
GRANT SELECT ON embedding_spaces TO record_app;

CREATE TABLE embedding_batches (
    generation bigint NOT NULL REFERENCES embedding_spaces (generation) ON DELETE CASCADE,
    org_id uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    first_id uuid NOT NULL,
    last_id uuid NOT NULL,
    chunks bigint NOT NULL CHECK (chunks >= 0),
    done_at timestamptz,
    PRIMARY KEY (generation, org_id, first_id)
);
CREATE INDEX embedding_batches_org_idx ON embedding_batches (org_id);
ALTER TABLE embedding_batches ENABLE ROW LEVEL SECURITY;
CREATE POLICY embedding_batches_tenant ON embedding_batches
    USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org());
GRANT SELECT, UPDATE ON embedding_batches TO record_app;

-- The re-embed's progress for the worker's metrics: counts across orgs, no ids.
CREATE FUNCTION app_reembed_progress()
    RETURNS TABLE (generation bigint, chunks bigint, done bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
    AS $$
    SELECT b.generation, sum(b.chunks)::bigint,
           coalesce(sum(b.chunks) FILTER (WHERE b.done_at IS NOT NULL), 0)::bigint
      FROM public.embedding_batches AS b
      JOIN public.embedding_spaces AS s ON s.generation = b.generation
     WHERE s.state = 'building'
     GROUP BY b.generation
$$;
REVOKE ALL ON FUNCTION app_reembed_progress() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_reembed_progress() TO record_app;
"""

DOWNGRADE = """
SET lock_timeout = '5s';
SET statement_timeout = '5min';
DROP FUNCTION IF EXISTS app_reembed_progress();
DROP TABLE IF EXISTS embedding_batches;
DROP TABLE IF EXISTS embedding_spaces;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # A generation's own table (chunk_embeddings_<n>) is dropped by the re-embed that retires
    # it; going below 0009 with one still building leaves it for the operator to drop.
    op.execute(DOWNGRADE)
