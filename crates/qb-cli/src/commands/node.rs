//! `qb node`.

use anyhow::bail;
use qb_api::endpoints::{self, Endpoint};
use qb_api::{Node, NodeMetrics, NodeState, PingResult, ProblemCode};

use super::{App, now};
use crate::cli::{NodeCommand, parse_label_changes};
use crate::client::{ApiError, Client};
use crate::output;

pub async fn run(app: &App, cmd: NodeCommand) -> anyhow::Result<()> {
    // Check arguments before touching the network.
    let label_change = match &cmd {
        NodeCommand::Label { changes, .. } => Some(parse_label_changes(changes)?),
        _ => None,
    };
    let client = app.client()?;
    match cmd {
        NodeCommand::List { state, cluster } => {
            let filters = [
                (
                    "state",
                    state.map(|s| NodeState::from(s).as_str().to_owned()),
                ),
                ("cluster", cluster),
            ];
            let nodes: Vec<Node> = client.list(&endpoints::LIST_NODES, &filters, None).await?;
            app.out
                .emit_list(&nodes, "nodes", || output::nodes_table(&nodes, now()))
        }
        NodeCommand::Show { node } => {
            let node: Node = client
                .call(client.request(&endpoints::GET_NODE, &[&node], &[]))
                .await?;
            app.out.emit(&node, || output::node_fields(&node, now()))
        }
        NodeCommand::Label { node, .. } => {
            let change = label_change.unwrap_or_default();
            let node: Node = client
                .call_with(
                    client.request(&endpoints::LABEL_NODE, &[&node], &[]),
                    &change,
                )
                .await?;
            app.out.emit(&node, || {
                format!(
                    "Node {} labels: {}",
                    node.name,
                    output::labels(&node.labels)
                )
            })
        }
        NodeCommand::Authorize { nodes } => {
            transition(
                app,
                &client,
                &nodes,
                &endpoints::AUTHORIZE_NODE,
                "authorized",
            )
            .await
        }
        NodeCommand::Deauthorize { nodes } => {
            transition(
                app,
                &client,
                &nodes,
                &endpoints::DEAUTHORIZE_NODE,
                "deauthorized",
            )
            .await
        }
        NodeCommand::Delete { node } => {
            client
                .call_no_content(client.request(&endpoints::DELETE_NODE, &[&node], &[]))
                .await?;
            if app.table() {
                println!("Node {node} deleted.");
            }
            Ok(())
        }
        NodeCommand::Ping { node } => {
            let ping = client.request(&endpoints::PING_NODE, &[&node], &[]);
            let result: PingResult = match client.call(ping).await {
                Ok(result) => result,
                Err(ApiError::Problem { problem })
                    if problem.code == ProblemCode::AgentUnavailable =>
                {
                    bail!(
                        "{} (agent_unavailable); check that qb-agent runs on the host \
                         (`systemctl status qb-agent`) and when it was last seen (`qb node show {node}`)",
                        problem.detail
                    )
                }
                Err(e) => return Err(e.into()),
            };
            app.out.emit(&result, || {
                format!(
                    "Node {node} answered in {} ms.",
                    output::millis(result.round_trip_ms)
                )
            })
        }
        NodeCommand::Metrics { node, range } => {
            let metrics: NodeMetrics = client
                .call(client.request(
                    &endpoints::NODE_METRICS,
                    &[&node],
                    &[("range", Some(range))],
                ))
                .await?;
            app.out
                .emit(&metrics, || output::node_metrics(&metrics, now()))
        }
        NodeCommand::Logs {
            node,
            service,
            follow,
            bytes,
            since,
        } => logs(app, &client, &node, &service, follow, bytes, since).await,
    }
}

/// How often a followed log is read again.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Prints the end of a log, or with `since` all it holds from that many seconds ago (as JSON
/// with `--output json`: each piece, one per line), then with `follow` what it gets next,
/// until interrupted.
async fn logs(
    app: &App,
    client: &Client,
    node: &str,
    service: &str,
    follow: bool,
    bytes: u32,
    since: Option<u64>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut offset: Option<u64> = None;
    loop {
        let first = offset.is_none();
        let piece: qb_api::NodeLog = client
            .call(client.request(
                &endpoints::NODE_LOG,
                &[node, service],
                &[
                    ("offset", offset.map(|o| o.to_string())),
                    (
                        "since_seconds",
                        since.filter(|_| first).map(|s| s.to_string()),
                    ),
                    (
                        "max_bytes",
                        (first && since.is_none()).then(|| bytes.to_string()),
                    ),
                ],
            ))
            .await?;
        if app.table() {
            if piece.rotated {
                eprintln!("(the log was rotated; from its new beginning)");
            }
            let mut out = std::io::stdout().lock();
            out.write_all(piece.text.as_bytes())?;
            out.flush()?;
        } else if offset.is_none() || !piece.text.is_empty() {
            println!("{}", serde_json::to_string(&piece)?);
        }
        // A full piece means more is waiting: read on at once.
        let full = piece.end - piece.start >= u64::from(qb_api::LogQuery::MAX_BYTES) / 2;
        // Without --follow: the end, or everything since, and no more.
        if !follow && (since.is_none() || !full) {
            return Ok(());
        }
        offset = Some(piece.end);
        if !full {
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}

/// Authorizes or deauthorizes each node; goes on after a failure and fails at the end. Prints the
/// node for one argument, a list for several.
async fn transition(
    app: &App,
    client: &Client,
    nodes: &[String],
    endpoint: &Endpoint,
    done: &str,
) -> anyhow::Result<()> {
    if let [node] = nodes {
        let node: Node = client.call(client.request(endpoint, &[node], &[])).await?;
        return app
            .out
            .emit(&node, || format!("Node {} {done}.", node.name));
    }
    let mut changed = Vec::new();
    let mut failed = 0;
    for name in nodes {
        match client
            .call::<Node>(client.request(endpoint, &[name], &[]))
            .await
        {
            Ok(node) => {
                if app.table() {
                    println!("Node {} {done}.", node.name);
                }
                changed.push(node);
            }
            Err(e) => {
                eprintln!("error: node {name}: {e}");
                failed += 1;
            }
        }
    }
    if !app.table() {
        app.out.emit(&changed, String::new)?;
    }
    if failed > 0 {
        bail!("{failed} of {} nodes could not be {done}", nodes.len());
    }
    Ok(())
}
