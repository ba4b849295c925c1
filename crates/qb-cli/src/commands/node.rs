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
