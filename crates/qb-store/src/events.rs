//! The append-only audit trail. Events of the store's own changes are written inside the
//! transaction of the change they record; requests passed on elsewhere (writes to a cluster's
//! Kubernetes API through the proxy) with [`Store::record_request`]. Events older than the
//! retention are pruned ([`Store::prune_events`]).

use qb_api::{Event, Page, TenantId};

use crate::{Actor, Result, Store, WriteTx, now_ms, rows};

/// Which events to list.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only events about objects of this kind (`node`, `cluster`, `user`, `token`).
    pub object_kind: Option<String>,
    /// Only events about the object with this id or name.
    pub object: Option<String>,
    /// Only events whose action starts with this (`node.`, `cluster.deleted`).
    pub action_prefix: Option<String>,
    /// Newest first (the cursor then continues to older events); oldest first otherwise.
    pub newest_first: bool,
}

/// What an event says happened to which object.
pub(crate) struct NewEvent<'a> {
    pub action: &'a str,
    pub object_kind: &'a str,
    pub object_id: String,
    pub object_name: &'a str,
    pub detail: serde_json::Value,
}

impl WriteTx {
    pub(crate) async fn event(
        &mut self,
        tenant: TenantId,
        actor: &Actor,
        e: NewEvent<'_>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO events (tenant_id, at, actor, action, object_kind, object_id, object_name, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(tenant.to_string())
        .bind(now_ms())
        .bind(&actor.0)
        .bind(e.action)
        .bind(e.object_kind)
        .bind(e.object_id)
        .bind(e.object_name)
        .bind(e.detail.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records the change's event and commits the two together.
    pub(crate) async fn commit_with_event(
        mut self,
        tenant: TenantId,
        actor: &Actor,
        e: NewEvent<'_>,
    ) -> Result<()> {
        self.event(tenant, actor, e).await?;
        self.commit().await
    }
}

impl Store {
    /// Records a request the controller passed on rather than a change of its own, such as a
    /// write to a cluster's Kubernetes API: `action` on the object, with what it was and how it
    /// ended in `detail`.
    pub async fn record_request(
        &self,
        tenant: TenantId,
        actor: &Actor,
        action: &str,
        (object_kind, object_id, object_name): (&str, String, &str),
        detail: serde_json::Value,
    ) -> Result<()> {
        let w = self.write(tenant).await?;
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action,
                object_kind,
                object_id,
                object_name,
                detail,
            },
        )
        .await
    }

    /// Forgets every tenant's events from before `before`; how many.
    pub async fn prune_events(&self, before: time::OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM events WHERE at < $1")
            .bind(crate::to_ms(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Events of the tenant after the cursor: oldest first, or newest first if the filter
    /// says so.
    pub async fn list_events(
        &self,
        tenant: TenantId,
        filter: &EventFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<Event>> {
        let (beyond, order, start) = if filter.newest_first {
            ("<", "DESC", i64::MAX)
        } else {
            (">", "ASC", 0)
        };
        let rows = sqlx::query(&format!(
            "SELECT * FROM events WHERE tenant_id = $1 AND id {beyond} $2 \
             AND ($3 = '' OR object_kind = $3) \
             AND ($4 = '' OR object_id = $4 OR object_name = $4) \
             AND ($5 = '' OR substr(action, 1, length($5)) = $5) \
             ORDER BY id {order} LIMIT $6",
        ))
        .bind(tenant.to_string())
        .bind(after.unwrap_or(start))
        .bind(filter.object_kind.clone().unwrap_or_default())
        .bind(filter.object.clone().unwrap_or_default())
        .bind(filter.action_prefix.clone().unwrap_or_default())
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(rows::event).collect::<Result<Vec<_>>>()?;
        Ok(crate::page(items, limit, |e| e.id.to_string()))
    }

    /// The id of the tenant's newest event (0 before the first): it grows with every change.
    pub async fn latest_event_id(&self, tenant: TenantId) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM events WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(id.unwrap_or(0))
    }
}
