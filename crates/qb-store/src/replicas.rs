//! Controller replicas sharing one database: which are alive and where the others reach them,
//! which replica holds each agent's channel, and which one runs the cluster engine.

use std::collections::HashMap;

use qb_api::NodeId;
use sqlx::Row;
use sqlx::pool::PoolConnection;
use time::OffsetDateTime;

use crate::{Backend, Result, Store, to_ms};

/// The advisory lock the engine's replica holds on PostgreSQL ("qb-engine").
const ENGINE_LOCK: i64 = 0x7162_2d65_6e67;

/// This replica runs the cluster engine for as long as this lives (and [`Leadership::holds`]).
pub struct Leadership {
    /// The connection holding the advisory lock; `None` on SQLite, where one controller is
    /// alone on its database file.
    connection: Option<PoolConnection<sqlx::Any>>,
}

impl Leadership {
    /// Whether the lock is still held: on PostgreSQL, whether its connection still answers
    /// (a lost connection loses the lock).
    pub async fn holds(&mut self) -> bool {
        match &mut self.connection {
            None => true,
            Some(connection) => sqlx::query("SELECT 1")
                .execute(&mut **connection)
                .await
                .is_ok(),
        }
    }
}

impl Drop for Leadership {
    /// Gives the lead up: the connection holding the lock is closed rather than returned to
    /// the pool (where it would keep the lock).
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            drop(connection.detach());
        }
    }
}

impl Store {
    /// Becomes the replica that runs the cluster engine, unless another one is.
    pub async fn try_lead(&self) -> Result<Option<Leadership>> {
        if self.backend() == Backend::Sqlite {
            return Ok(Some(Leadership { connection: None }));
        }
        let mut connection = self.pool.acquire().await?;
        let won: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(ENGINE_LOCK)
            .fetch_one(&mut *connection)
            .await?
            .try_get(0)?;
        Ok(won.then_some(Leadership {
            connection: Some(connection),
        }))
    }

    /// Records that `replica` is alive and reached at `peer_url`.
    pub async fn replica_alive(
        &self,
        replica: &str,
        peer_url: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO replicas (id, peer_url, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET peer_url = $2, seen_at = $3",
        )
        .bind(replica)
        .bind(peer_url)
        .bind(to_ms(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets replicas not seen since `before`, and their agents' sessions.
    pub async fn forget_replicas(&self, before: OffsetDateTime) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM agent_sessions WHERE replica_id IN \
             (SELECT id FROM replicas WHERE seen_at < $1)",
        )
        .bind(to_ms(before))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM replicas WHERE seen_at < $1")
            .bind(to_ms(before))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// `replica` holds `node`'s channel from now on.
    pub async fn agent_session_opened(
        &self,
        node: NodeId,
        replica: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO agent_sessions (node_id, replica_id, connected_at) VALUES ($1, $2, $3) \
             ON CONFLICT (node_id) DO UPDATE SET replica_id = $2, connected_at = $3",
        )
        .bind(node.to_string())
        .bind(replica)
        .bind(to_ms(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `replica` no longer holds `node`'s channel (if another replica took it over since,
    /// its session stays).
    pub async fn agent_session_closed(&self, node: NodeId, replica: &str) -> Result<()> {
        sqlx::query("DELETE FROM agent_sessions WHERE node_id = $1 AND replica_id = $2")
            .bind(node.to_string())
            .bind(replica)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Where the other replicas seen since `alive_since` are reached.
    pub async fn live_replicas(
        &self,
        replica: &str,
        alive_since: OffsetDateTime,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT peer_url FROM replicas WHERE id <> $1 AND seen_at >= $2")
            .bind(replica)
            .bind(to_ms(alive_since))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(Into::into))
            .collect()
    }

    /// The agents whose channels other replicas hold, with the URL where each of those replicas
    /// is reached; only replicas seen since `alive_since` count.
    pub async fn remote_sessions(
        &self,
        replica: &str,
        alive_since: OffsetDateTime,
    ) -> Result<HashMap<NodeId, String>> {
        let rows = sqlx::query(
            "SELECT s.node_id, r.peer_url FROM agent_sessions s \
             JOIN replicas r ON r.id = s.replica_id WHERE r.id <> $1 AND r.seen_at >= $2",
        )
        .bind(replica)
        .bind(to_ms(alive_since))
        .fetch_all(&self.pool)
        .await?;
        let mut sessions = HashMap::with_capacity(rows.len());
        for row in rows {
            let node: String = row.try_get(0)?;
            let Ok(node) = node.parse() else { continue };
            sessions.insert(node, row.try_get(1)?);
        }
        Ok(sessions)
    }
}
