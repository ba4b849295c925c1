//! Controller replicas sharing one database: which are alive and where the others reach them,
//! which replica holds each agent's channel, which one runs the cluster engine, and the
//! engine's wake-ups from the others (PostgreSQL notifications).
//!
//! A replica reads every session once, then follows their changes as PostgreSQL notifications
//! ([`Store::session_changes`]): never the whole table again while its listening connection
//! lasts.

use std::borrow::Cow;
use std::collections::HashMap;

use qb_api::NodeId;
use sqlx::Row;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use time::OffsetDateTime;

use crate::{Backend, Result, Store, to_ms};

/// The advisory lock the engine's replica holds on PostgreSQL ("qb-engine").
const ENGINE_LOCK: i64 = 0x7162_2d65_6e67;
/// The notification channel of session changes: `opened <node> <replica>` or
/// `closed <node> <replica>`, sent in the transaction that makes the change.
const SESSIONS_CHANNEL: &str = "qb_agent_sessions";
/// The notification channel of the engine's wake-ups: a replica that took a change (through
/// its API, or an agent's report) tells the one running the engine.
const ENGINE_CHANNEL: &str = "qb_engine_wake";

/// A change of which replica holds an agent's channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionChange {
    Opened {
        node: NodeId,
        replica: String,
    },
    /// `replica` no longer holds it (it was still the holder).
    Closed {
        node: NodeId,
        replica: String,
    },
    /// Changes may have been missed: the listening connection was lost and made again. Read
    /// all sessions again.
    Missed,
}

/// The session changes committed since it was made, in commit order.
pub struct SessionChanges {
    listener: PgListener,
}

impl SessionChanges {
    /// The next change; waits for one. After [`SessionChange::Missed`], make a new
    /// `SessionChanges` before reading all sessions again: this one would only listen again
    /// once asked for its next change.
    pub async fn next(&mut self) -> Result<SessionChange> {
        loop {
            let Some(notification) = self.listener.try_recv().await? else {
                return Ok(SessionChange::Missed);
            };
            match parse_change(notification.payload()) {
                Some(change) => return Ok(change),
                None => tracing::warn!(
                    payload = notification.payload(),
                    "ignoring an unreadable session notification"
                ),
            }
        }
    }
}

/// The engine's wake-ups, as other replicas send them ([`Store::wake_engine`]).
pub struct EngineWakes {
    listener: PgListener,
}

impl EngineWakes {
    /// Waits for the next wake-up. It also returns when the listening connection was lost and
    /// made again (a wake-up may have been missed: the engine should look anyway).
    pub async fn next(&mut self) -> Result<()> {
        self.listener.try_recv().await?;
        Ok(())
    }
}

fn parse_change(payload: &str) -> Option<SessionChange> {
    let mut words = payload.split(' ');
    let (kind, node, replica) = (words.next()?, words.next()?, words.next()?);
    let (node, replica) = (node.parse().ok()?, replica.to_owned());
    match kind {
        "opened" => Some(SessionChange::Opened { node, replica }),
        "closed" => Some(SessionChange::Closed { node, replica }),
        _ => None,
    }
}

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

    /// Forgets replicas not seen since `before`, and their agents' sessions (each a notified
    /// close, so that other replicas forget them too).
    pub async fn forget_replicas(&self, before: OffsetDateTime) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let sql = self.session_statement(
            "DELETE FROM agent_sessions WHERE replica_id IN \
             (SELECT id FROM replicas WHERE seen_at < $1)",
            "closed",
        );
        sqlx::query(&sql)
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
        let sql = self.session_statement(
            "INSERT INTO agent_sessions (node_id, replica_id, connected_at) VALUES ($1, $2, $3) \
             ON CONFLICT (node_id) DO UPDATE SET replica_id = $2, connected_at = $3",
            "opened",
        );
        sqlx::query(&sql)
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
        let sql = self.session_statement(
            "DELETE FROM agent_sessions WHERE node_id = $1 AND replica_id = $2",
            "closed",
        );
        sqlx::query(&sql)
            .bind(node.to_string())
            .bind(replica)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `sql`, a statement that changes sessions, and on PostgreSQL also notifies each change
    /// as `kind` (in the same statement: only for rows it changed, and only once it commits).
    fn session_statement(&self, sql: &'static str, kind: &str) -> Cow<'static, str> {
        match self.backend {
            Backend::Sqlite => Cow::Borrowed(sql),
            Backend::Postgres => Cow::Owned(format!(
                "WITH changed AS ({sql} RETURNING node_id, replica_id) \
                 SELECT pg_notify('{SESSIONS_CHANNEL}', '{kind} ' || node_id || ' ' || replica_id) \
                 FROM changed"
            )),
        }
    }

    /// On PostgreSQL, every session change committed from now on; `None` on SQLite, where one
    /// controller is alone on its database file.
    pub async fn session_changes(&self) -> Result<Option<SessionChanges>> {
        let listener = self.listen(SESSIONS_CHANNEL).await?;
        Ok(listener.map(|listener| SessionChanges { listener }))
    }

    /// Tells the replica running the cluster engine that there is work; nothing on SQLite,
    /// where the engine runs in the one controller.
    pub async fn wake_engine(&self) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(ENGINE_CHANNEL)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// On PostgreSQL, the engine's wake-ups sent from now on; `None` on SQLite.
    pub async fn engine_wakes(&self) -> Result<Option<EngineWakes>> {
        let listener = self.listen(ENGINE_CHANNEL).await?;
        Ok(listener.map(|listener| EngineWakes { listener }))
    }

    /// A connection listening on `channel`; `None` on SQLite, which has no notifications.
    async fn listen(&self, channel: &str) -> Result<Option<PgListener>> {
        let Some(url) = &self.postgres_url else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(url).await?;
        listener.listen(channel).await?;
        Ok(Some(listener))
    }

    /// The other replicas seen since `alive_since`: their ids and where they are reached.
    pub async fn live_replicas(
        &self,
        replica: &str,
        alive_since: OffsetDateTime,
    ) -> Result<HashMap<String, String>> {
        let rows =
            sqlx::query("SELECT id, peer_url FROM replicas WHERE id <> $1 AND seen_at >= $2")
                .bind(replica)
                .bind(to_ms(alive_since))
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// The agents whose channels other replicas hold, with the id of each holder (alive or
    /// not: see [`Store::live_replicas`]).
    pub async fn remote_sessions(&self, replica: &str) -> Result<HashMap<NodeId, String>> {
        let rows =
            sqlx::query("SELECT node_id, replica_id FROM agent_sessions WHERE replica_id <> $1")
                .bind(replica)
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
