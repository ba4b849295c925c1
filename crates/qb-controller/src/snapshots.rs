//! etcd snapshots of clusters. On the engine's replica, [`run`] asks for each cluster's
//! scheduled snapshots when due, prunes those past its retention, and gives each asked-for
//! snapshot to one master whose agent takes it (`EtcdOp::Snapshot`) and uploads it to the
//! agent endpoint ([`upload`]), where it is stored sealed as it streams in. The API lists,
//! takes, deletes and downloads them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt as _;
use qb_agent_proto::etcd::{EtcdOp, EtcdRequest, SNAPSHOT_REVISION_HEADER, SNAPSHOT_SHA256_HEADER};
use qb_agent_proto::{Instruction, Outcome};
use qb_api::{NodeId, NodeRole, NodeState, ProblemCode, Role, Snapshot, SnapshotTrigger};
use qb_store::{EngineNode, Key, StoreError};
use tokio::task::JoinSet;

use crate::ApiError;
use crate::agents::endpoint::{AgentEndpoint, Peer, require};
use crate::api::ApiResult;
use crate::api::cluster_key;
use crate::app::AppState;
use crate::auth::Caller;
use crate::engine::Engine;

/// How often the loop looks for work.
const STEP: Duration = Duration::from_secs(2);
/// How often schedules and retention are looked at.
const SCHEDULE_EVERY: Duration = Duration::from_secs(30);
/// The longest a master's agent may take to take and upload a snapshot (also the longest
/// another replica relays an instruction for).
const TAKE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The first protocol whose agents take snapshots.
const SNAPSHOT_PROTOCOL: u32 = 4;
/// How long a snapshot waits for a master that can take it before it fails.
const NO_TAKER_LIMIT: Duration = Duration::from_secs(5 * 60);

