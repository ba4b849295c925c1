//! Notification channels and deliveries. A delivery is written in the transaction that fires
//! or resolves its alert ([`Store::sync_alerts`]), one per channel that wants it, and the
//! controller sends it later ([`Store::due_deliveries`], [`Store::finish_deliveries`]): an
//! outbox, so a crash can neither lose a change of state nor send it twice as two changes.

use qb_api::{
    Alert, AlertState, Channel, ChannelKind, CreateChannel, Delivery, DeliveryStatus, Name,
    TenantId,
};
use serde_json::json;
use sqlx::Row as _;
use time::OffsetDateTime;

use crate::events::NewEvent;
use crate::{Actor, Result, Store, StoreError, WriteTx, from_ms, is_unique_violation, to_ms};

/// A channel with what sending needs: its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelTarget {
    pub channel: Channel,
    pub secret: Option<String>,
}

impl std::fmt::Debug for ChannelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelTarget")
            .field("channel", &self.channel)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A delivery due now, with its channel and its alert as it was at that change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueDelivery {
    pub id: String,
    pub tenant: TenantId,
    pub attempts: u32,
    pub channel: ChannelTarget,
    pub alert: Alert,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Refused or unreachable: try again at `next`.
    Retry {
        error: String,
        next: OffsetDateTime,
    },
    /// Given up on.
    Failed {
        error: String,
    },
}

const CHANNEL_COLUMNS: &str =
    "c.id, c.name, c.kind, c.target, c.secret, c.min_severity, c.created_by, c.created_at";

fn channel(row: &sqlx::any::AnyRow) -> Result<Channel> {
    let text = |c: &str| row.try_get::<String, _>(c);
    let corrupt = |what: &'static str, v: String| StoreError::Corrupt {
        what,
        source: v.into(),
    };
    let name = text("name")?;
    let kind = match text("kind")?.as_str() {
        "webhook" => ChannelKind::Webhook,
        "email" => ChannelKind::Email,
        other => return Err(corrupt("channel kind", other.to_owned())),
    };
    let severity = text("min_severity")?;
    Ok(Channel {
        id: text("id")?,
        name: name.parse().map_err(|_| corrupt("channel name", name))?,
        kind,
        target: text("target")?,
        min_severity: severity
            .parse()
            .map_err(|_| corrupt("channel severity", severity))?,
        created_by: text("created_by")?,
        created_at: from_ms(row.try_get("created_at")?),
    })
}

impl Store {
    /// A channel with its secret, opened.
    fn channel_target_row(&self, row: &sqlx::any::AnyRow) -> Result<ChannelTarget> {
        let channel = channel(row)?;
        let secret = row
            .try_get::<Option<String>, _>("secret")?
            .map(|s| {
                let place = ("notification_channels", "secret", channel.id.as_str());
                self.unseal("channel secret", place, &s)
            })
            .transpose()?;
        Ok(ChannelTarget { channel, secret })
    }
}

fn status(text: &str) -> Result<DeliveryStatus> {
    Ok(match text {
        "pending" => DeliveryStatus::Pending,
        "delivered" => DeliveryStatus::Delivered,
        "failed" => DeliveryStatus::Failed,
        other => {
            return Err(StoreError::Corrupt {
                what: "delivery status",
                source: other.to_owned().into(),
            });
        }
    })
}

fn transition(text: &str) -> Result<AlertState> {
    match text {
        "firing" => Ok(AlertState::Firing),
        "resolved" => Ok(AlertState::Resolved),
        other => Err(StoreError::Corrupt {
            what: "delivery transition",
            source: other.to_owned().into(),
        }),
    }
}

