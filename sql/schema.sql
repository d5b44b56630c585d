-- Dispatchbox schema: the outbox table, the index the claim uses, the index of dead rows.
--
-- Idempotent: safe to run again, and it upgrades a table created by the original
-- (Python) Dispatchbox in place without touching any row. `dispatchbox migrate` runs
-- exactly this text (compiled in with include_str!); for `--table other` it substitutes
-- the quoted name for every `outbox_event` in the statements below, and `<table>_suffix`
-- for index names (comments are left as they are: a name never goes into one).

CREATE TABLE IF NOT EXISTS outbox_event (
    id             bigserial PRIMARY KEY,
    aggregate_type text,
    aggregate_id   text,
    event_type     text,
    payload        jsonb,
    status         text DEFAULT 'pending',      -- pending | retry | done | dead
    attempts       int DEFAULT 0,               -- incremented when claimed; the claim's fencing token
    next_run_at    timestamptz DEFAULT now(),   -- due time; while claimed: the lease expiry
    created_at     timestamptz DEFAULT now()
);

-- Columns the original table does not have. A claimed event keeps its status
-- (pending/retry); locked_by names the worker holding the lease until next_run_at.
ALTER TABLE outbox_event ADD COLUMN IF NOT EXISTS locked_by    text;
ALTER TABLE outbox_event ADD COLUMN IF NOT EXISTS locked_at    timestamptz;
ALTER TABLE outbox_event ADD COLUMN IF NOT EXISTS last_error   text;
ALTER TABLE outbox_event ADD COLUMN IF NOT EXISTS delivered_at timestamptz;

-- The claim index: only pending/retry rows are in it, ordered by due time, so a claim
-- stays an index range scan however many done/dead rows the table holds. The original
-- tool created the same partial index under another name; do not build it twice (any valid
-- single-column index on next_run_at whose predicate names pending and retry counts).
DO $migrate$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = 'outbox_event'::regclass AND i.indisvalid AND i.indisready
          AND i.indnatts = 1 AND a.attname = 'next_run_at'
          AND pg_get_expr(i.indpred, i.indrelid) LIKE '%pending%'
          AND pg_get_expr(i.indpred, i.indrelid) LIKE '%retry%'
    ) THEN
        -- IF NOT EXISTS: an invalid index of this name (a failed CONCURRENTLY build) is left
        -- alone; drop it to have it rebuilt.
        CREATE INDEX IF NOT EXISTS outbox_event_due_idx ON outbox_event (next_run_at)
            WHERE status IN ('pending', 'retry');
    END IF;
END
$migrate$;

-- The dead index: only dead rows are in it (no worker writes a dead row again), so
-- `dispatchbox status` and the dead-rows gauge count them exactly by reading this index
-- alone, and `dead list`/`retry`/`purge` walk it instead of the table. On the claim path it
-- costs only the evaluation of its predicate for each new row version; an event enters it
-- once, when it dies. Guarded like the claim index: any valid index whose predicate is
-- status = 'dead' (also on a varchar column, rendered with casts) counts.
DO $migrate_dead$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_index i
        WHERE i.indrelid = 'outbox_event'::regclass AND i.indisvalid AND i.indisready
          AND regexp_replace(pg_get_expr(i.indpred, i.indrelid),
                             '[() ]|::(text|character varying)', '', 'g') = 'status=''dead'''
    ) THEN
        CREATE INDEX IF NOT EXISTS outbox_event_dead_idx ON outbox_event (id)
            WHERE status = 'dead';
    END IF;
END
$migrate_dead$;

-- ---- notify: `migrate` runs this section only with `--notify on` (`off` drops the trigger) ----
-- Wake-ups: one notification per inserting statement (not per row; PostgreSQL also folds
-- identical notifications of one transaction into one) on the channel outbox_event_notify,
-- which workers LISTEN on so that they claim at once instead of at their next poll. Not a
-- default: NOTIFY serializes the commits of all notifying transactions (a cluster-wide lock
-- held through the commit's WAL flush), which costs concurrent producers dearly. The
-- function goes into the table's schema (by string concatenation, not format(): a `%` in
-- the table name must stay literal). CREATE TRIGGER is guarded by a look at pg_trigger
-- rather than CREATE OR REPLACE TRIGGER, which needs PostgreSQL 14.
DO $notify$
DECLARE
    ns text := (SELECT quote_ident(n.nspname) FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = 'outbox_event'::regclass);
BEGIN
    EXECUTE 'CREATE OR REPLACE FUNCTION ' || ns || $f$.outbox_event_notify() RETURNS trigger
        LANGUAGE plpgsql AS $body$ BEGIN NOTIFY outbox_event_notify; RETURN NULL; END $body$$f$;
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgrelid = 'outbox_event'::regclass
          AND tgname = (parse_ident('outbox_event_notify'))[1]
    ) THEN
        EXECUTE 'CREATE TRIGGER outbox_event_notify AFTER INSERT ON outbox_event
            FOR EACH STATEMENT EXECUTE FUNCTION ' || ns || '.outbox_event_notify()';
    END IF;
END
$notify$;