/// Runs on the replica that runs the engine, while it does.
pub async fn run(engine: Arc<Engine>) {
    // Snapshots this replica had taken before it led were waited for by another process.
    match engine.store.snapshots_being_taken().await {
        Ok(taking) => {
            for (id, _) in taking {
                let why = "the controller that asked for it stopped while it was taken; ask again";
                if let Err(e) = engine.store.fail_snapshot(id, why).await {
                    tracing::warn!(snapshot = id, error = %e, "cannot record a snapshot as failed");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list the snapshots being taken"),
    }
    // Each snapshot's taking is a task of this loop's: they end with it when this replica no
    // longer leads.
    let mut taking: JoinSet<u64> = JoinSet::new();
    let mut in_flight: HashSet<u64> = HashSet::new();
    // When this loop first saw each snapshot waiting: after a restart, masters get time to
    // connect again before a snapshot fails for want of one.
    let mut first_seen: HashMap<u64, Instant> = HashMap::new();
    let mut next_schedule = Instant::now();
    loop {
        while let Some(done) = taking.try_join_next() {
            if let Ok(id) = done {
                in_flight.remove(&id);
            }
        }
        if Instant::now() >= next_schedule {
            next_schedule = Instant::now() + SCHEDULE_EVERY;
            match engine.store.request_due_snapshots().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(snapshots = n, "scheduled snapshots asked for"),
                Err(e) => tracing::warn!(error = %e, "cannot ask for the scheduled snapshots"),
            }
            match engine.store.prune_snapshots().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(snapshots = n, "snapshots past their retention deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot prune snapshots"),
            }
        }
        match engine.store.requested_snapshots().await {
            Ok(jobs) => {
                first_seen.retain(|id, _| jobs.iter().any(|job| job.id == *id));
                for job in jobs {
                    let seen = *first_seen.entry(job.id).or_insert_with(Instant::now);
                    if !in_flight.insert(job.id) {
                        continue;
                    }
                    let engine = engine.clone();
                    // One task per snapshot: a slow upload holds nobody else up.
                    taking.spawn(async move {
                        take(&engine, &job, seen.elapsed()).await;
                        job.id
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the snapshots asked for"),
        }
        tokio::time::sleep(STEP).await;
    }
}

/// Gives the snapshot to a master that can take it, and waits until it did or failed. While
/// no master can, it stays asked for.
async fn take(engine: &Engine, job: &qb_store::SnapshotJob, waited: Duration) {
    let store = &engine.store;
    let ec = match store.engine_cluster(job.tenant, job.cluster).await {
        Ok(ec) => ec,
        Err(e) => {
            tracing::warn!(snapshot = job.id, error = %e, "cannot read the snapshot's cluster");
            return;
        }
    };
    let master = match taker(&ec.nodes, |node| engine.agents.online(node)) {
        Ok(master) => master,
        Err(why) => {
            // It waits while no master can, for a while: a master may come back, or be
            // mid-change in a rollout.
            if waited > NO_TAKER_LIMIT {
                let why = format!(
                    "no master could take it for {} minutes: {why}",
                    NO_TAKER_LIMIT.as_secs() / 60
                );
                tracing::warn!(snapshot = job.id, error = %why, "etcd snapshot failed");
                if let Err(e) = store.fail_snapshot(job.id, &why).await {
                    tracing::warn!(snapshot = job.id, error = %e, "cannot record a snapshot as failed");
                }
            }
            return;
        }
    };
    match store.start_snapshot(job.id, &master.node).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(snapshot = job.id, error = %e, "cannot start a snapshot");
            return;
        }
    }
    let node = master.node.id;
    tracing::info!(snapshot = job.id, cluster = %ec.cluster.name, node = %master.node.name, "taking an etcd snapshot");
    let request = EtcdRequest {
        op: EtcdOp::Snapshot { snapshot: job.id },
        ..crate::engine::local_etcd(EtcdOp::List)
    };
    let failure = match engine
        .agents
        .request(node, |_| Instruction::Etcd(request), TAKE_TIMEOUT)
        .await
    {
        Ok(Outcome::EtcdSnapshot(taken)) => {
            // The upload marked it done; an answer without one is a failure.
            match store
                .snapshot(job.tenant, &Key::Id(job.cluster), job.id)
                .await
            {
                Ok(s) if s.state == qb_api::SnapshotState::Done => {
                    tracing::info!(
                        snapshot = job.id,
                        size = taken.size,
                        revision = taken.revision,
                        "etcd snapshot taken"
                    );
                    return;
                }
                Ok(_) => "the agent said it took the snapshot, and nothing was uploaded".to_owned(),
                Err(e) => format!("cannot read the snapshot back: {e}"),
            }
        }
        Ok(Outcome::Failed { error }) => error,
        Ok(other) => format!("unexpected answer {other:?}"),
        Err(e) => e.to_string(),
    };
    tracing::warn!(snapshot = job.id, error = %failure, "etcd snapshot failed");
    if let Err(e) = store.fail_snapshot(job.id, &failure).await {
        tracing::warn!(snapshot = job.id, error = %e, "cannot record a snapshot as failed");
    }
}

/// A master of the cluster whose agent is online, speaks a protocol that takes snapshots, and
/// whose etcd runs healthy; else why each master cannot.
fn taker(nodes: &[EngineNode], online: impl Fn(NodeId) -> bool) -> Result<&EngineNode, String> {
    let mut why = Vec::new();
    for n in nodes {
        if n.node.role != Some(NodeRole::Master) || n.node.state != NodeState::Attached {
            continue;
        }
        let protocol = n.node.agent.as_ref().and_then(|a| a.protocol).unwrap_or(1);
        let cannot = if !online(n.node.id) {
            "its agent is offline".to_owned()
        } else if protocol < SNAPSHOT_PROTOCOL {
            format!(
                "its agent speaks protocol {protocol}, and snapshots take {SNAPSHOT_PROTOCOL}: upgrade it"
            )
        } else if !n.reports_healthy("etcd") {
            "its etcd is not running healthy".to_owned()
        } else {
            return Ok(n);
        };
        why.push(format!("{}: {cannot}", n.node.name));
    }
    Err(if why.is_empty() {
        "the cluster has no master".to_owned()
    } else {
        why.join("; ")
    })
}

/// `PUT /agent/v1/snapshots/{id}`: the snapshot a master's agent was asked to take, stored
/// sealed as it streams in, and marked done once whole and matching its SHA-256.
pub async fn upload(
    State(endpoint): State<AgentEndpoint>,
    Extension(peer): Extension<Option<Peer>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let peer = require(peer)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let sha256 = header(SNAPSHOT_SHA256_HEADER)
        .filter(|s| qb_api::is_sha256_hex(s))
        .ok_or_else(|| {
            ApiError::invalid(format!("{SNAPSHOT_SHA256_HEADER} must be a SHA-256, hex"))
        })?;
    let revision: u64 = header(SNAPSHOT_REVISION_HEADER)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::invalid(format!("{SNAPSHOT_REVISION_HEADER} must be a number")))?;
    let mut upload = endpoint
        .store
        .snapshot_upload(peer.identity.tenant, peer.identity.node, id)
        .await?;
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            ApiError::new(
                ProblemCode::MalformedRequest,
                format!("the upload broke off: {e}"),
            )
        })?;
        upload.write(&piece).await?;
    }
    let done = upload.finish(&sha256, revision).await?;
    tracing::info!(snapshot = id, size = ?done.size, node_id = %peer.identity.node, "etcd snapshot stored");
    Ok(StatusCode::NO_CONTENT)
}