impl Store {
    pub async fn create_channel(
        &self,
        tenant: TenantId,
        new: &CreateChannel,
        secret: Option<String>,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Channel> {
        new.validate()?;
        let channel = Channel {
            id: uuid::Uuid::now_v7().to_string(),
            name: new.name.clone(),
            kind: new.kind,
            target: new.target.trim().to_owned(),
            min_severity: new.min_severity.unwrap_or(qb_api::AlertSeverity::Warning),
            created_by: actor.0.clone(),
            created_at: from_ms(to_ms(now)),
        };
        let mut w = self.write(tenant).await?;
        let inserted = sqlx::query(
            "INSERT INTO notification_channels (id, tenant_id, name, kind, target, secret, \
             min_severity, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&channel.id)
        .bind(tenant.to_string())
        .bind(channel.name.as_str())
        .bind(channel.kind.as_str())
        .bind(&channel.target)
        .bind(secret.map(|s| self.seal("notification_channels", "secret", &channel.id, &s)))
        .bind(channel.min_severity.as_str())
        .bind(&channel.created_by)
        .bind(to_ms(channel.created_at))
        .execute(&mut *w.tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::NameTaken {
                    kind: "notification channel",
                    name: channel.name.to_string(),
                });
            }
            other => {
                other?;
            }
        }
        // The target is the tenant's own business, but a webhook URL may carry a token.
        let detail =
            json!({"kind": channel.kind.as_str(), "min_severity": channel.min_severity.as_str()});
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "channel.created",
                object_kind: "channel",
                object_id: channel.id.clone(),
                object_name: channel.name.as_str(),
                detail,
            },
        )
        .await?;
        Ok(channel)
    }

    pub async fn list_channels(&self, tenant: TenantId) -> Result<Vec<Channel>> {
        sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM notification_channels c WHERE c.tenant_id = $1 \
             ORDER BY c.name"
        ))
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(channel)
        .collect()
    }

    /// One of the tenant's channels with its secret, by name.
    pub async fn channel_target(
        &self,
        tenant: TenantId,
        name: &Name,
    ) -> Result<Option<ChannelTarget>> {
        sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM notification_channels c \
             WHERE c.tenant_id = $1 AND c.name = $2"
        ))
        .bind(tenant.to_string())
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(|row| self.channel_target_row(row))
        .transpose()
    }

    /// Removes a channel and its delivery log; what it had not sent yet is never sent.
    pub async fn delete_channel(&self, tenant: TenantId, name: &Name, actor: &Actor) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM notification_channels WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant.to_string())
        .bind(name.as_str())
        .fetch_optional(&mut *w.tx)
        .await?;
        let Some(id) = id else {
            return Err(StoreError::NotFound {
                kind: "notification channel",
                key: name.to_string(),
            });
        };
        sqlx::query("DELETE FROM notification_deliveries WHERE channel_id = $1")
            .bind(&id)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("DELETE FROM notification_channels WHERE id = $1")
            .bind(&id)
            .execute(&mut *w.tx)
            .await?;
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "channel.deleted",
                object_kind: "channel",
                object_id: id,
                object_name: name.as_str(),
                detail: json!({}),
            },
        )
        .await
    }

    /// The tenant's deliveries, newest first, of one channel or all.
    pub async fn list_deliveries(
        &self,
        tenant: TenantId,
        channel: Option<&Name>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT d.id, c.name, d.alert_id, d.transition, a.summary, d.status, d.attempts, \
             d.last_error, d.created_at, d.next_attempt_at, d.delivered_at \
             FROM notification_deliveries d \
             JOIN notification_channels c ON c.id = d.channel_id \
             JOIN alerts a ON a.id = d.alert_id \
             WHERE d.tenant_id = $1 AND ($2 = '' OR c.name = $2) \
             ORDER BY d.created_at DESC, d.id DESC LIMIT $3",
        )
        .bind(tenant.to_string())
        .bind(channel.map_or("", Name::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                Ok(Delivery {
                    id: row.try_get("id")?,
                    channel: name.parse().map_err(|_| StoreError::Corrupt {
                        what: "channel name",
                        source: name.into(),
                    })?,
                    alert_id: row.try_get("alert_id")?,
                    transition: transition(&row.try_get::<String, _>("transition")?)?,
                    summary: row.try_get("summary")?,
                    status: status(&row.try_get::<String, _>("status")?)?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    last_error: row.try_get("last_error")?,
                    created_at: from_ms(row.try_get("created_at")?),
                    next_attempt_at: row
                        .try_get::<Option<i64>, _>("next_attempt_at")?
                        .map(from_ms),
                    delivered_at: row.try_get::<Option<i64>, _>("delivered_at")?.map(from_ms),
                })
            })
            .collect()
    }

    /// Every tenant's deliveries due by `now`, oldest first, at most `limit`: what the
    /// controller sends next. Each carries its alert as it was at its change.
    pub async fn due_deliveries(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDelivery>> {
        let rows = sqlx::query(&format!(
            "SELECT d.id AS delivery_id, d.tenant_id, d.attempts, d.transition, {CHANNEL_COLUMNS}, \
             {alert} FROM notification_deliveries d \
             JOIN notification_channels c ON c.id = d.channel_id AND c.tenant_id = d.tenant_id \
             JOIN alerts a ON a.id = d.alert_id AND a.tenant_id = d.tenant_id \
             WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
             ORDER BY d.next_attempt_at, d.id LIMIT $2",
            alert = crate::alerts::prefixed_columns("a", "alert_"),
        ))
        .bind(to_ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let mut alert = crate::alerts::alert_prefixed(row, "alert_")?;
                // As it was at this change: a delivery of the firing says firing, even when the
                // alert has resolved since.
                alert.state = transition(&row.try_get::<String, _>("transition")?)?;
                if alert.state == AlertState::Firing {
                    alert.resolved_at = None;
                }
                Ok(DueDelivery {
                    id: row.try_get("delivery_id")?,
                    tenant: crate::parse_id("tenant", &row.try_get::<String, _>("tenant_id")?)?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    channel: self.channel_target_row(row)?,
                    alert,
                })
            })
            .collect()
    }

    /// Records how the attempt at the deliveries `ids` ended.
    pub async fn finish_deliveries(
        &self,
        ids: &[String],
        outcome: &DeliveryOutcome,
        now: OffsetDateTime,
    ) -> Result<()> {
        let (status, error, next, delivered) = match outcome {
            DeliveryOutcome::Delivered => ("delivered", None, None, Some(to_ms(now))),
            DeliveryOutcome::Retry { error, next } => {
                ("pending", Some(error.as_str()), Some(to_ms(*next)), None)
            }
            DeliveryOutcome::Failed { error } => ("failed", Some(error.as_str()), None, None),
        };
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE notification_deliveries SET status = $1, last_error = COALESCE($2, last_error), \
                 next_attempt_at = $3, delivered_at = $4, attempts = attempts + 1 \
                 WHERE id = $5 AND status = 'pending'",
            )
            .bind(status)
            .bind(error)
            .bind(next)
            .bind(delivered)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets deliveries made before `before` that are over (delivered or failed).
    pub async fn prune_deliveries(&self, before: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM notification_deliveries WHERE status <> 'pending' AND created_at < $1",
        )
        .bind(to_ms(before))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Queues, in the transaction `w` of an alert sync, one delivery of each of `changed` (alerts
/// that fired or resolved, not silenced) to every channel of the tenant that wants its
/// severity.
pub(crate) async fn queue(
    w: &mut WriteTx,
    tenant: TenantId,
    changed: &[&Alert],
    now: OffsetDateTime,
) -> Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let channels = sqlx::query(&format!(
        "SELECT {CHANNEL_COLUMNS} FROM notification_channels c WHERE c.tenant_id = $1"
    ))
    .bind(tenant.to_string())
    .fetch_all(&mut *w.tx)
    .await?
    .iter()
    .map(channel)
    .collect::<Result<Vec<_>>>()?;
    for a in changed {
        for c in channels.iter().filter(|c| a.severity >= c.min_severity) {
            sqlx::query(
                "INSERT INTO notification_deliveries (id, tenant_id, channel_id, alert_id, \
                 transition, status, attempts, created_at, next_attempt_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(tenant.to_string())
            .bind(&c.id)
            .bind(&a.id)
            .bind(a.state.as_str())
            .bind(to_ms(now))
            .execute(&mut *w.tx)
            .await?;
        }
    }
    Ok(())
}
