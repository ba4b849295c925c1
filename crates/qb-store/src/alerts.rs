//! Alerts and silences. The controller says which alerts should be firing for a tenant
//! ([`Store::sync_alerts`]); the store fires the new ones, resolves the ones no longer wanted,
//! records each change in the audit trail, and queues its notifications, in one transaction.

use qb_api::{Alert, AlertRule, AlertSeverity, AlertState, CreateSilence, Silence, TenantId};
use serde_json::json;
use sqlx::Row as _;
use time::OffsetDateTime;

use crate::events::NewEvent;
use crate::{Actor, Result, Store, StoreError, from_ms, to_ms};

/// An alert the controller finds true now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedAlert {
    pub rule: AlertRule,
    pub severity: AlertSeverity,
    pub object_kind: &'static str,
    pub object_id: String,
    pub object_name: String,
    pub summary: String,
}

/// What a sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertChanges {
    pub fired: Vec<Alert>,
    pub resolved: Vec<Alert>,
}

const ALERT_COLUMNS: &str = "id, rule, severity, state, object_kind, object_id, object_name, \
    summary, fired_at, resolved_at, silenced";

/// The alert columns of table alias `table`, each named with `prefix` before its name.
pub(crate) fn prefixed_columns(table: &str, prefix: &str) -> String {
    ALERT_COLUMNS
        .split(", ")
        .map(|c| format!("{table}.{c} AS {prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn alert(row: &sqlx::any::AnyRow) -> Result<Alert> {
    alert_prefixed(row, "")
}

/// An alert from columns named with `prefix` (see [`prefixed_columns`]).
pub(crate) fn alert_prefixed(row: &sqlx::any::AnyRow, prefix: &str) -> Result<Alert> {
    let text = |c: &str| row.try_get::<String, _>(format!("{prefix}{c}").as_str());
    let invalid = |what: &'static str, v: String| StoreError::Corrupt {
        what,
        source: format!("{v:?}").into(),
    };
    let rule = text("rule")?;
    let severity = match text("severity")?.as_str() {
        "warning" => AlertSeverity::Warning,
        "critical" => AlertSeverity::Critical,
        other => return Err(invalid("alert severity", other.to_owned())),
    };
    let state = match text("state")?.as_str() {
        "firing" => AlertState::Firing,
        "resolved" => AlertState::Resolved,
        other => return Err(invalid("alert state", other.to_owned())),
    };
    Ok(Alert {
        id: text("id")?,
        rule: rule
            .parse()
            .map_err(|_| invalid("alert rule", rule.clone()))?,
        severity,
        state,
        object_kind: text("object_kind")?,
        object_id: text("object_id")?,
        object_name: text("object_name")?,
        summary: text("summary")?,
        fired_at: from_ms(row.try_get(format!("{prefix}fired_at").as_str())?),
        resolved_at: row
            .try_get::<Option<i64>, _>(format!("{prefix}resolved_at").as_str())?
            .map(from_ms),
        silenced: row.try_get::<i64, _>(format!("{prefix}silenced").as_str())? != 0,
    })
}

fn silence(row: &sqlx::any::AnyRow) -> Result<Silence> {
    let rule: Option<String> = row.try_get("rule")?;
    Ok(Silence {
        id: row.try_get("id")?,
        rule: rule
            .map(|r| {
                r.parse().map_err(|_| StoreError::Corrupt {
                    what: "silence rule",
                    source: r.clone().into(),
                })
            })
            .transpose()?,
        object_name: row.try_get("object_name")?,
        comment: row.try_get("comment")?,
        created_by: row.try_get("created_by")?,
        created_at: from_ms(row.try_get("created_at")?),
        ends_at: from_ms(row.try_get("ends_at")?),
    })
}

impl Store {
    /// Makes `wanted` the tenant's firing alerts: fires those not firing yet (silenced when an
    /// active silence covers them), resolves the firing ones not wanted any more.
    pub async fn sync_alerts(
        &self,
        tenant: TenantId,
        wanted: &[WantedAlert],
        now: OffsetDateTime,
    ) -> Result<AlertChanges> {
        // As stored: to the millisecond.
        let now = from_ms(to_ms(now));
        let same = |a: &Alert, x: &WantedAlert| a.rule == x.rule && a.object_id == x.object_id;
        // Most syncs change nothing: found out without a write transaction.
        let firing = self
            .list_alerts(tenant, Some(AlertState::Firing), u32::MAX)
            .await?;
        let unchanged = firing.len() == wanted.len()
            && wanted.iter().all(|x| firing.iter().any(|a| same(a, x)));
        if unchanged {
            return Ok(AlertChanges::default());
        }
        let mut w = self.write(tenant).await?;
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE tenant_id = $1 AND state = 'firing'"
        ))
        .bind(tenant.to_string())
        .fetch_all(&mut *w.tx)
        .await?;
        let (kept, over): (Vec<Alert>, Vec<Alert>) = rows
            .iter()
            .map(alert)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .partition(|a| wanted.iter().any(|x| same(a, x)));
        let silences = sqlx::query(
            "SELECT id, rule, object_name, comment, created_by, created_at, ends_at \
             FROM silences WHERE tenant_id = $1 AND ends_at > $2",
        )
        .bind(tenant.to_string())
        .bind(to_ms(now))
        .fetch_all(&mut *w.tx)
        .await?
        .iter()
        .map(silence)
        .collect::<Result<Vec<_>>>()?;
        let mut changes = AlertChanges::default();
        for mut a in over {
            sqlx::query("UPDATE alerts SET state = 'resolved', resolved_at = $1 WHERE id = $2")
                .bind(to_ms(now))
                .bind(&a.id)
                .execute(&mut *w.tx)
                .await?;
            a.state = AlertState::Resolved;
            a.resolved_at = Some(now);
            changes.resolved.push(a);
        }
        for x in wanted.iter().filter(|x| !kept.iter().any(|a| same(a, x))) {
            let a = Alert {
                id: uuid::Uuid::now_v7().to_string(),
                rule: x.rule,
                severity: x.severity,
                state: AlertState::Firing,
                object_kind: x.object_kind.to_owned(),
                object_id: x.object_id.clone(),
                object_name: x.object_name.clone(),
                summary: x.summary.clone(),
                fired_at: now,
                resolved_at: None,
                silenced: silences
                    .iter()
                    .any(|s| s.covers(x.rule, &x.object_name, now)),
            };
            sqlx::query(&format!(
                "INSERT INTO alerts (tenant_id, {ALERT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, 'firing', $5, $6, $7, $8, $9, NULL, $10)"
            ))
            .bind(tenant.to_string())
            .bind(&a.id)
            .bind(a.rule.as_str())
            .bind(a.severity.as_str())
            .bind(&a.object_kind)
            .bind(&a.object_id)
            .bind(&a.object_name)
            .bind(&a.summary)
            .bind(to_ms(now))
            .bind(i64::from(a.silenced))
            .execute(&mut *w.tx)
            .await?;
            changes.fired.push(a);
        }
        for (action, a) in changes
            .fired
            .iter()
            .map(|a| ("alert.fired", a))
            .chain(changes.resolved.iter().map(|a| ("alert.resolved", a)))
        {
            let detail = json!({
                "rule": a.rule.as_str(), "severity": a.severity.as_str(),
                "object_kind": a.object_kind, "summary": a.summary, "silenced": a.silenced,
            });
            w.event(
                tenant,
                &Actor::controller(),
                NewEvent {
                    action,
                    object_kind: "alert",
                    object_id: a.id.clone(),
                    object_name: &a.object_name,
                    detail,
                },
            )
            .await?;
        }
        // Silenced alerts notify no one, neither when they fire nor when they resolve.
        let to_notify: Vec<&Alert> = changes
            .fired
            .iter()
            .chain(&changes.resolved)
            .filter(|a| !a.silenced)
            .collect();
        crate::notifications::queue(&mut w, tenant, &to_notify, now).await?;
        w.commit().await?;
        Ok(changes)
    }

    /// The tenant's alerts, newest first: firing, resolved, or both (`None`).
    pub async fn list_alerts(
        &self,
        tenant: TenantId,
        state: Option<AlertState>,
        limit: u32,
    ) -> Result<Vec<Alert>> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE tenant_id = $1 AND ($2 = '' OR state = $2) \
             ORDER BY fired_at DESC, id DESC LIMIT $3"
        ))
        .bind(tenant.to_string())
        .bind(state.map_or("", AlertState::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert).collect()
    }

    /// Tenants that have nodes or clusters: the ones whose alerts are worth a look.
    pub async fn tenants_with_objects(&self) -> Result<Vec<TenantId>> {
        let rows = sqlx::query(
            "SELECT id FROM tenants WHERE id IN (SELECT tenant_id FROM nodes) \
             OR id IN (SELECT tenant_id FROM clusters) OR id IN \
             (SELECT tenant_id FROM alerts WHERE state = 'firing')",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| crate::parse_id("tenant", &r.try_get::<String, _>("id")?))
            .collect()
    }

    pub async fn create_silence(
        &self,
        tenant: TenantId,
        new: &CreateSilence,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Silence> {
        new.validate()?;
        let now = from_ms(to_ms(now));
        let s = Silence {
            id: uuid::Uuid::now_v7().to_string(),
            rule: new.rule,
            object_name: new.object_name.clone(),
            comment: new.comment.trim().to_owned(),
            created_by: actor.0.clone(),
            created_at: now,
            ends_at: now + time::Duration::minutes(i64::from(new.duration_minutes)),
        };
        let mut w = self.write(tenant).await?;
        sqlx::query(
            "INSERT INTO silences (id, tenant_id, rule, object_name, comment, created_by, \
             created_at, ends_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&s.id)
        .bind(tenant.to_string())
        .bind(s.rule.map(AlertRule::as_str))
        .bind(s.object_name.as_deref())
        .bind(&s.comment)
        .bind(&s.created_by)
        .bind(to_ms(s.created_at))
        .bind(to_ms(s.ends_at))
        .execute(&mut *w.tx)
        .await?;
        let detail = json!({
            "rule": s.rule.map(AlertRule::as_str), "object_name": s.object_name,
            "comment": s.comment, "ends_at": to_ms(s.ends_at),
        });
        let name = s.object_name.clone().unwrap_or_default();
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "silence.created",
                object_kind: "silence",
                object_id: s.id.clone(),
                object_name: &name,
                detail,
            },
        )
        .await?;
        Ok(s)
    }

    /// The tenant's silences that have not ended.
    pub async fn list_silences(
        &self,
        tenant: TenantId,
        now: OffsetDateTime,
    ) -> Result<Vec<Silence>> {
        sqlx::query(
            "SELECT id, rule, object_name, comment, created_by, created_at, ends_at \
             FROM silences WHERE tenant_id = $1 AND ends_at > $2 ORDER BY ends_at, id",
        )
        .bind(tenant.to_string())
        .bind(to_ms(now))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(silence)
        .collect()
    }

    /// Ends a silence now.
    pub async fn delete_silence(&self, tenant: TenantId, id: &str, actor: &Actor) -> Result<()> {
        let mut w = self.write(tenant).await?;
        let deleted = sqlx::query("DELETE FROM silences WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.to_string())
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "silence",
                key: id.to_owned(),
            });
        }
        w.commit_with_event(
            tenant,
            actor,
            NewEvent {
                action: "silence.deleted",
                object_kind: "silence",
                object_id: id.to_owned(),
                object_name: "",
                detail: json!({}),
            },
        )
        .await
    }
}