/// Take an etcd snapshot of the cluster now. A master's agent takes it and uploads it; follow
/// it with `GET` until it is `done` or `failed`.
#[utoipa::path(post, path = "/api/v1/clusters/{cluster}/snapshots", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 202, body = Snapshot), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
pub async fn take_snapshot(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
) -> ApiResult<(StatusCode, Json<Snapshot>)> {
    caller.require(Role::Operator)?;
    let snapshot = app
        .store
        .request_snapshot(
            caller.tenant(),
            &cluster_key(&cluster),
            SnapshotTrigger::Manual,
            &caller.actor(),
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(snapshot)))
}

/// The cluster's etcd snapshots, newest first.
#[utoipa::path(get, path = "/api/v1/clusters/{cluster}/snapshots", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name")),
    responses((status = 200, body = Vec<Snapshot>), (status = 404, body = qb_api::Problem)))]
pub async fn list_snapshots(
    State(app): State<AppState>,
    caller: Caller,
    Path(cluster): Path<String>,
) -> ApiResult<Json<Vec<Snapshot>>> {
    Ok(Json(
        app.store
            .snapshots(caller.tenant(), &cluster_key(&cluster))
            .await?,
    ))
}

/// One etcd snapshot of the cluster.
#[utoipa::path(get, path = "/api/v1/clusters/{cluster}/snapshots/{snapshot}", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name"),
        ("snapshot" = u64, Path, description = "Snapshot id")),
    responses((status = 200, body = Snapshot), (status = 404, body = qb_api::Problem)))]
pub async fn get_snapshot(
    State(app): State<AppState>,
    caller: Caller,
    Path((cluster, snapshot)): Path<(String, String)>,
) -> ApiResult<Json<Snapshot>> {
    let id = snapshot_id(&snapshot)?;
    Ok(Json(
        app.store
            .snapshot(caller.tenant(), &cluster_key(&cluster), id)
            .await?,
    ))
}

