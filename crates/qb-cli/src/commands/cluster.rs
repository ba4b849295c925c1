//! `qb cluster`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use qb_api::endpoints;
use qb_api::{
    AttachRequest, Cluster, ClusterDetail, ClusterHealth, CreateCluster, CreateKubeconfig,
    DeletedCluster, DetachRequest, Kubeconfig, Node, NodeId, NodeMove, NodeState, PlanState,
    PreflightReport, Snapshot, SnapshotState, Token, UpdateCluster,
};
use serde::Serialize;

use super::agent_package::{PrivateFile, shell_word};
use super::{App, now};
use crate::cli::{
    AttachArgs, ClusterCommand, CreateClusterArgs, DetachArgs, KubeconfigArgs, PreflightArgs,
    UpgradeArgs, roles_map,
};
use crate::client::Client;
use crate::output;

/// How often to look whether detached nodes are back in the pool.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a preflight may take: the controller waits for every agent, twice, and may first
/// wait for a preflight the cluster engine is running.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(180);

pub async fn run(app: &App, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Create(args) => create(app, args).await,
        ClusterCommand::List => {
            let client = app.client()?;
            let clusters: Vec<Cluster> = client.list(&endpoints::LIST_CLUSTERS, &[], None).await?;
            app.out.emit_list(&clusters, "clusters", || {
                output::clusters_table(&clusters, now())
            })
        }
        ClusterCommand::Show { cluster } => {
            let client = app.client()?;
            let detail: ClusterDetail = client
                .call(client.request(&endpoints::GET_CLUSTER, &[&cluster], &[]))
                .await?;
            app.out
                .emit(&detail, || output::cluster_detail(&detail, now()))
        }
        ClusterCommand::Health { cluster } => {
            let client = app.client()?;
            let health: ClusterHealth = client
                .call(client.request(&endpoints::CLUSTER_HEALTH, &[&cluster], &[]))
                .await?;
            app.out
                .emit(&health, || output::cluster_health(&health, now()))
        }
        ClusterCommand::Delete { cluster, force } => {
            let client = app.client()?;
            let query = [("force", Some(force.to_string()))];
            let deleted: DeletedCluster = client
                .call(client.request(&endpoints::DELETE_CLUSTER, &[&cluster], &query))
                .await?;
            app.out.emit(&deleted, || {
                let mut s = format!("Cluster {cluster} deleted.");
                if !deleted.returned_to_pool.is_empty() {
                    s.push_str(&format!(
                        "\nNodes returned to the pool: {}",
                        names(&deleted.returned_to_pool)
                    ));
                }
                s
            })
        }
        ClusterCommand::Upgrade(args) => upgrade(app, args).await,
        ClusterCommand::Pause { cluster } => pause(app, &cluster, true).await,
        ClusterCommand::Resume { cluster } => pause(app, &cluster, false).await,
        ClusterCommand::Set(args) => {
            let change = UpdateCluster {
                taint_masters: args.taint_masters,
                snapshot_interval_minutes: args.snapshot_interval,
                snapshot_retention: args.snapshot_retention,
                ..UpdateCluster::default()
            };
            anyhow::ensure!(
                change != UpdateCluster::default(),
                "nothing to change: say what, e.g. `--taint-masters true` or `--snapshot-interval 60`"
            );
            let updated = update(app, &args.cluster, &change).await?;
            app.out.emit(&updated, || {
                format!(
                    "Cluster {}: masters {}; {}.",
                    updated.name,
                    if updated.taint_masters {
                        "tainted (workloads run on workers only)"
                    } else {
                        "untainted (workloads run on masters too)"
                    },
                    snapshot_schedule(&updated)
                )
            })
        }
        ClusterCommand::Backup { cluster, no_wait } => backup(app, &cluster, no_wait).await,
        ClusterCommand::Snapshots { cluster } => {
            let client = app.client()?;
            let snapshots: Vec<Snapshot> = client
                .call(client.request(&endpoints::LIST_SNAPSHOTS, &[&cluster], &[]))
                .await?;
            app.out
                .emit_list(&snapshots, "snapshots", || snapshots_table(&snapshots))
        }
        ClusterCommand::Attach(args) => attach(app, args).await,
        ClusterCommand::Detach(args) => detach(app, args).await,
        ClusterCommand::Preflight(args) => preflight(app, args).await,
        ClusterCommand::Kubeconfig(args) => kubeconfig(app, args).await,
    }
}

