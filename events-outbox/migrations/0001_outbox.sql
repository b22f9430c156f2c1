-- events-outbox migration 1: the outbox table, its indexes and its NOTIFY trigger.
--
-- Placeholders, replaced by `Outbox::migration_sql()` (which prints this file for your names)
-- and by `Outbox::migrate()`: {schema} and {table} (validated identifiers, written quoted),
-- {channel} (the LISTEN/NOTIFY channel, "<schema>.<table>"), {prefix} (index and function
-- names: "<table>").
--
-- One row per published event. A row is pending (state 0) until a relay has it confirmed by
-- the broker, then deleted, or kept as delivered (state 1) for the retention period; after the
-- last failed attempt it is parked as failed (state 2) with its error, until replayed.

CREATE TABLE IF NOT EXISTS "{schema}"."{table}" (
    -- The event's id: the Celery task id of every delivery of it.
    id            uuid        PRIMARY KEY,
    -- Insertion order: rows of one ordering key are delivered in this order.
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    -- The event's name (`#[domain_event(name = ...)]`) and its payload as serialised (json,
    -- not jsonb: the text is kept as written, keys in field order, numbers exact).
    event         text        NOT NULL,
    payload       json        NOT NULL,
    -- Optional: events with the same key are delivered one at a time, in `seq` order.
    ordering_key  text,
    -- Publish options (events_core::PublishOptions), honoured on delivery.
    eta           timestamptz,
    expires       timestamptz,
    priority      smallint    CHECK (priority BETWEEN 0 AND 255),
    queue         text,
    -- 0 pending, 1 delivered (kept for the retention period), 2 failed (parked).
    state         smallint    NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    attempts      integer     NOT NULL DEFAULT 0,
    -- A pending row is claimed once `available_at <= now()`: at its eta, after a backoff.
    available_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz,
    last_error    text
);

-- Claiming: only pending rows are indexed, so the index stays as small as the backlog however
-- many delivered rows are kept.
CREATE INDEX IF NOT EXISTS "{prefix}_pending" ON "{schema}"."{table}" (seq)
    WHERE state = 0;
-- "Is an older row of this key still pending?", asked for each keyed candidate.
CREATE INDEX IF NOT EXISTS "{prefix}_pending_key" ON "{schema}"."{table}" (ordering_key, seq)
    WHERE state = 0 AND ordering_key IS NOT NULL;
-- Listing and replaying parked rows.
CREATE INDEX IF NOT EXISTS "{prefix}_failed" ON "{schema}"."{table}" (seq)
    WHERE state = 2;
-- Purging delivered rows past the retention period.
CREATE INDEX IF NOT EXISTS "{prefix}_delivered" ON "{schema}"."{table}" (delivered_at)
    WHERE state = 1;

-- Wakes relays (LISTEN "{channel}") at the commit of any transaction that inserted rows; one
-- notification per statement (NOTIFY folds identical ones of a transaction into one).
CREATE OR REPLACE FUNCTION "{schema}"."{prefix}_notify"() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS "{prefix}_notify" ON "{schema}"."{table}";
CREATE TRIGGER "{prefix}_notify" AFTER INSERT ON "{schema}"."{table}"
    FOR EACH STATEMENT EXECUTE FUNCTION "{schema}"."{prefix}_notify"();