/// Delete an etcd snapshot (not one being taken).
#[utoipa::path(delete, path = "/api/v1/clusters/{cluster}/snapshots/{snapshot}", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name"),
        ("snapshot" = u64, Path, description = "Snapshot id")),
    responses((status = 204), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
pub async fn delete_snapshot(
    State(app): State<AppState>,
    caller: Caller,
    Path((cluster, snapshot)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    let id = snapshot_id(&snapshot)?;
    app.store
        .delete_snapshot(caller.tenant(), &cluster_key(&cluster), id, &caller.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a done snapshot: the file etcd wrote (`etcdctl snapshot status` reads it). It holds
/// every Secret of the cluster, so only administrators may.
#[utoipa::path(get, path = "/api/v1/clusters/{cluster}/snapshots/{snapshot}/content", tag = "clusters",
    params(("cluster" = qb_api::Name, Path, description = "Cluster id or name"),
        ("snapshot" = u64, Path, description = "Snapshot id")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, body = qb_api::Problem), (status = 404, body = qb_api::Problem), (status = 409, body = qb_api::Problem)))]
pub async fn download_snapshot(
    State(app): State<AppState>,
    caller: Caller,
    Path((cluster, snapshot)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    let id = snapshot_id(&snapshot)?;
    let key = cluster_key(&cluster);
    let reader = app.store.snapshot_reader(caller.tenant(), &key, id).await?;
    let size = reader.snapshot.size.unwrap_or_default();
    let chunks = futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        match reader.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(io_error(e)), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"snapshot-{id}.db\""),
            ),
        ],
        // A refusal before the first byte is a problem response; a fault after it breaks the
        // download off, short of its length.
        Body::from_stream(chunks),
    )
        .into_response())
}

fn io_error(e: StoreError) -> std::io::Error {
    tracing::warn!(error = %qb_api::error_chain(&e), "a snapshot download broke off");
    std::io::Error::other(e.to_string())
}

fn snapshot_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::new(ProblemCode::NotFound, "no such snapshot"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node as the engine reads it: its role, agent protocol and etcd's health.
    fn node(name: &str, role: &str, protocol: u32, etcd_healthy: bool) -> EngineNode {
        EngineNode {
            node: serde_json::from_value(serde_json::json!({
                "id": NodeId::new(),
                "name": name,
                "state": "attached",
                "cluster": null,
                "facts": qb_api::NodeFacts::default(),
                "labels": {},
                "agent": {"version": "0.1.0", "protocol": protocol, "online": true, "last_seen_at": null},
                "role": role,
                "plan": {"generation": 2, "report": {
                    "generation": 2, "state": "applied", "steps": [],
                    "services": [{"name": "etcd", "running": true, "healthy": etcd_healthy, "restarts": 0}],
                }},
                "created_at": "2024-05-01T12:00:00Z",
                "updated_at": "2024-05-01T12:00:00Z",
            }))
            .expect("a node"),
            etcd: None,
            certs: None,
            plan_hash: None,
            plan_restart_hash: None,
            pod_subnet: None,
            detach_force: false,
            drain: qb_store::Drain::NotStarted,
        }
    }

    #[test]
    fn a_snapshot_goes_to_a_master_that_can_take_it_else_each_says_why_not() {
        let old = node("old", "master", 3, true);
        let sick = node("sick", "master", 4, false);
        let worker = node("worker", "worker", 4, true);
        let away = node("away", "master", 4, true);
        let good = node("good", "master", 4, true);
        let offline = away.node.id;
        let online = |id: NodeId| id != offline;
        let all = [
            old.clone(),
            sick.clone(),
            worker.clone(),
            away.clone(),
            good,
        ];
        assert_eq!(
            taker(&all, online).map(|n| n.node.name.to_string()),
            Ok("good".to_owned())
        );
        assert_eq!(
            taker(&all[..4], online).map(|n| n.node.name.to_string()),
            Err(
                "old: its agent speaks protocol 3, and snapshots take 4: upgrade it; \
                 sick: its etcd is not running healthy; away: its agent is offline"
                    .to_owned()
            )
        );
        assert_eq!(
            taker(&[worker], online).map(|n| n.node.name.to_string()),
            Err("the cluster has no master".to_owned())
        );
    }
}
