//! etcd snapshots of clusters: asked for on a schedule or by hand, taken by a master's agent,
//! and kept in chunks of [`CHUNK_BYTES`], each sealed with AES-256-GCM under a data key of the
//! snapshot's own. That key is sealed like every other secret (under the key file's key, bound
//! to its row), so a copy of the database alone does not open a snapshot. A chunk is bound to
//! its snapshot, its place and whether it is the last, so chunks cannot be swapped, reordered
//! or cut off unseen; the whole is checked against its SHA-256 as it is read.

use qb_api::{
    ClusterId, ClusterState, InvalidValue, Node, NodeId, Snapshot, SnapshotState, SnapshotTrigger,
    TenantId,
};
use ring::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};
use ring::digest::{Context as Digest, SHA256};
use serde_json::json;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::clusters::cluster_event;
use crate::sealed::{aead_key, fill};
use crate::{Actor, Key, Result, Store, StoreError, from_ms, now_ms, rows};

/// The plain bytes of one stored chunk (the last may be shorter).
pub const CHUNK_BYTES: usize = 1 << 20;
/// The largest snapshot stored: etcd's largest database (its `--quota-backend-bytes` at most).
pub const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;

const SELECT: &str = "SELECT s.*, c.name AS cluster_name FROM etcd_snapshots s \
                      JOIN clusters c ON c.id = s.cluster_id";

/// A snapshot waiting for a master to take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotJob {
    pub id: u64,
    pub tenant: TenantId,
    pub cluster: ClusterId,
}

fn snapshot(row: &AnyRow) -> Result<Snapshot> {
    let optional = |column: &'static str| -> Result<Option<u64>> {
        row.try_get::<Option<i64>, _>(column)?
            .map(|v| {
                u64::try_from(v).map_err(|_| StoreError::Corrupt {
                    what: column,
                    source: format!("{v} is negative").into(),
                })
            })
            .transpose()
    };
    Ok(Snapshot {
        id: rows::count(row, "id")?,
        cluster_id: rows::parse("cluster id", &row.try_get::<String, _>("cluster_id")?)?,
        state: rows::parse("snapshot state", &row.try_get::<String, _>("state")?)?,
        trigger: rows::parse(
            "snapshot trigger",
            &row.try_get::<String, _>("trigger_kind")?,
        )?,
        kubernetes_version: rows::parse(
            "kubernetes version",
            &row.try_get::<String, _>("kubernetes_version")?,
        )?,
        node: row
            .try_get::<Option<String>, _>("node_name")?
            .map(|n| rows::parse("node name", &n))
            .transpose()?,
        size: optional("size")?,
        sha256: row.try_get("sha256")?,
        revision: optional("revision")?,
        error: row.try_get("error")?,
        requested_at: from_ms(row.try_get("requested_at")?),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(from_ms),
    })
}

fn id_i64(id: u64) -> Result<i64> {
    i64::try_from(id).map_err(|_| StoreError::not_found("snapshot", id))
}

