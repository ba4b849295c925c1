//! `qb events`: the audit trail.

use qb_api::Event;
use qb_api::endpoints;

use super::App;
use crate::cli::EventsArgs;
use crate::output;

pub async fn run(app: &App, args: EventsArgs) -> anyhow::Result<()> {
    let client = app.client()?;
    let filters = [
        ("kind", args.kind),
        ("object", args.object),
        ("action", args.action),
    ];
    let max = args.limit.map(|n| n as usize);
    let events: Vec<Event> = client.list(&endpoints::LIST_EVENTS, &filters, max).await?;
    app.out
        .emit_list(&events, "events", || output::events_table(&events))
}
