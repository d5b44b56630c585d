//! Wake-ups by notification: the channel a table's inserts notify (the trigger itself is in
//! `sql/schema.sql`), LISTEN on it, and whether the trigger is installed.
//!
//! Invariant: the channel's name is derived from the table exactly as the trigger derives it
//! (`Table::derived_name`, at most 63 bytes), so a worker listens where the trigger notifies.

use crate::config::Table;
use postgres::GenericClient;

/// The suffix of the channel, the trigger and the trigger function (`outbox_event_notify`).
pub const NOTIFY_SUFFIX: &str = "_notify";

/// The channel as PostgreSQL names it (unquoted: what a notification carries).
pub fn channel(table: &Table) -> String {
    table.derived_name(NOTIFY_SUFFIX)
}

/// Subscribes the session to the table's channel. Notifications then arrive between
/// statements (and while idle) for as long as the session lives, which is meant to be long:
/// an `idle_session_timeout` from the role or database (PostgreSQL 14+; unknown before,
/// hence the guard) would end it every few minutes.
pub fn listen(client: &mut postgres::Client, table: &Table) -> Result<(), postgres::Error> {
    client.batch_execute(&format!(
        "DO $$BEGIN PERFORM set_config('idle_session_timeout', '0', false);
         EXCEPTION WHEN undefined_object THEN NULL; END$$;
         LISTEN {}",
        table.quoted_derived(NOTIFY_SUFFIX)
    ))
}

/// True when the table has the notify trigger (looked up by name, as `migrate` installs it).
pub fn has_trigger(
    client: &mut impl GenericClient,
    table: &Table,
) -> Result<bool, postgres::Error> {
    let row = client.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger
            WHERE tgrelid = to_regclass($1) AND tgname = $2 AND NOT tgisinternal)",
        &[&table.quoted(), &channel(table)],
    )?;
    Ok(row.get(0))
}