impl Store {
    /// Asks for a snapshot of the cluster, taken as soon as one of its masters' agents can.
    /// Refused while another is asked for or being taken, and for a cluster that is not
    /// running.
    pub async fn request_snapshot(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
        trigger: SnapshotTrigger,
        actor: &Actor,
    ) -> Result<Snapshot> {
        let mut w = self.write(tenant).await?;
        let cluster = w.cluster(tenant, key).await?;
        if !matches!(cluster.state, ClusterState::Ready | ClusterState::Degraded) {
            return Err(StoreError::SnapshotRefused(format!(
                "cluster {:?} is {}: only a ready or degraded cluster has an etcd to take a snapshot of",
                cluster.name.as_str(),
                cluster.state.as_str()
            )));
        }
        let busy: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM etcd_snapshots WHERE cluster_id = $1 \
             AND state IN ('requested', 'taking')",
        )
        .bind(cluster.id.to_string())
        .fetch_optional(&mut *w.tx)
        .await?;
        if let Some(busy) = busy {
            return Err(StoreError::SnapshotRefused(format!(
                "snapshot {busy} of cluster {:?} is being taken; wait for it",
                cluster.name.as_str()
            )));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO etcd_snapshots (tenant_id, cluster_id, state, trigger_kind, \
             kubernetes_version, requested_at) VALUES ($1, $2, 'requested', $3, $4, $5) \
             RETURNING id",
        )
        .bind(tenant.to_string())
        .bind(cluster.id.to_string())
        .bind(trigger.as_str())
        .bind(cluster.kubernetes_version.to_string())
        .bind(now_ms())
        .fetch_one(&mut *w.tx)
        .await
        .map_err(|e| {
            if crate::is_unique_violation(&e) {
                StoreError::SnapshotRefused(format!(
                    "a snapshot of cluster {:?} is being taken; wait for it",
                    cluster.name.as_str()
                ))
            } else {
                e.into()
            }
        })?;
        let row = sqlx::query(&format!("{SELECT} WHERE s.id = $1"))
            .bind(id)
            .fetch_one(&mut *w.tx)
            .await?;
        let snapshot = snapshot(&row)?;
        w.commit_with_event(
            tenant,
            actor,
            cluster_event(
                "cluster.snapshot_requested",
                &cluster,
                json!({ "snapshot": id, "trigger": trigger.as_str() }),
            ),
        )
        .await?;
        Ok(snapshot)
    }

    /// The cluster's snapshots, newest first.
    pub async fn snapshots(&self, tenant: TenantId, key: &Key<ClusterId>) -> Result<Vec<Snapshot>> {
        let cluster = crate::fetch_keyed(&self.pool, tenant, key).await?;
        let id: String = cluster.try_get("id")?;
        sqlx::query(&format!(
            "{SELECT} WHERE s.cluster_id = $1 AND s.tenant_id = $2 ORDER BY s.id DESC"
        ))
        .bind(id)
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(snapshot)
        .collect()
    }

    /// One snapshot of the cluster.
    pub async fn snapshot(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
        id: u64,
    ) -> Result<Snapshot> {
        let cluster = crate::fetch_keyed(&self.pool, tenant, key).await?;
        let cluster_id: String = cluster.try_get("id")?;
        let row = sqlx::query(&format!(
            "{SELECT} WHERE s.id = $1 AND s.cluster_id = $2 AND s.tenant_id = $3"
        ))
        .bind(id_i64(id)?)
        .bind(cluster_id)
        .bind(tenant.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("snapshot", id))?;
        snapshot(&row)
    }

    /// Deletes a snapshot and its bytes; refused while it is being taken.
    pub async fn delete_snapshot(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
        id: u64,
        actor: &Actor,
    ) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let cluster = w.cluster(tenant, key).await?;
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM etcd_snapshots WHERE id = $1 AND cluster_id = $2",
        )
        .bind(id_i64(id)?)
        .bind(cluster.id.to_string())
        .fetch_optional(&mut *w.tx)
        .await?;
        match state.as_deref() {
            None => return Err(StoreError::not_found("snapshot", id)),
            Some("taking") => {
                return Err(StoreError::SnapshotRefused(format!(
                    "snapshot {id} is being taken; delete it once it is done or failed"
                )));
            }
            Some(_) => {}
        }
        delete_rows(&mut w, id_i64(id)?).await?;
        w.commit_with_event(
            tenant,
            actor,
            cluster_event(
                "cluster.snapshot_deleted",
                &cluster,
                json!({ "snapshot": id }),
            ),
        )
        .await
    }

    /// Snapshots asked for and not taken yet, oldest first.
    pub async fn requested_snapshots(&self) -> Result<Vec<SnapshotJob>> {
        sqlx::query(
            "SELECT id, tenant_id, cluster_id FROM etcd_snapshots WHERE state = 'requested' \
             ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(SnapshotJob {
                id: rows::count(row, "id")?,
                tenant: rows::parse("tenant id", &row.try_get::<String, _>("tenant_id")?)?,
                cluster: rows::parse("cluster id", &row.try_get::<String, _>("cluster_id")?)?,
            })
        })
        .collect()
    }

    /// Gives a requested snapshot to `node` to take. Whether it was still requested.
    pub async fn start_snapshot(&self, id: u64, node: &Node) -> Result<bool> {
        let _lock = self.bookkeeping_lock().await;
        let started = sqlx::query(
            "UPDATE etcd_snapshots SET state = 'taking', node_id = $1, node_name = $2, \
             started_at = $3 WHERE id = $4 AND state = 'requested'",
        )
        .bind(node.id.to_string())
        .bind(node.name.to_string())
        .bind(now_ms())
        .bind(id_i64(id)?)
        .execute(&self.pool)
        .await?;
        Ok(started.rows_affected() == 1)
    }

    /// Records that a snapshot asked for or being taken failed, and why; its chunks go.
    pub async fn fail_snapshot(&self, id: u64, error: &str) -> Result<()> {
        let Some((tenant, cluster_id)) = self.snapshot_owner(id).await? else {
            return Ok(());
        };
        let mut w = self.write(tenant).await?;
        let failed = sqlx::query(
            "UPDATE etcd_snapshots SET state = 'failed', error = $1, finished_at = $2, \
             data_key = NULL, chunks = NULL WHERE id = $3 AND state IN ('requested', 'taking')",
        )
        .bind(error)
        .bind(now_ms())
        .bind(id_i64(id)?)
        .execute(&mut *w.tx)
        .await?;
        if failed.rows_affected() == 0 {
            return Ok(());
        }
        sqlx::query("DELETE FROM etcd_snapshot_chunks WHERE snapshot_id = $1")
            .bind(id_i64(id)?)
            .execute(&mut *w.tx)
            .await?;
        let cluster = w.cluster(tenant, &Key::Id(cluster_id)).await?;
        w.commit_with_event(
            tenant,
            &Actor::controller(),
            cluster_event(
                "cluster.snapshot_failed",
                &cluster,
                json!({ "snapshot": id, "error": error }),
            ),
        )
        .await
    }

    /// Snapshots being taken, with the node taking each: after a restart, those whose taking
    /// nobody waits for any more.
    pub async fn snapshots_being_taken(&self) -> Result<Vec<(u64, Option<NodeId>)>> {
        sqlx::query("SELECT id, node_id FROM etcd_snapshots WHERE state = 'taking'")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    rows::count(row, "id")?,
                    row.try_get::<Option<String>, _>("node_id")?
                        .map(|n| rows::parse("node id", &n))
                        .transpose()?,
                ))
            })
            .collect()
    }

    async fn snapshot_owner(&self, id: u64) -> Result<Option<(TenantId, ClusterId)>> {
        let row = sqlx::query("SELECT tenant_id, cluster_id FROM etcd_snapshots WHERE id = $1")
            .bind(id_i64(id)?)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok((
                rows::parse("tenant id", &row.try_get::<String, _>("tenant_id")?)?,
                rows::parse("cluster id", &row.try_get::<String, _>("cluster_id")?)?,
            ))
        })
        .transpose()
    }

    /// Starts storing the bytes of snapshot `id`, which `node` of `tenant` must be taking.
    /// Each upload is an attempt of its own, with a new data key: one that overtakes an
    /// earlier (the agent tried again while the first still streamed) makes the earlier's
    /// writes fail, and only the attempt that finishes is read back.
    pub async fn snapshot_upload(
        &self,
        tenant: TenantId,
        node: NodeId,
        id: u64,
    ) -> Result<SnapshotUpload<'_>> {
        let mut data_key = [0u8; 32];
        fill(&mut data_key);
        let mut attempt = [0u8; 8];
        fill(&mut attempt);
        let attempt = i64::from_be_bytes(attempt) & i64::MAX;
        let sealed = self.seal(
            "etcd_snapshots",
            "data_key",
            &id.to_string(),
            &hex::encode(data_key),
        );
        let claimed = {
            let _lock = self.bookkeeping_lock().await;
            sqlx::query(
                "UPDATE etcd_snapshots SET data_key = $1, attempt = $2 WHERE id = $3 \
                 AND tenant_id = $4 AND node_id = $5 AND state = 'taking'",
            )
            .bind(sealed)
            .bind(attempt)
            .bind(id_i64(id)?)
            .bind(tenant.to_string())
            .bind(node.to_string())
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1
        };
        if !claimed {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT state FROM etcd_snapshots WHERE id = $1 AND tenant_id = $2 \
                 AND node_id = $3",
            )
            .bind(id_i64(id)?)
            .bind(tenant.to_string())
            .bind(node.to_string())
            .fetch_optional(&self.pool)
            .await?;
            return Err(match state {
                Some(state) => StoreError::SnapshotRefused(format!(
                    "snapshot {id} is {state}, not being taken"
                )),
                None => StoreError::not_found("snapshot", id),
            });
        }
        Ok(SnapshotUpload {
            store: self,
            id,
            attempt,
            key: aead_key(&data_key),
            pending: Vec::with_capacity(CHUNK_BYTES),
            full: None,
            seq: 0,
            size: 0,
            digest: Digest::new(&SHA256),
        })
    }

    /// Reads snapshot `id` of the cluster back, chunk by chunk.
    pub async fn snapshot_reader(
        &self,
        tenant: TenantId,
        key: &Key<ClusterId>,
        id: u64,
    ) -> Result<SnapshotReader> {
        let found = self.snapshot(tenant, key, id).await?;
        let row = sqlx::query("SELECT data_key, chunks, attempt FROM etcd_snapshots WHERE id = $1")
            .bind(id_i64(id)?)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("snapshot", id))?;
        let (SnapshotState::Done, Some(sha256), Some(sealed), Some(chunks), Some(attempt)) = (
            found.state,
            found.sha256.clone(),
            row.try_get::<Option<String>, _>("data_key")?,
            row.try_get::<Option<i64>, _>("chunks")?,
            row.try_get::<Option<i64>, _>("attempt")?,
        ) else {
            return Err(StoreError::SnapshotRefused(format!(
                "snapshot {id} is {}: only a done one can be read",
                found.state.as_str()
            )));
        };
        let data_key = self.unseal(
            "snapshot key",
            ("etcd_snapshots", "data_key", &id.to_string()),
            &sealed,
        )?;
        let data_key = hex::decode(&data_key).map_err(|_| corrupt("snapshot key"))?;
        Ok(SnapshotReader {
            store: self.clone(),
            snapshot: found,
            key: aead_key(&data_key),
            sha256,
            chunks: u64::try_from(chunks).map_err(|_| corrupt("snapshot chunks"))?,
            attempt,
            seq: 0,
            digest: Digest::new(&SHA256),
        })
    }

    /// Asks for the scheduled snapshots that are due: of each ready or degraded cluster with a
    /// schedule, created an interval ago or more, whose last scheduled one was asked for an
    /// interval ago or more (or never).
    /// Returns how many were asked for.
    pub async fn request_due_snapshots(&self) -> Result<usize> {
        let due = sqlx::query(
            "SELECT c.id, c.tenant_id FROM clusters c WHERE c.snapshot_interval_minutes > 0 \
             AND c.state IN ('ready', 'degraded') \
             AND c.created_at <= $1 - c.snapshot_interval_minutes * 60000 \
             AND NOT EXISTS (SELECT 1 FROM etcd_snapshots s WHERE s.cluster_id = c.id \
               AND (s.state IN ('requested', 'taking') OR (s.trigger_kind = 'scheduled' \
               AND s.requested_at > $1 - c.snapshot_interval_minutes * 60000)))",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        let mut asked = 0;
        for row in due {
            let tenant: TenantId =
                rows::parse("tenant id", &row.try_get::<String, _>("tenant_id")?)?;
            let cluster: ClusterId = rows::parse("cluster id", &row.try_get::<String, _>("id")?)?;
            match self
                .request_snapshot(
                    tenant,
                    &Key::Id(cluster),
                    SnapshotTrigger::Scheduled,
                    &Actor::controller(),
                )
                .await
            {
                Ok(_) => asked += 1,
                // The cluster changed state, or someone asked meanwhile.
                Err(StoreError::SnapshotRefused(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(asked)
    }

    /// Deletes each cluster's scheduled snapshots beyond its retention (the oldest first),
    /// and failed scheduled ones older than the oldest kept, each with its event; and the
    /// chunks of uploads that broke off or were overtaken. Returns how many snapshots went.
    pub async fn prune_snapshots(&self) -> Result<usize> {
        {
            let _lock = self.bookkeeping_lock().await;
            sqlx::query(
                "DELETE FROM etcd_snapshot_chunks WHERE NOT EXISTS (SELECT 1 FROM etcd_snapshots s \
                 WHERE s.id = etcd_snapshot_chunks.snapshot_id \
                 AND s.attempt = etcd_snapshot_chunks.attempt AND s.state IN ('taking', 'done'))",
            )
            .execute(&self.pool)
            .await?;
        }
        let clusters = sqlx::query(
            "SELECT DISTINCT c.id, c.tenant_id, c.snapshot_retention FROM clusters c \
             JOIN etcd_snapshots s ON s.cluster_id = c.id AND s.trigger_kind = 'scheduled'",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut pruned = 0;
        for row in clusters {
            let cluster: ClusterId = rows::parse("cluster id", &row.try_get::<String, _>("id")?)?;
            let tenant: TenantId =
                rows::parse("tenant id", &row.try_get::<String, _>("tenant_id")?)?;
            let keep: i64 = row.try_get("snapshot_retention")?;
            let kept: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM etcd_snapshots WHERE cluster_id = $1 \
                 AND trigger_kind = 'scheduled' AND state = 'done' ORDER BY id DESC LIMIT $2",
            )
            .bind(cluster.to_string())
            .bind(keep)
            .fetch_all(&self.pool)
            .await?;
            let Some(oldest_kept) = kept.last().copied().filter(|_| kept.len() as i64 == keep)
            else {
                continue;
            };
            let gone: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM etcd_snapshots WHERE cluster_id = $1 \
                 AND trigger_kind = 'scheduled' AND state IN ('done', 'failed') AND id < $2",
            )
            .bind(cluster.to_string())
            .bind(oldest_kept)
            .fetch_all(&self.pool)
            .await?;
            for id in gone {
                let mut w = self.write(tenant).await?;
                let found = w.cluster(tenant, &Key::Id(cluster)).await?;
                delete_rows(&mut w, id).await?;
                w.commit_with_event(
                    tenant,
                    &Actor::controller(),
                    cluster_event(
                        "cluster.snapshot_deleted",
                        &found,
                        json!({ "snapshot": id, "why": "past the cluster's retention" }),
                    ),
                )
                .await?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }
}

async fn delete_rows(w: &mut crate::WriteTx, id: i64) -> Result<()> {
    for sql in [
        "DELETE FROM etcd_snapshot_chunks WHERE snapshot_id = $1",
        "DELETE FROM etcd_snapshots WHERE id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *w.tx).await?;
    }
    Ok(())
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt {
        what,
        source: "malformed".into(),
    }
}

/// What a chunk is bound to: its snapshot, its place, and whether it is the last.
fn chunk_aad(id: u64, seq: u64, last: bool) -> Vec<u8> {
    format!(
        "etcd_snapshot_chunks/{id}/{seq}/{}",
        if last { "last" } else { "more" }
    )
    .into_bytes()
}

/// A chunk's nonce: its place. Unique under the snapshot's key, which seals one upload only.
fn chunk_nonce(seq: u64) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[NONCE_LEN - 8..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// A snapshot's bytes being stored, as they come.
pub struct SnapshotUpload<'a> {
    store: &'a Store,
    id: u64,
    attempt: i64,
    key: LessSafeKey,
    /// Bytes not yet making a whole chunk.
    pending: Vec<u8>,
    /// A whole chunk held back until it is known whether another follows.
    full: Option<Vec<u8>>,
    seq: u64,
    size: u64,
    digest: Digest,
}

impl SnapshotUpload<'_> {
    /// Takes the next bytes, storing each chunk once the next one begins.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.digest.update(bytes);
        self.size += bytes.len() as u64;
        if self.size > MAX_SNAPSHOT_BYTES {
            return Err(StoreError::Invalid(InvalidValue(format!(
                "a snapshot is at most {} GiB, as etcd's database",
                MAX_SNAPSHOT_BYTES >> 30
            ))));
        }
        while !bytes.is_empty() {
            let room = CHUNK_BYTES - self.pending.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.pending.extend_from_slice(now);
            bytes = rest;
            if self.pending.len() == CHUNK_BYTES {
                let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_BYTES));
                if let Some(before) = self.full.replace(chunk) {
                    self.put(before, false).await?;
                }
            }
        }
        Ok(())
    }

    async fn put(&mut self, mut chunk: Vec<u8>, last: bool) -> Result<()> {
        self.key
            .seal_in_place_append_tag(
                chunk_nonce(self.seq),
                Aad::from(chunk_aad(self.id, self.seq, last)),
                &mut chunk,
            )
            .map_err(|_| corrupt("snapshot chunk"))?;
        let _lock = self.store.bookkeeping_lock().await;
        let stored = sqlx::query(
            "INSERT INTO etcd_snapshot_chunks (snapshot_id, attempt, seq, data) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM etcd_snapshots \
             WHERE id = $1 AND attempt = $2 AND state = 'taking')",
        )
        .bind(id_i64(self.id)?)
        .bind(self.attempt)
        .bind(i64::try_from(self.seq).map_err(|_| corrupt("snapshot chunk"))?)
        .bind(chunk)
        .execute(&self.store.pool)
        .await?;
        if stored.rows_affected() == 0 {
            return Err(StoreError::SnapshotRefused(format!(
                "snapshot {} is no longer being taken by this upload (it failed, or a newer upload took over)",
                self.id
            )));
        }
        self.seq += 1;
        Ok(())
    }

    /// Stores the rest and marks the snapshot done, once the bytes are those the agent says
    /// it sent (`sha256`, hex). `revision` is etcd's when it began.
    pub async fn finish(mut self, sha256: &str, revision: u64) -> Result<Snapshot> {
        let got = hex::encode(self.digest.clone().finish());
        if !got.eq_ignore_ascii_case(sha256) {
            return Err(StoreError::Invalid(InvalidValue(format!(
                "the snapshot's bytes have SHA-256 {got}, not {sha256} as its sender says: it was damaged on the way"
            ))));
        }
        if self.size == 0 {
            return Err(StoreError::Invalid(InvalidValue(
                "the snapshot is empty".to_owned(),
            )));
        }
        let tail = std::mem::take(&mut self.pending);
        match (self.full.take(), tail.is_empty()) {
            (Some(full), true) => self.put(full, true).await?,
            (Some(full), false) => {
                self.put(full, false).await?;
                self.put(tail, true).await?;
            }
            (None, _) => self.put(tail, true).await?,
        }
        let (tenant, cluster) = self
            .store
            .snapshot_owner(self.id)
            .await?
            .ok_or_else(|| StoreError::not_found("snapshot", self.id))?;
        let mut w = self.store.write(tenant).await?;
        let done = sqlx::query(
            "UPDATE etcd_snapshots SET state = 'done', size = $1, sha256 = $2, revision = $3, \
             chunks = $4, finished_at = $5 WHERE id = $6 AND state = 'taking' AND attempt = $7",
        )
        .bind(i64::try_from(self.size).map_err(|_| corrupt("snapshot size"))?)
        .bind(got.clone())
        .bind(i64::try_from(revision).unwrap_or(i64::MAX))
        .bind(i64::try_from(self.seq).map_err(|_| corrupt("snapshot chunks"))?)
        .bind(now_ms())
        .bind(id_i64(self.id)?)
        .bind(self.attempt)
        .execute(&mut *w.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::SnapshotRefused(format!(
                "snapshot {} is no longer being taken by this upload (it failed, or a newer upload took over)",
                self.id
            )));
        }
        let cluster = w.cluster(tenant, &Key::Id(cluster)).await?;
        w.commit_with_event(
            tenant,
            &Actor::controller(),
            cluster_event(
                "cluster.snapshot_taken",
                &cluster,
                json!({ "snapshot": self.id, "size": self.size, "sha256": got, "revision": revision }),
            ),
        )
        .await?;
        self.store
            .snapshot(tenant, &Key::Id(cluster.id), self.id)
            .await
    }
}

