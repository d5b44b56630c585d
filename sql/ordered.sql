-- Dispatchbox: the index `--ordered` claims use (built by `dispatchbox migrate --ordered`, or
-- with DISPATCHBOX_ORDERED set; plain `migrate` does not build it: it roughly doubles the cost
-- of bulk inserts into the outbox, see docs/guide.md, "Ordered delivery").
--
-- The ordered claim asks, for each due candidate, whether an earlier event of its aggregate
-- is still pending, retrying (or dead): one probe of this index. Done rows are not in it, so
-- it stays as small as the backlog. Idempotent; `--table other` renames it as schema.sql.
-- On a big live table build it by hand first with CREATE INDEX CONCURRENTLY (same name and
-- definition): this plain CREATE INDEX blocks inserts while it runs.
CREATE INDEX IF NOT EXISTS outbox_event_aggregate_idx
    ON outbox_event (aggregate_type, aggregate_id, id)
    WHERE status IN ('pending', 'retry', 'dead');
