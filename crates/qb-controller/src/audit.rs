//! The audit trail's retention: events older than [`KEEP`] are forgotten, checked hourly by the
//! replica that runs the engine. The database itself refuses to delete an event younger than
//! 400 days (its migration `0016_events_retention`); a day more leaves room for clocks.

use std::time::Duration;

use qb_store::Store;
use time::OffsetDateTime;

/// How long events are kept: a year, and a month to compare a year-old change with.
pub const KEEP: time::Duration = time::Duration::days(401);
const EVERY: Duration = Duration::from_secs(3600);

/// Prunes old events now and every hour, until aborted.
pub async fn run(store: Store) {
    loop {
        match store.prune_events(OffsetDateTime::now_utc() - KEEP).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "forgot events past the audit trail's retention"),
            Err(e) => tracing::warn!(error = %e, "could not prune old events"),
        }
        tokio::time::sleep(EVERY).await;
    }
}