/// A done snapshot's bytes, read back chunk by chunk, each opened and checked in turn.
pub struct SnapshotReader {
    store: Store,
    pub snapshot: Snapshot,
    key: LessSafeKey,
    sha256: String,
    chunks: u64,
    attempt: i64,
    seq: u64,
    digest: Digest,
}

impl SnapshotReader {
    /// The next chunk's plain bytes; `None` after the last, once the whole matched its
    /// SHA-256. An error means the stored bytes were altered or lost.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.seq == self.chunks {
            if self.seq == u64::MAX {
                return Ok(None);
            }
            let got = hex::encode(self.digest.clone().finish());
            if got != self.sha256 {
                return Err(corrupt("snapshot bytes"));
            }
            self.seq = u64::MAX;
            self.chunks = u64::MAX;
            return Ok(None);
        }
        let data: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT data FROM etcd_snapshot_chunks WHERE snapshot_id = $1 AND attempt = $2 \
             AND seq = $3",
        )
        .bind(id_i64(self.snapshot.id)?)
        .bind(self.attempt)
        .bind(i64::try_from(self.seq).map_err(|_| corrupt("snapshot chunk"))?)
        .fetch_optional(&self.store.pool)
        .await?;
        let mut data = data.ok_or_else(|| corrupt("snapshot chunk"))?;
        let last = self.seq + 1 == self.chunks;
        let plain = self
            .key
            .open_in_place(
                chunk_nonce(self.seq),
                Aad::from(chunk_aad(self.snapshot.id, self.seq, last)),
                &mut data,
            )
            .map_err(|_| corrupt("snapshot chunk"))?
            .len();
        data.truncate(plain);
        self.digest.update(&data);
        self.seq += 1;
        Ok(Some(data))
    }
}