fn names(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| n.name.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn create(app: &App, args: CreateClusterArgs) -> anyhow::Result<()> {
    let body = CreateCluster {
        name: args.name,
        kubernetes_version: args.kubernetes_version,
        pod_cidr: args.pod_cidr,
        service_cidr: args.service_cidr,
        masters: args.masters,
        roles: roles_map(&args.roles)?,
        taint_masters: args.taint_masters,
    };
    let client = app.client()?;
    let cluster: Cluster = client
        .call_with(client.request(&endpoints::CREATE_CLUSTER, &[], &[]), &body)
        .await?;
    app.out.emit(&cluster, || {
        format!(
            "Cluster {} created (Kubernetes {}, pods {}, services {}). Attach nodes with `qb cluster attach {} --count N`.",
            cluster.name, cluster.kubernetes_version, cluster.pod_cidr, cluster.service_cidr, cluster.name
        )
    })
}

/// Asks for a snapshot of `cluster` and, unless told not to, waits until it is stored.
async fn backup(app: &App, cluster: &str, no_wait: bool) -> anyhow::Result<()> {
    const POLL: std::time::Duration = std::time::Duration::from_secs(1);
    const WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
    let client = app.client()?;
    let mut snapshot: Snapshot = client
        .call(client.request(&endpoints::TAKE_SNAPSHOT, &[cluster], &[]))
        .await?;
    let id = snapshot.id.to_string();
    let started = std::time::Instant::now();
    let mut said = None;
    while !no_wait
        && matches!(
            snapshot.state,
            SnapshotState::Requested | SnapshotState::Taking
        )
    {
        anyhow::ensure!(
            started.elapsed() < WAIT,
            "snapshot {id} is still {} after {} minutes; follow it with `qb cluster snapshots {cluster}`",
            snapshot.state.as_str(),
            WAIT.as_secs() / 60
        );
        let now = (snapshot.state, snapshot.node.clone());
        if said.as_ref() != Some(&now) {
            match &now.1 {
                Some(node) => eprintln!("Snapshot {id}: {} on {node}…", now.0.as_str()),
                None => eprintln!("Snapshot {id}: {}…", now.0.as_str()),
            }
            said = Some(now);
        }
        tokio::time::sleep(POLL).await;
        snapshot = client
            .call(client.request(&endpoints::GET_SNAPSHOT, &[cluster, &id], &[]))
            .await?;
    }
    if snapshot.state == SnapshotState::Failed {
        anyhow::bail!(
            "snapshot {id} failed: {}",
            snapshot.error.as_deref().unwrap_or("no reason given")
        );
    }
    app.out.emit(&snapshot, || snapshot_line(&snapshot))
}

/// Pauses or resumes `cluster`'s rollout.
async fn pause(app: &App, cluster: &str, paused: bool) -> anyhow::Result<()> {
    let change = UpdateCluster {
        rollout_paused: Some(paused),
        ..UpdateCluster::default()
    };
    let updated = update(app, cluster, &change).await?;
    app.out.emit(&updated, || {
        if paused {
            format!(
                "Rollout of cluster {} paused: nodes not changed yet wait for `qb cluster resume {}`.",
                updated.name, updated.name
            )
        } else {
            format!("Rollout of cluster {} resumed.", updated.name)
        }
    })
}

/// Sends `change` to `cluster`; the cluster after it.
async fn update(app: &App, cluster: &str, change: &UpdateCluster) -> anyhow::Result<Cluster> {
    let client = app.client()?;
    Ok(client
        .call_with(
            client.request(&endpoints::UPDATE_CLUSTER, &[cluster], &[]),
            change,
        )
        .await?)
}

async fn upgrade(app: &App, args: UpgradeArgs) -> anyhow::Result<()> {
    let client = app.client()?;
    let body = UpdateCluster {
        kubernetes_version: Some(args.kubernetes_version.clone()),
        ..UpdateCluster::default()
    };
    let cluster: Cluster = client
        .call_with(
            client.request(&endpoints::UPDATE_CLUSTER, &[&args.cluster], &[]),
            &body,
        )
        .await?;
    let version = &cluster.kubernetes_version;
    if !args.no_wait {
        wait_until_upgraded(
            app,
            &client,
            &args.cluster,
            Duration::from_secs(args.timeout),
        )
        .await?;
    }
    app.out.emit(&cluster, || {
        if args.no_wait {
            format!(
                "Upgrading cluster {} to Kubernetes {version}: nodes change one at a time (see `qb cluster show {}`).",
                cluster.name, cluster.name
            )
        } else {
            format!(
                "Cluster {} runs Kubernetes {version} on every node.",
                cluster.name
            )
        }
    })
}

/// How far an upgrade is: the nodes whose newest plan runs the cluster's version and is
/// applied, of all.
fn upgraded(detail: &ClusterDetail) -> (usize, usize) {
    let done = detail
        .nodes
        .iter()
        .filter(|n| {
            n.plan.as_ref().is_some_and(|p| {
                p.kubernetes_version.as_ref() == Some(&detail.cluster.kubernetes_version)
                    && p.report.as_ref().is_some_and(|r| {
                        r.generation == p.generation && r.state == PlanState::Applied
                    })
            })
        })
        .count();
    (done, detail.nodes.len())
}

/// Waits until every node applied a plan of the cluster's version and the cluster is ready,
/// printing its progress as it changes.
async fn wait_until_upgraded(
    app: &App,
    client: &Client,
    cluster: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut shown = String::new();
    loop {
        let detail: ClusterDetail = client
            .call(client.request(&endpoints::GET_CLUSTER, &[cluster], &[]))
            .await?;
        let (done, all) = upgraded(&detail);
        let c = &detail.cluster;
        match c.state {
            qb_api::ClusterState::Ready if done == all => return Ok(()),
            qb_api::ClusterState::Empty => return Ok(()),
            qb_api::ClusterState::Blocked => bail!(
                "cluster {cluster} is blocked: {}; the upgrade goes on once that is solved",
                c.state_message.as_deref().unwrap_or("no reason given")
            ),
            _ => {}
        }
        let progress = format!(
            "{done} of {all} nodes upgraded; {}{}",
            c.state.as_str(),
            c.state_message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        if app.table() && progress != shown {
            eprintln!("{progress}");
            shown = progress;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "cluster {cluster} is not upgraded after {} s ({shown}); it goes on in the background",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn attach(app: &App, args: AttachArgs) -> anyhow::Result<()> {
    let body = match args.count {
        Some(count) => AttachRequest {
            count: Some(count),
            selector: args.selector,
            nodes: None,
        },
        None => AttachRequest {
            count: None,
            selector: None,
            nodes: Some(args.nodes),
        },
    };
    body.target()?;
    let client = app.client()?;
    let moved: NodeMove = client
        .call_with(
            client.request(&endpoints::ATTACH_NODES, &[&args.cluster], &[]),
            &body,
        )
        .await?;
    app.out.emit(&moved, || {
        format!(
            "Attached {} node(s) to cluster {}:\n{}",
            moved.nodes.len(),
            moved.cluster.name,
            output::nodes_table(&moved.nodes, now())
        )
    })
}

async fn detach(app: &App, args: DetachArgs) -> anyhow::Result<()> {
    let unique: BTreeSet<_> = args.nodes.iter().collect();
    if unique.len() != args.nodes.len() {
        bail!("a node is named more than once");
    }
    let client = app.client()?;
    let body = DetachRequest {
        nodes: args.nodes,
        force: args.force,
    };
    let moved: NodeMove = client
        .call_with(
            client.request(&endpoints::DETACH_NODES, &[&args.cluster], &[]),
            &body,
        )
        .await?;
    if args.no_wait {
        return app.out.emit(&moved, || {
            format!(
                "Detaching {} from cluster {}; they return to the pool shortly (see `qb node list --state detaching`).",
                names(&moved.nodes),
                moved.cluster.name
            )
        });
    }
    let waiting: BTreeSet<NodeId> = moved
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Detaching)
        .map(|n| n.id)
        .collect();
    wait_until_detached(&client, &moved, waiting, Duration::from_secs(args.timeout)).await?;
    app.out.emit(&moved, || {
        format!(
            "Detached {} from cluster {}; they are back in the pool.",
            names(&moved.nodes),
            moved.cluster.name
        )
    })
}

/// Runs preflight (or fetches the newest result), prints it, and fails when the preflight did.
async fn preflight(app: &App, args: PreflightArgs) -> anyhow::Result<()> {
    let client = app.client()?;
    let report: PreflightReport = if args.last {
        client
            .call(client.request(&endpoints::LATEST_PREFLIGHT, &[&args.cluster], &[]))
            .await?
    } else {
        if app.table() {
            eprintln!(
                "Running preflight on cluster {}: every node checks itself, then probes the others...",
                args.cluster
            );
        }
        let run = client.request(&endpoints::RUN_PREFLIGHT, &[&args.cluster], &[]);
        client.call_within(run, PREFLIGHT_TIMEOUT).await?
    };
    app.out.emit(&report, || {
        output::preflight_report(&report, args.all, args.last.then(now))
    })?;
    if !report.passed {
        let n = report.problems.len();
        bail!(
            "preflight of cluster {} failed with {n} problem{}",
            report.cluster.name,
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// What `-o json|yaml` prints when the kubeconfig went to a file.
#[derive(Debug, Serialize)]
struct WrittenKubeconfig {
    path: String,
    token: Token,
}

/// Prints the cluster's kubeconfig, or writes it to a private file (replacing it at once: a
/// reader sees the old file or the new one, never a part).
async fn kubeconfig(app: &App, args: KubeconfigArgs) -> anyhow::Result<()> {
    // Every kubeconfig mints a token: refuse what can be refused before asking for one.
    if let Some(path) = &args.output_file {
        if path.is_dir() {
            bail!("{} is a directory; name the file to write", path.display());
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            bail!("cannot write into {}: no such directory", dir.display());
        }
    }
    let client = app.client()?;
    let body = CreateKubeconfig {
        expires_in_hours: args.expires_in_hours,
    };
    let created: Kubeconfig = client
        .call_with(
            client.request(&endpoints::CREATE_KUBECONFIG, &[&args.cluster], &[]),
            &body,
        )
        .await?;
    let Some(path) = args.output_file else {
        return app.out.emit(&created, || created.kubeconfig.clone());
    };
    let mut file = PrivateFile::create(&path)?;
    file.write(created.kubeconfig.as_bytes())?;
    file.finish(true)?;
    let shown = shell_word(&path.to_string_lossy());
    eprintln!(
        "Wrote the kubeconfig of cluster {} to {shown} (mode 0600); its token expires {}.\n\
         It holds a token of yours: keep the file private. Use it with:\n    \
         KUBECONFIG={shown} kubectl get nodes",
        args.cluster,
        output::timestamp(created.token.expires_at),
    );
    if !app.table() {
        let written = WrittenKubeconfig {
            path: path.to_string_lossy().into_owned(),
            token: created.token,
        };
        app.out.emit(&written, String::new)?;
    }
    Ok(())
}

/// Polls until none of `waiting` is `detaching` any more, reporting progress on stderr.
async fn wait_until_detached(
    client: &Client,
    moved: &NodeMove,
    mut waiting: BTreeSet<NodeId>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let total = waiting.len();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut reported = None;
    while !waiting.is_empty() {
        if reported != Some(waiting.len()) {
            eprintln!(
                "Waiting for nodes to leave cluster {}: {} of {total} back in the pool...",
                moved.cluster.name,
                total - waiting.len()
            );
            reported = Some(waiting.len());
        }
        if tokio::time::Instant::now() >= deadline {
            let left: Vec<String> = moved
                .nodes
                .iter()
                .filter(|n| waiting.contains(&n.id))
                .map(|n| n.name.to_string())
                .collect();
            bail!(
                "timed out after {}s waiting for nodes to leave cluster {}; still detaching: {} \
                 (the controller goes on; see `qb node list --state detaching`)",
                timeout.as_secs(),
                moved.cluster.name,
                left.join(", ")
            );
        }
        tokio::time::sleep(
            POLL_INTERVAL.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        let filters = [("state", Some(NodeState::Detaching.as_str().to_owned()))];
        let detaching: Vec<Node> = client.list(&endpoints::LIST_NODES, &filters, None).await?;
        let still: BTreeSet<NodeId> = detaching.iter().map(|n| n.id).collect();
        waiting.retain(|id| still.contains(id));
    }
    if total > 0 {
        eprintln!("All {total} node(s) are back in the pool.");
    }
    Ok(())
}

/// A cluster's snapshot schedule, in words.
pub(crate) fn snapshot_schedule(c: &qb_api::Cluster) -> String {
    if c.snapshot_interval_minutes == 0 {
        "no scheduled snapshots".to_owned()
    } else {
        format!(
            "a snapshot every {} minutes, the last {} kept",
            c.snapshot_interval_minutes, c.snapshot_retention
        )
    }
}

/// One snapshot, in a sentence.
fn snapshot_line(s: &qb_api::Snapshot) -> String {
    match s.state {
        qb_api::SnapshotState::Done => format!(
            "Snapshot {} stored: {}, etcd revision {}, taken on {}.",
            s.id,
            crate::output::bytes(s.size.unwrap_or_default()),
            s.revision.unwrap_or_default(),
            s.node.as_ref().map_or("a master", |n| n.as_str())
        ),
        state => format!("Snapshot {} {}.", s.id, state.as_str()),
    }
}

/// Snapshots as a table.
fn snapshots_table(list: &[qb_api::Snapshot]) -> String {
    crate::output::table(
        &[
            "ID",
            "TRIGGER",
            "STATE",
            "SIZE",
            "REVISION",
            "NODE",
            "REQUESTED",
            "NOTE",
        ],
        list.iter().map(|s| {
            vec![
                s.id.to_string(),
                s.trigger.as_str().to_owned(),
                s.state.as_str().to_owned(),
                s.size.map(crate::output::bytes).unwrap_or_default(),
                s.revision.map(|r| r.to_string()).unwrap_or_default(),
                s.node.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                crate::output::timestamp(s.requested_at),
                s.error.clone().unwrap_or_default(),
            ]
        }),
    )
}
